"""`dfc demo`: build small models, convert, check parity, compress and decompress a test clip."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dfc.demo import TRAIN_STEPS
from dfc.errors import UserError


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="demo_out", help="folder for everything the demo writes (default: ./demo_out)"
    )
    parser.add_argument(
        "--weights",
        metavar="W",
        help="run on these PyTorch VAE weights instead of building a model (no parity)",
    )
    parser.add_argument(
        "--orbax", metavar="CKPT", help="run on this Orbax VAE checkpoint: convert, parity, compress"
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=TRAIN_STEPS,
        help=f"Adam steps of the built model on the demo clip; 0 = random weights (default: {TRAIN_STEPS})",
    )
    parser.add_argument(
        "--keep-rate",
        type=float,
        default=0.5,
        help="top-K keep rate per clip; 0 = the model's own threshold choice (default: 0.5)",
    )
    parser.add_argument(
        "--preset",
        choices=("vae-small", "vae-tiny"),
        default="vae-small",
        help="size of the built model (default: vae-small, 64x64; vae-tiny, 32x32, is for quick checks)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--force", action="store_true", help="use an --out folder that was not made by the demo"
    )
    parser.add_argument("--quiet", action="store_true", help="only the summary")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.weights and args.orbax:
        raise UserError("give --weights (PyTorch weights) or --orbax (a checkpoint to convert), not both")
    for flag, value in (("--weights", args.weights), ("--orbax", args.orbax)):
        if value and not Path(value).exists():
            raise UserError(f"{flag} {value}: no such file or folder")
    from dfc.options import check_seed

    check_seed(args.seed)
    if args.train_steps < 0:
        raise UserError(f"--train-steps must be >= 0, got {args.train_steps}")
    if not 0 <= args.keep_rate <= 1:
        raise UserError(f"--keep-rate must be in [0, 1], got {args.keep_rate}")

    from dfc.demo import DemoOptions, run_demo

    summary = run_demo(
        DemoOptions(
            out=Path(args.out),
            weights=args.weights,
            orbax=args.orbax,
            train_steps=args.train_steps,
            preset=args.preset,
            keep_rate=args.keep_rate or None,
            seed=args.seed,
            quiet=args.quiet,
            force=args.force,
        )
    )
    print("\ndfc demo: summary")
    print(summary.render())
    return 0 if summary.parity_passed is not False else 1
