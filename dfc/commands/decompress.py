"""`dfc decompress INPUT OUTPUT`: a `.dfc` file -> mp4, gif, another video type or a folder of PNG frames."""

from __future__ import annotations

import argparse
import os

from dfc.errors import UserError
from dfc.models import DEFAULT_REPO, add_model_arguments, load_model


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a .dfc file written by `dfc compress`")
    parser.add_argument(
        "output", help="video to write: .mp4 .mov .mkv .webm .avi .gif, or a folder (no suffix) of PNG frames"
    )
    add_model_arguments(
        parser,
        weights_help="the VAE weights the file was compressed with (default: the local weights your own "
        "`dfc compress` recorded for the file's weights identity, else the Hugging Face repo "
        f"{DEFAULT_REPO})",
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
    """`--weights` when not given: the local weights the user's own `compress` recorded for the file's
    weights identity (`dfc.weights_record`), else the published repo. Never the path written inside
    the file: a file can come from anyone, so that path is only a hint in messages."""
    from dfc.weights_record import lookup

    return lookup(cv.model.weights) or DEFAULT_REPO


def _hint(cv) -> str:
    recorded = cv.extra.get("weights_source")
    if isinstance(recorded, str) and recorded and recorded != DEFAULT_REPO:
        return f"; the file says it was made with the weights at {recorded[:200]}: pass --weights to use them"
    return ""


def run(args: argparse.Namespace) -> int:
    """Straight through, each step once: read the file -> load -> decode clip by clip -> write frames as
    they come (memory does not grow with the video's length)."""
    from dfc.container import check_weights, read_container
    from dfc.decoding import iter_frames, output_size
    from dfc.outputs import check_video_target
    from dfc.video_sink import VideoSink

    if args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    check_video_target(args.output, overwrite=args.force, inputs=[args.input, args.weights])
    cv = read_container(args.input)  # a damaged file fails here, before the model load
    source = args.weights or default_weights(cv)
    try:
        loaded = load_model("vae", source, args.device, args.precision)
    except UserError as err:
        raise UserError(f"{err}{'' if args.weights else _hint(cv)}") from None
    try:
        check_weights(cv, loaded.identity)
    except UserError as err:
        raise UserError(
            f"{args.input}: {err} (--weights {loaded.source}){'' if args.weights else _hint(cv)}"
        ) from None
    width, height = output_size(cv, full_frame=not args.crop_only)
    with VideoSink(args.output, width, height, cv.fps) as sink:
        for frame in iter_frames(
            loaded.model, cv, full_frame=not args.crop_only, batch_size=args.batch, progress=not args.quiet
        ):
            sink.write(frame)
        count = sink.count
    written = sink.path
    size = os.path.getsize(written) if written.is_file() else sum(f.stat().st_size for f in written.iterdir())
    print(
        f"decoded  {args.input}: {count} frames, {width}x{height} at {cv.fps:g} fps "
        f"({cv.kept_frames} kept latent frames in {len(cv.clips)} clip(s), weights {loaded.identity})"
    )
    if sink.written_fps != cv.fps:
        print(f"note     {written.suffix} cannot hold {cv.fps:g} fps; it plays at {sink.written_fps:g} fps")
    print(f"wrote    {written}: {size:,} B")
    return 0
