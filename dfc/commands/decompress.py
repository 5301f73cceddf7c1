"""`dfc decompress INPUT OUTPUT`: a `.dfc` file -> mp4, gif, another video type or a folder of PNG frames."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dfc.errors import UserError
from dfc.models import DEFAULT_REPO, add_model_arguments, load_model


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a .dfc file written by `dfc compress`")
    parser.add_argument(
        "output", help="video to write: .mp4 .mov .mkv .webm .avi .gif, or a folder (no suffix) of PNG frames"
    )
    add_model_arguments(
        parser,
        weights_help="the VAE weights the file was compressed with (default: the local weights recorded in "
        f"the file when they still exist, else the Hugging Face repo {DEFAULT_REPO})",
    )
    parser.add_argument(
        "--crop-only",
        action="store_true",
        help="for a cropped input, write only the cropped box (default: the full source frame, bands black)",
    )
    parser.add_argument(
        "--batch", type=int, default=4, metavar="B", help="clips decoded together (default: 4)"
    )
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it is an existing file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def default_weights(cv) -> str:
    recorded = cv.extra.get("weights_source")
    return recorded if isinstance(recorded, str) and Path(recorded).exists() else DEFAULT_REPO


def run(args: argparse.Namespace) -> int:
    """Straight through, each step once: read the file -> load -> decode clips -> restore frames -> write."""
    from dfc.codec import decompress_video
    from dfc.container import check_weights, read_container
    from dfc.outputs import check_video_target
    from dfc.video import write_video

    if args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    check_video_target(args.output, overwrite=args.force)
    cv = read_container(args.input)  # a damaged file fails here, before the model load
    loaded = load_model("vae", args.weights or default_weights(cv), args.device, args.precision)
    try:
        check_weights(cv, loaded.identity)
    except UserError as err:
        raise UserError(f"{args.input}: {err} (--weights {loaded.source})") from None
    frames, fps = decompress_video(
        loaded.model, cv, full_frame=not args.crop_only, batch_size=args.batch, progress=not args.quiet
    )
    written = write_video(args.output, frames, fps)
    size = os.path.getsize(written) if written.is_file() else sum(f.stat().st_size for f in written.iterdir())
    print(
        f"decoded  {args.input}: {len(frames)} frames, {frames.shape[2]}x{frames.shape[1]} at {fps:g} fps "
        f"({cv.kept_frames} kept latent frames in {len(cv.clips)} clip(s), weights {loaded.identity})"
    )
    print(f"wrote    {written}: {size:,} B")
    return 0
