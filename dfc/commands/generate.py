"""`dfc generate OUTPUT`: DiT sampling -> predicted gaps -> frame positions -> VAE decode -> videos."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from dfc.errors import UserError
from dfc.models import DEFAULT_REPO, add_model_arguments, load_model


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "output",
        help="video to write (.mp4 .gif ... or a folder); with several samples and no --grid, each gets "
        "_seed<S> before the suffix",
    )
    add_model_arguments(
        parser,
        weights_help="where both models are: a folder with vae/ and dit/ subfolders, or a Hugging Face repo "
        f"holding vae_pytorch.pt and dit_pytorch.pt (default: {DEFAULT_REPO})",
    )
    parser.add_argument("--vae-weights", metavar="W", help="the VAE alone (overrides --weights for the VAE)")
    parser.add_argument("--dit-weights", metavar="W", help="the DiT alone (overrides --weights for the DiT)")
    parser.add_argument("--num-latent-frames", type=int, default=8, metavar="N", help="default: 8")
    parser.add_argument("--steps", type=int, default=100, metavar="S", help="Euler steps (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first sample; the next get S+1, ...")
    parser.add_argument("--batch", type=int, default=1, metavar="B", help="number of samples (default: 1)")
    parser.add_argument(
        "--chunk", type=int, default=8, metavar="C", help="samples run through the DiT together (default: 8)"
    )
    parser.add_argument(
        "--grid", action="store_true", help="write one labelled grid of all samples (seed and frame count)"
    )
    parser.add_argument(
        "--fps", type=float, default=16.0, help="frame rate of the written video (default: 16)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the DiT through torch.compile (CUDA graphs on a GPU); the first step then compiles, "
        "which takes minutes on a CPU",
    )
    parser.add_argument("--force", action="store_true", help="replace output files that exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def model_sources(args: argparse.Namespace) -> tuple[str, str]:
    """`(vae source, dit source)`: explicit flags first, else `--weights` (its vae/, dit/ when present)."""
    base = args.weights or DEFAULT_REPO
    vae = dit = base
    if Path(base).is_dir() and (Path(base) / "vae").is_dir() and (Path(base) / "dit").is_dir():
        vae, dit = str(Path(base) / "vae"), str(Path(base) / "dit")
    return args.vae_weights or vae, args.dit_weights or dit


def output_paths(output: str, seeds: list[int], grid: bool) -> list[Path]:
    path = Path(output)
    if grid or len(seeds) == 1:
        return [path]
    return [path.with_name(f"{path.stem}_seed{seed}{path.suffix}") for seed in seeds]


def _check_arguments(args: argparse.Namespace) -> None:
    from dfc.outputs import check_video_target

    for name in ("num_latent_frames", "steps", "batch", "chunk"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise UserError(f"--fps must be a positive number, got {args.fps}")
    seeds = list(range(args.seed, args.seed + args.batch))
    for path in output_paths(args.output, seeds, args.grid):
        check_video_target(str(path), overwrite=args.force, inputs=[args.weights, *model_sources(args)])


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    vae_source, dit_source = model_sources(args)
    vae = load_model("vae", vae_source, args.device, args.precision).model
    dit = load_model("dit", dit_source, args.device, args.precision).model

    from dfc.codec import check_pair, generate

    try:
        check_pair(dit, vae, args.num_latent_frames)
    except ValueError as err:
        raise UserError(str(err)) from None
    seeds = list(range(args.seed, args.seed + args.batch))
    samples = generate(
        dit,
        vae,
        num_latent_frames=args.num_latent_frames,
        steps=args.steps,
        seeds=seeds,
        batch_size=args.chunk,
        progress=not args.quiet,
        compile=args.compile,
    )
    for sample in samples:
        note = f" (predicted {sample.squeezed_from}, squeezed to fit the VAE)" if sample.squeezed_from else ""
        print(
            f"seed {sample.seed}: gaps {' '.join(f'{g:.2f}' for g in sample.gaps)} -> positions "
            f"{' '.join(str(int(p)) for p in sample.positions)} -> {sample.total} frames{note}"
        )
    _write(args, samples, seeds)
    return 0


def _write(args: argparse.Namespace, samples, seeds: list[int]) -> None:
    from dfc.figures import labelled_grid
    from dfc.video import write_video

    if args.grid:
        columns = math.ceil(math.sqrt(len(samples)))
        labels = [f"seed {s.seed} | {s.total}f" for s in samples]
        grid = labelled_grid([s.frames for s in samples], labels, columns)
        write_video(args.output, grid, args.fps)
        print(f"wrote    {args.output}: grid of {len(samples)} samples, {len(grid)} frames")
        return
    for sample, path in zip(samples, output_paths(args.output, seeds, grid=False)):
        write_video(path, sample.frames, args.fps)
        print(f"wrote    {path}: {sample.total} frames")
