"""`dfc compress INPUT OUTPUT`: any video ffmpeg reads -> a `.dfc` file of only the kept latent frames.

Many videos (INPUT a folder of videos, a glob or a manifest; OUTPUT a folder): one `.dfc` per video,
resumable, on one or more workers (`dfc.batch`); `JOB` below is what one video means.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import SimpleNamespace

from dfc.batch.engine import add_batch_arguments
from dfc.errors import UserError
from dfc.models import add_model_arguments, load_model

MODES = ("threshold", "bernoulli", "topk")
DEFAULT_CLIP_FRAMES = 32


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        help="a video file (anything ffmpeg reads) or a folder of image frames; or many videos: a folder of "
        "videos, a quoted glob ('data/**/*.mp4') or a manifest (.txt: a path per line; .jsonl: "
        '{"path": ...} per line)',
    )
    parser.add_argument(
        "output",
        help="the compressed file to write (.dfc); for many videos, a folder: one .dfc per video and a "
        "ledger; a folder with a ledger resumes",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--mode",
        choices=MODES,
        help="which frames to keep: threshold (keep probability > 0.5), bernoulli (each frame with its "
        "probability, draws fixed by --seed) or topk (the K most important per clip; implied by --keep/"
        "--keep-rate). Default: threshold",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--keep", type=int, metavar="K", help="top-K: frames to keep per clip")
    budget.add_argument(
        "--keep-rate", type=float, metavar="R", help="top-K: share of each clip's frames, (0, 1]"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the Bernoulli draws (default: 0)")
    parser.add_argument(
        "--clip-frames",
        type=int,
        metavar="N",
        help="frames per clip; longer videos are split, the last clip keeps its true length "
        "(default: 32, or the model's limit when smaller)",
    )
    parser.add_argument(
        "--resize",
        choices=("crop", "stretch"),
        default="crop",
        help="crop: resize the shorter side and centre-crop (default); stretch: resize the whole frame",
    )
    parser.add_argument(
        "--latent-dtype",
        choices=("bf16", "u8", "f32"),
        default="bf16",
        help="how latents are stored: bf16 (default), u8 (8-bit per channel, half the bytes) or f32",
    )
    parser.add_argument(
        "--entropy",
        choices=("zstd", "none"),
        default="zstd",
        help="lossless coding of the stored latents: zstd (default; a version-2 file) or none (version 1, "
        "readable by older dfc)",
    )
    parser.add_argument(
        "--measure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode the stored latents and report MSE/PSNR against the input (default: on with u8, which "
        "also reports the bf16 MSE to compare)",
    )
    parser.add_argument(
        "--batch", type=int, default=4, metavar="B", help="clips encoded together (default: 4)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace OUTPUT if it exists; many videos: write into a folder that holds other things, or "
        "start again in one whose ledger has other settings",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_batch_arguments(parser)


def _check_options(args: argparse.Namespace) -> str:
    mode = args.mode or ("topk" if args.keep is not None or args.keep_rate is not None else "threshold")
    if mode == "topk" and args.keep is None and args.keep_rate is None:
        raise UserError("--mode topk needs --keep K or --keep-rate R")
    if mode != "topk" and (args.keep is not None or args.keep_rate is not None):
        raise UserError(f"--keep/--keep-rate set a top-K budget; they cannot be used with --mode {mode}")
    if args.keep is not None and args.keep < 1:
        raise UserError(f"--keep must be at least 1, got {args.keep}")
    if args.keep_rate is not None and not 0 < args.keep_rate <= 1:
        raise UserError(f"--keep-rate must be in (0, 1], got {args.keep_rate}")
    if args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    if args.clip_frames is not None and args.clip_frames < 1:
        raise UserError(f"--clip-frames must be at least 1, got {args.clip_frames}")
    from dfc.options import check_seed

    check_seed(args.seed)
    return mode


def _check_output(args: argparse.Namespace) -> None:
    from dfc.outputs import check_file_target

    # e.g. `dfc compress a.mp4 a.mp4 --force` would otherwise replace the user's video with latents
    check_file_target(args.output, overwrite=args.force, inputs=[args.input, args.weights])


def run(args: argparse.Namespace) -> int:
    from dfc.batch.inputs import names_many

    args.mode = _check_options(args)
    if names_many(args.input):
        from dfc.batch.engine import run_batch
        from dfc.batch.inputs import resolve

        return run_batch(JOB, args, resolve(args.input))
    _check_output(args)
    from dfc.video import open_video

    opened = open_video(args.input)  # bad input fails here, before the (slow) model load
    state = JOB.setup(args, args.device, None)
    from tqdm.auto import tqdm

    from dfc.container import ClipSpool, write_container
    from dfc.container_report import size_report

    bar = None

    def on_frames(count: int) -> None:  # the bar appears with the first frames, not before an error
        nonlocal bar
        bar = (
            bar
            if bar is not None
            else tqdm(desc="compressing", unit="frame", disable=args.quiet, leave=False)
        )
        bar.update(count)

    # each clip is spooled beside the output as it is encoded: neither the latents nor the file in memory
    with ClipSpool(args.latent_dtype, args.entropy, Path(args.output).absolute().parent) as spool:
        try:
            streamed = _compress(state, args.input, on_frames, opened, spool)
        finally:
            if bar is not None:
                bar.close()
        write_container(args.output, streamed.cv, spool)
    cv = streamed.cv
    report = size_report(cv, args.input if Path(args.input).is_file() else None, args.output)
    _print_summary(args, streamed.info, cv, state.loaded, report, streamed.quantization, streamed.quality)
    return 0


def _compress(state, source, on_frames, opened=None, spool=None):
    """One video, read and encoded clip by clip (`dfc.streaming`) into `spool` (a `ClipSpool`);
    `opened`: `open_video(source)`."""
    from dfc.streaming import compress_stream

    args = state.args
    measure = args.measure if args.measure is not None else args.latent_dtype == "u8"
    streamed = compress_stream(
        state.loaded.model,
        source,
        opened=opened,
        weights_id=state.loaded.identity,
        mode=args.mode,
        k=args.keep,
        keep_rate=args.keep_rate,
        seed=args.seed,
        clip_frames=state.clip_frames,
        fit=args.resize,
        latent_dtype=args.latent_dtype,
        latent_coding=args.entropy,
        spool=spool,
        quantization=args.latent_dtype != "f32",
        batch_size=args.batch,
        measure=([args.latent_dtype] + (["bf16"] if args.latent_dtype == "u8" else [])) if measure else (),
        on_frames=on_frames,
        extra={"weights_source": _recordable(state.loaded.source)},
    )
    return streamed


class _CompressJob:
    """One video of a many-video `dfc compress`: `OUT/<name>.dfc`."""

    command = "compress"
    _SETTINGS = (
        "mode",
        "keep",
        "keep_rate",
        "seed",
        "clip_frames",
        "resize",
        "latent_dtype",
        "entropy",
        "precision",
    )

    def out(self, args) -> Path:
        return Path(args.output)

    def settings(self, args) -> dict:
        settings = {name: getattr(args, name) for name in self._SETTINGS}
        settings["weights"] = _recordable(args.weights) if args.weights else None
        return json.loads(json.dumps(settings))

    def setup(self, args, device: str, threads: int | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        loaded = load_model("vae", args.weights, device, args.precision)
        from dfc.weights_record import remember

        remember(loaded.identity, loaded.source)  # so that `decompress` finds these weights for its files
        limit = loaded.model.config.max_temporal_len
        clip_frames = args.clip_frames or min(DEFAULT_CLIP_FRAMES, limit)
        from dfc.video import check_clip_frames

        check_clip_frames(clip_frames, limit)
        return SimpleNamespace(args=args, loaded=loaded, clip_frames=clip_frames)

    def run(self, state, task, staging: Path, on_frames) -> dict:
        from dfc.container import ClipSpool, write_container

        name = f"{task.name}.dfc"
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        args = state.args
        with ClipSpool(args.latent_dtype, args.entropy, (staging / name).parent) as spool:
            streamed = _compress(state, task.input, on_frames, spool=spool)
            write_container(staging / name, streamed.cv, spool)
        return {
            "outputs": [name],
            "frames": streamed.info.num_frames,
            "kept": streamed.cv.kept_frames,
            "bytes": (staging / name).stat().st_size,
            "weights": state.loaded.identity,
            "quality": streamed.quality,
            **({"warning": streamed.warning} if streamed.warning else {}),
        }

    def finish(self, out: Path, tasks, ledger, args) -> None:
        latest = ledger.latest()
        done = [latest[t.input] for t in tasks if latest.get(t.input, {}).get("status") == "done"]
        frames = sum(r["frames"] for r in done)
        kept = sum(r["kept"] for r in done)
        share = f", kept {kept:,} ({kept / frames:.1%})" if frames else ""
        print(
            f"wrote    {out}/: {len(done)} .dfc file(s), {sum(r['bytes'] for r in done):,} B, "
            f"{frames:,} frames{share}"
        )


JOB = _CompressJob()


def _recordable(source: str) -> str:
    """Local weights are recorded by absolute path so `decompress` finds them from any folder."""
    return str(Path(source).absolute()) if Path(source).exists() else source


def _print_summary(args, info, cv, loaded, report, quantization, quality) -> None:
    output_bytes = os.path.getsize(args.output)
    print(
        f"input    {args.input}: {info.num_frames} frames, {info.width}x{info.height} at {info.fps:g} fps"
        + (f", {report['input_bytes']:,} B" if report["input_bytes"] else "")
    )
    keep = cv.keep.mode + (f" (K={cv.keep.k})" if cv.keep.k else "")
    if "keep_rate" in cv.extra:
        keep += f" (keep rate {cv.extra['keep_rate']:g})"
    print(
        f"model    {cv.model.width}x{cv.model.height} VAE, weights {loaded.identity} ({loaded.source}), "
        f"{args.precision}, keep {keep}, {args.resize}"
    )
    for index, clip in enumerate(cv.clips):
        positions = " ".join(str(p) for p in clip.positions())
        print(
            f"clip {index:<3} frames {clip.start}-{clip.stop - 1} ({clip.num_frames}): "
            f"kept {clip.kept}/{clip.num_frames} at {positions}"
        )
    kept = cv.kept_frames
    print(
        f"kept     {kept} of {cv.num_frames} frames ({kept / cv.num_frames:.1%}), "
        f"temporal {cv.num_frames / kept:.2f}x"
    )
    coded = (
        f", {cv.latent_coding}-coded from {report['latent_bytes_uncoded']:,} B"
        if args.entropy != "none"
        else ""
    )
    print(
        f"wrote    {args.output}: {output_bytes:,} B "
        f"({report['latent_bytes']:,} B of {cv.latent_dtype} latents{coded}, "
        f"{output_bytes - report['latent_bytes']:,} B header and gaps)"
    )
    ratio = (
        f"ratio    {report['raw_bytes_original'] / output_bytes:.1f}x vs raw uint8 frames at "
        f"{cv.width}x{cv.height} ({report['raw_bytes_original']:,} B), "
        f"{report['raw_bytes_model'] / output_bytes:.1f}x vs raw at model size"
    )
    if report["input_bytes"]:
        ratio += f", {report['input_bytes'] / output_bytes:.2f}x vs the input file"
    print(ratio)
    print(f"         {report['note']}")
    if quantization is not None:
        print(
            f"latents  stored as {cv.latent_dtype}: RMSE {quantization['rmse']:.3g} against float32 "
            f"(SNR {quantization['snr_db']:.1f} dB, largest error {quantization['max_abs_error']:.3g})"
        )
    if quality:
        parts = [
            f"{dtype} latents MSE {q['mse']:.5f} (PSNR {q['psnr']:.2f} dB)" for dtype, q in quality.items()
        ]
        print("quality  " + "; ".join(parts) + " vs the input at model size")
