"""`dfc evaluate VIDEOS`: compression and quality over many videos, per clip, with figures.

VIDEOS is a folder of videos, a glob, a manifest or one video. Writes into `--out`, one video at a time
(resumable: the folder's ledger records what is finished): `videos/<name>.json` (that video's rows),
`gifs/compare_<clip>.gif` (Original | Top-16 | Top-8 | Top-4 | Top-1), `timelines/keep_<clip>.png`
(keep probability, Bernoulli keep share, top-K choices per frame), and at the end `evaluation.csv`,
`evaluation.json` and `evaluation.md` over every finished video. With `--rd`, also `rd/points/<name>.json`
per video and at the end `rd/`: rate-distortion of the `.dfc` and of x264/x265 on the same frames
(`rd.csv`, `rd.json`, `rd.md`, `curves/rd_<clip>.png`, `curves/rd_mean.png`; dfc/rd.py, dfc/rd_report.py).
"""

from __future__ import annotations

import argparse
import json
import zlib
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

from dfc.batch.engine import add_batch_arguments
from dfc.errors import UserError
from dfc.models import add_model_arguments, load_model

DEFAULT_OUT = "evaluation"


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder",
        metavar="VIDEOS",
        help="a folder of videos (.mp4 .mov .mkv .webm .avi .gif), a quoted glob ('data/**/*.mp4'), a "
        'manifest (.txt: a path per line; .jsonl: {"path": ...} per line) or one video',
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"output folder: new, empty, or one with a ledger to resume (default: ./{DEFAULT_OUT})",
    )
    parser.add_argument(
        "--clip-frames", type=int, metavar="N", help="frames per clip (default: 32, or the model's limit)"
    )
    parser.add_argument(
        "--max-frames", type=int, metavar="N", help="evaluate only the first N frames of a video"
    )
    parser.add_argument("--draws", type=int, default=16, help="Bernoulli draws per clip (default: 16)")
    parser.add_argument(
        "--topk",
        default="16,8,4,1",
        help="top-K budgets of the comparison GIFs, comma-separated (default: 16,8,4,1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the Bernoulli draws (default: 0)")
    parser.add_argument(
        "--latent-dtype",
        choices=("bf16", "u8", "f32"),
        default="bf16",
        help="storage the MSE reflects (default: bf16)",
    )
    parser.add_argument("--resize", choices=("crop", "stretch"), default="crop", help="default: crop")
    parser.add_argument(
        "--no-figures", action="store_true", help="only the tables: no GIFs or timeline plots"
    )
    parser.add_argument(
        "--gif-fps", type=float, default=8.0, help="frame rate of the comparison GIFs (default: 8)"
    )
    parser.add_argument("--batch", type=int, default=4, metavar="B", help="decodes run together (default: 4)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into an --out that holds other things, or start again in one whose ledger has other "
        "settings",
    )
    add_batch_arguments(parser)
    rd = parser.add_argument_group("rate and distortion (--rd)")
    rd.add_argument(
        "--rd",
        action="store_true",
        help="also measure bits per pixel against PSNR/SSIM/MS-SSIM for the .dfc file (each --topk budget x "
        "latent dtype x coding) and for --baseline codecs on the same frames, with BD-rates, into OUT/rd/",
    )
    rd.add_argument(
        "--baseline",
        default="x264,x265",
        help="codecs to compare with, comma-separated from x264, x265, or 'none' (default: x264,x265)",
    )
    rd.add_argument(
        "--crf", default="18,24,30,36,42,51", help="CRF sweep of the baselines (default: 18,24,30,36,42,51)"
    )


def _topk(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--topk must be comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"--topk budgets must be at least 1, got {text!r}")
    return values


