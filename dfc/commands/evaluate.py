"""`dfc evaluate DIR`: compression and quality over a folder of videos, per clip, with figures.

Writes into `--out` (created whole at the end, so a failure leaves nothing): `evaluation.csv`,
`evaluation.json`, `evaluation.md`, `gifs/compare_<clip>.gif` (Original | Top-16 | Top-8 | Top-4 | Top-1)
and `timelines/keep_<clip>.png` (keep probability, Bernoulli keep share, top-K choices per frame).
With `--rd`, also `rd/`: rate-distortion points of the `.dfc` and of x264/x265 on the same frames
(`rd.csv`, `rd.json`, `rd.md`, `curves/rd_<clip>.png`, `curves/rd_mean.png`; dfc/rd.py, dfc/rd_report.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.atomic import atomic_output
from dfc.errors import UserError
from dfc.models import add_model_arguments, load_model

DEFAULT_OUT = "evaluation"


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="folder of videos (.mp4 .mov .mkv .webm .avi .gif)")
    add_model_arguments(parser)
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"output folder, new or empty (default: ./{DEFAULT_OUT})"
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
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise UserError(f"--baseline takes {', '.join(BASELINES)} or none, got {text!r}")
    return names


def _check_arguments(args: argparse.Namespace) -> tuple[list[Path], tuple[int, ...]]:
    from dfc.evaluation import VIDEO_SUFFIXES, find_videos

    folder = Path(args.folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder")
    videos = find_videos(folder)
    if not videos:
        raise UserError(f"{folder}: no videos in this folder ({' '.join(VIDEO_SUFFIXES)})")
    for name in ("clip_frames", "draws", "batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames must be at least 1, got {args.max_frames}")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder; choose a new --out")
    if not out.absolute().parent.is_dir():
        raise UserError(f"{out}: the folder {out.absolute().parent} does not exist")
    args.baselines = _baselines(args.baseline) if args.rd else ()
    args.crfs = _whole_numbers(args.crf, "--crf", 0, 51) if args.rd else ()
    return videos, _topk(args.topk)


def run(args: argparse.Namespace) -> int:
    videos, topk = _check_arguments(args)
    from dfc.video import fit_to_model, read_video, split_clips

    # Every video is read (and fitted) before the model loads: a bad file fails in seconds.
    inputs = []
    for path in videos:
        frames, info = read_video(path, max_frames=args.max_frames)
        inputs.append((path, frames, info))
    loaded = load_model("vae", args.weights, args.device, args.precision)
    vae = loaded.model
    cfg = vae.config
    args.clip_frames = args.clip_frames or min(32, cfg.max_temporal_len)
    work = [
        (path, start, stop, info)
        for path, frames, info in inputs
        for start, stop in split_clips(len(frames), args.clip_frames, cfg.max_temporal_len)
    ]

    from tqdm.auto import tqdm

    from dfc.evaluation import bernoulli_draws, evaluate_clip

    out = Path(args.out)
    with atomic_output(out.absolute(), is_dir=True) as staging:  # replaces an empty `out`
        results, rd_points = [], []
        fitted_cache: dict[Path, object] = {}
        for key, (path, start, stop, info) in enumerate(
            tqdm(work, desc="evaluating", unit="clip", disable=args.quiet)
        ):
            if path not in fitted_cache:
                fitted_cache.clear()  # one video's fitted frames at a time
                frames = next(f for p, f, _ in inputs if p == path)
                fitted_cache[path] = fit_to_model(frames, cfg.height, cfg.width, args.resize)
            fitted, crop = fitted_cache[path]
            clip_index = sum(1 for p, s, _, _ in work[:key] if p == path)
            noise = bernoulli_draws(args.seed, key, args.draws, stop - start)
            result, pictures = evaluate_clip(
                vae, fitted[start:stop], video=path.name, clip=clip_index, start=start, noise=noise,
                topk=topk, latent_dtype=args.latent_dtype, batch_size=args.batch,
            )  # fmt: skip
            results.append(result)
            if args.rd:
                clip_frames = fitted[start:stop]
                rd_points += _rd_points(vae, clip_frames, crop, info.fps, result.label, loaded, args, topk)
            if not args.no_figures:
                _figures(staging, result, pictures, args.gif_fps)
        _tables(staging, results, args, loaded, topk)
        rd_lines = _rd_files(staging / "rd", rd_points, args, loaded, topk, cfg) if args.rd else []

    from dfc.evaluation import markdown_table

    print(markdown_table(results))
    for line in rd_lines:
        print(line)
    print(
        f"wrote    {out}/evaluation.csv, evaluation.json, evaluation.md"
        + ("" if args.no_figures else ", gifs/, timelines/")
        + (", rd/" if args.rd else "")
    )
    return 0


def _figures(folder: Path, result, pictures, fps: float) -> None:
    from dfc.figures import keep_timeline, side_by_side
    from dfc.video import write_video

    (folder / "gifs").mkdir(exist_ok=True)
    (folder / "timelines").mkdir(exist_ok=True)
    labels = ["Original", *pictures.topk]
    comparison = side_by_side([pictures.original, *pictures.topk.values()], labels)
    write_video(folder / "gifs" / f"compare_{result.label}.gif", comparison, fps)
    keep_timeline(
        folder / "timelines" / f"keep_{result.label}.png",
        f"{result.video} clip {result.clip} (frames {result.start}-{result.start + result.frames - 1})",
        result.keep_probability,
        pictures.bernoulli_keeps,
        pictures.topk_keeps,
    )


def _tables(folder: Path, results, args, loaded, topk) -> None:
    from dfc.evaluation import markdown_table, to_csv, to_json

    settings = {
        "folder": str(args.folder),
        "weights": loaded.source,
        "weights_identity": loaded.identity,
        "precision": args.precision,
        "clip_frames": args.clip_frames,
        "max_frames": args.max_frames,
        "draws": args.draws,
        "topk": list(topk),
        "seed": args.seed,
        "latent_dtype": args.latent_dtype,
        "resize": args.resize,
    }
    (folder / "evaluation.csv").write_text(to_csv(results), encoding="utf-8")
    (folder / "evaluation.json").write_text(to_json(results, settings), encoding="utf-8")
    (folder / "evaluation.md").write_text(markdown_table(results) + "\n", encoding="utf-8")


def _rd_points(vae, fitted, crop, fps, label, loaded, args, topk) -> list:
    from dfc.rd import baseline_points, dfc_points
    from dfc.video import to_uint8

    frames = to_uint8(fitted)
    points = dfc_points(
        vae, frames, label=label, crop=crop, fps=fps, weights_id=loaded.identity, topk=topk,
        batch_size=args.batch,
    )  # fmt: skip
    for codec in args.baselines:
        points += baseline_points(frames, label=label, fps=fps, codec=codec, crfs=args.crfs)
    return points


def _rd_files(folder: Path, points, args, loaded, topk, cfg) -> list[str]:
    """rd.csv/json/md and the curves; returns the lines to print."""
    from dfc import rd_report
    from dfc.container import LATENT_DTYPES
    from dfc.entropy import CODINGS
    from dfc.metrics import ms_ssim_note
    from dfc.rd import BASELINE_ARGS, ffmpeg_facts, missing_baselines

    exe, version, _ = ffmpeg_facts()
    missing = missing_baselines(args.baselines)
    settings = {
        "ffmpeg": version,
        "ffmpeg_path": exe,
        "baselines": {name: BASELINE_ARGS[name] for name in args.baselines if name not in missing},
        "missing": {name: f"n/a: this ffmpeg has no lib{name}" for name in missing},
        "crfs": list(args.crfs),
        "topk": list(topk),
        "dtypes": list(LATENT_DTYPES),
        "codings": list(CODINGS),
        "weights_identity": loaded.identity,
        "model_size": f"{cfg.width}x{cfg.height}",
        "ms_ssim_note": ms_ssim_note(cfg.height, cfg.width),
    }
    means = rd_report.mean_points(points)
    labels = list(dict.fromkeys(p.clip for p in points))
    per_clip = {label: [p for p in points if p.clip == label] for label in labels}
    bd = {label: rd_report.bd_rates(members, args.baselines) for label, members in per_clip.items()}
    bd["mean"] = rd_report.bd_rates(means, args.baselines)
    gain = rd_report.coding_gain(points)
    everything = points + means
    (folder / "curves").mkdir(parents=True)
    (folder / "rd.csv").write_text(rd_report.to_csv(everything), encoding="utf-8")
    (folder / "rd.json").write_text(rd_report.to_json(everything, bd, gain, settings), encoding="utf-8")
    (folder / "rd.md").write_text(rd_report.markdown(everything, bd, gain, settings), encoding="utf-8")
    if not args.no_figures:
        for label, members in per_clip.items():
            rd_report.curves_png(folder / "curves" / f"rd_{label}.png", label, members)
        rd_report.curves_png(folder / "curves" / "rd_mean.png", f"mean of {len(labels)} clip(s)", means)
    return rd_report.summary_lines(bd["mean"], gain)