def _whole_numbers(text: str, option: str, low: int, high: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{option} must be comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < low or max(values) > high:
        raise UserError(f"{option} values must be between {low} and {high}, got {text!r}")
    return values


def _baselines(text: str) -> tuple[str, ...]:
    from dfc.rd import BASELINES

    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if names == ("none",):
        return ()
    if not names or any(n not in BASELINES for n in names):
        raise UserError(f"--baseline takes {', '.join(BASELINES)} or none, got {text!r}")
    return names


def _check_arguments(args: argparse.Namespace) -> tuple[int, ...]:
    from dfc.options import check_seed

    check_seed(args.seed)
    for name in ("clip_frames", "draws", "batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames must be at least 1, got {args.max_frames}")
    args.baselines = _baselines(args.baseline) if args.rd else ()
    args.crfs = _whole_numbers(args.crf, "--crf", 0, 51) if args.rd else ()
    return _topk(args.topk)


def run(args: argparse.Namespace) -> int:
    from dfc.batch.engine import run_batch
    from dfc.batch.inputs import resolve

    _check_arguments(args)
    return run_batch(JOB, args, resolve(args.folder))


class _EvaluateJob:
    """One video of `dfc evaluate`: its rows in `videos/<name>.json`, and its figures."""

    command = "evaluate"
    _SETTINGS = ("precision", "clip_frames", "max_frames", "draws", "topk", "seed", "latent_dtype", "resize")

    def out(self, args) -> Path:
        return Path(args.out)

    def settings(self, args) -> dict:
        settings = {name: getattr(args, name) for name in self._SETTINGS}
        settings["topk"] = list(_topk(args.topk))
        settings["figures"] = not args.no_figures
        settings["rd"] = {"baselines": list(args.baselines), "crfs": list(args.crfs)} if args.rd else None
        weights = args.weights
        settings["weights"] = str(Path(weights).absolute()) if weights and Path(weights).exists() else weights
        return json.loads(json.dumps(settings))

    def setup(self, args, device: str, threads: int | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        loaded = load_model("vae", args.weights, device, args.precision)
        limit = loaded.model.config.max_temporal_len
        clip_frames = args.clip_frames or min(32, limit)
        from dfc.video import check_clip_frames

        check_clip_frames(clip_frames, limit)
        return SimpleNamespace(args=args, loaded=loaded, clip_frames=clip_frames, topk=_topk(args.topk))

    def run(self, state, task, staging: Path, on_frames) -> dict:
        """Clip by clip: one clip's frames in memory at a time."""
        from dfc.evaluation import bernoulli_draws, evaluate_clip
        from dfc.video import fit_clips, open_video

        args, vae = state.args, state.loaded.model
        cfg = vae.config
        info, stream = open_video(task.input, max_frames=args.max_frames)
        crop, clips = fit_clips(
            stream, info, state.clip_frames, cfg.height, cfg.width, args.resize,
            max_len=cfg.max_temporal_len, source=task.input,
        )  # fmt: skip
        video = task.name + Path(task.input).suffix
        key = zlib.crc32(task.name.encode())
        results, outputs, frames_done, rd_points = [], [], 0, []
        for index, (start, frames) in enumerate(clips):
            noise = bernoulli_draws(args.seed, (key, index), args.draws, len(frames))
            result, pictures = evaluate_clip(
                vae, frames, video=video, clip=index, start=start, noise=noise, topk=state.topk,
                latent_dtype=args.latent_dtype, batch_size=args.batch,
            )  # fmt: skip
            results.append(result)
            if args.rd:
                rd_points += _rd_points(state, frames, crop, info.fps, result.label)
            if not args.no_figures:
                outputs += _figures(staging, result, pictures, args.gif_fps)
            frames_done += len(frames)
            on_frames(len(frames))
        rows = f"videos/{task.name}.json"
        (staging / rows).parent.mkdir(parents=True, exist_ok=True)
        (staging / rows).write_text(
            json.dumps([asdict(r) for r in results], allow_nan=True), encoding="utf-8"
        )
        if args.rd:
            outputs.append(f"rd/points/{task.name}.json")
            (staging / outputs[-1]).parent.mkdir(parents=True, exist_ok=True)
            (staging / outputs[-1]).write_text(
                json.dumps([asdict(p) for p in rd_points], allow_nan=True), encoding="utf-8"
            )
        return {
            "outputs": [rows, *outputs],
            "frames": frames_done,
            "clips": len(results),
            "weights": state.loaded.identity,
            "clip_frames": state.clip_frames,
            "model_size": [cfg.height, cfg.width],
            **({"warning": stream.warning} if stream.warning else {}),
        }

    def finish(self, out: Path, tasks, ledger, args) -> None:
        """The tables over every finished video, in input order; printed as before."""
        from dfc.evaluation import ClipEvaluation, markdown_table

        latest = ledger.latest()
        done = [t for t in tasks if latest.get(t.input, {}).get("status") == "done"]
        results, rd_points = [], []
        for task in done:
            rows = out / "videos" / f"{task.name}.json"
            if not rows.is_file():  # removed by hand since: the ledger still counts it, the tables cannot
                print(f"missing  {rows}: {task.name} is left out of the tables")
                continue
            results += [ClipEvaluation(**row) for row in json.loads(rows.read_text(encoding="utf-8"))]
            points = out / "rd" / "points" / f"{task.name}.json"
            if args.rd and points.is_file():
                rd_points += json.loads(points.read_text(encoding="utf-8"))
        if not results:
            return
        record = latest[done[0].input]
        _tables(out, results, args, record, _topk(args.topk))
        print(markdown_table(results))
        if args.rd and rd_points:
            for line in _rd_files(out / "rd", rd_points, args, record):
                print(line)
        print(
            f"wrote    {out}/evaluation.csv, evaluation.json, evaluation.md"
            + ("" if args.no_figures else ", gifs/, timelines/")
            + (", rd/" if args.rd else "")
        )


JOB = _EvaluateJob()


def _figures(folder: Path, result, pictures, fps: float) -> list[str]:
    from dfc.figures import keep_timeline, side_by_side
    from dfc.video import write_video

    (folder / "gifs").mkdir(exist_ok=True)
    (folder / "timelines").mkdir(exist_ok=True)
    labels = ["Original", *pictures.topk]
    comparison = side_by_side([pictures.original, *pictures.topk.values()], labels)
    gif, timeline = f"gifs/compare_{result.label}.gif", f"timelines/keep_{result.label}.png"
    write_video(folder / gif, comparison, fps)
    keep_timeline(
        folder / timeline,
        f"{result.video} clip {result.clip} (frames {result.start}-{result.start + result.frames - 1})",
        result.keep_probability,
        pictures.bernoulli_keeps,
        pictures.topk_keeps,
    )
    return [gif, timeline]


def _tables(folder: Path, results, args, record, topk) -> None:
    from common.atomic import atomic_output
    from dfc.evaluation import markdown_table, to_csv, to_json

    settings = {
        "folder": str(args.folder),
        "weights": args.weights,
        "weights_identity": record.get("weights"),
        "precision": args.precision,
        "clip_frames": record.get("clip_frames"),
        "max_frames": args.max_frames,
        "draws": args.draws,
        "topk": list(topk),
        "seed": args.seed,
        "latent_dtype": args.latent_dtype,
        "resize": args.resize,
    }
    tables = {
        "evaluation.csv": to_csv(results),
        "evaluation.json": to_json(results, settings),
        "evaluation.md": markdown_table(results) + "\n",
    }
    for name, text in tables.items():
        with atomic_output(folder / name) as tmp:
            tmp.write_text(text, encoding="utf-8")


def _rd_points(state, frames, crop, fps: float, label: str) -> list:
    """Rate-distortion points of one clip (model-size float frames): the .dfc settings and the baselines."""
    from dfc.rd import baseline_points, dfc_points
    from dfc.video import to_uint8

    args = state.args
    frames = to_uint8(frames)
    points = dfc_points(
        state.loaded.model, frames, label=label, crop=crop, fps=fps, weights_id=state.loaded.identity,
        topk=state.topk, batch_size=args.batch,
    )  # fmt: skip
    for codec in args.baselines:
        points += baseline_points(frames, label=label, fps=fps, codec=codec, crfs=args.crfs)
    return points


def _rd_files(folder: Path, rows: list[dict], args, record: dict) -> list[str]:
    """`rd/`'s tables, summary and curves over every finished video; returns the lines to print."""
    from dfc.rd import RDPoint
    from dfc.rd_report import write_outputs

    return write_outputs(
        folder, [RDPoint(**row) for row in rows], baselines=args.baselines, crfs=args.crfs,
        topk=_topk(args.topk), weights_identity=record.get("weights"), model_size=record.get("model_size"),
        figures=not args.no_figures,
    )  # fmt: skip
