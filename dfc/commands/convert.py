"""`dfc convert SRC DST`: an Orbax checkpoint or a published `.pt` -> safetensors; safetensors -> Orbax."""

from __future__ import annotations

import argparse
import re
import sys

from common.tables import TABLES
from dfc.errors import UserError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    """`5GB`, `500MB`, `2GiB`, `1000000` -> bytes (decimal units unless `i` is given, like Hugging Face)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 5GB, 500MB, 2GiB)")
    unit = (m.group(2) or "").lower()
    binary = "i" in unit
    letter = unit[:1] if unit[:1] in "kmgt" else ""
    scale = 1024 ** ("kmgt".index(letter) + 1) if binary and letter else _UNITS[letter]
    return int(float(m.group(1)) * scale)


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        help="an Orbax checkpoint (a step directory or a CheckpointManager root), a published .pt, "
        "or safetensors (a file or a directory) to turn back into Orbax",
    )
    parser.add_argument(
        "dst",
        help="a directory (weights + config.json) or a .safetensors file; for a safetensors source, the "
        "Orbax checkpoint directory to write",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--model", choices=tuple(TABLES), help="model kind (default: detected from the tensors)"
    )
    which.add_argument(
        "--table",
        metavar="MODULE:NAME",
        help="the conversion table (a common.tables.Table) of any model: MODULE:NAME, where MODULE is a "
        "dotted module or path/to/file.py; or a registered name (vae, dit: the same as --model)",
    )
    parser.add_argument(
        "--flax",
        choices=("nnx", "linen"),
        default="nnx",
        help="for an Orbax output: the tree to write, an NNX model's state under 'model' (default) or a "
        "Linen model's variables {'params': ...}",
    )
    parser.add_argument(
        "--config",
        metavar="JSON",
        help="configuration (JSON file, directory with config.json, or preset name); default: inferred from "
        "the tensor shapes. A tensor that contradicts it is named",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        help="store floating tensors in this dtype (bfloat16: one round-to-nearest-even); "
        "default: keep every bit",
    )
    parser.add_argument(
        "--step", type=int, metavar="N", help="step of a CheckpointManager root (default: latest)"
    )
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    parser.add_argument(
        "--sync",
        action="store_true",
        help="fsync the output and its directory before the rename, so it survives a power cut (the "
        "data is mostly on the disk already: it is written through as the conversion goes; without "
        "--sync a failed conversion still leaves nothing behind)",
    )
    parser.add_argument(
        "--verify-forward",
        action="store_true",
        help="also run jax_ref on the source and torch_impl on the result on a small input (child process)",
    )
    parser.add_argument(
        "--max-shard-size",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="split a directory output into shards above this size (default: 5GB, as Hugging Face)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def run(args: argparse.Namespace) -> int:
    from convert.options import ConvertError, Options
    from dfc.convert_checks import convert
    from dfc.outputs import check_name, check_not_input

    check_name(args.dst)
    check_not_input(args.dst, [args.src])  # --force replaces an old output, never the source
    model, table = None, None
    if args.table or args.model:  # --model vae is --table vae: a registered table, found like any other
        from common.plugins import PluginError
        from common.tables import load_table, registered_name

        try:
            table = load_table(args.table or args.model)
        except PluginError as err:
            raise UserError(str(err)) from None
        model = registered_name(table)  # a registered model: its configuration is inferred and checked
        table = None if model else table
    options = Options(
        model=model,
        table=table,
        flax=args.flax,
        config=args.config,
        dtype=args.dtype,
        step=args.step,
        force=args.force,
        verify_forward=args.verify_forward,
        sync=args.sync,
    )
    if args.max_shard_size is not None:
        if args.max_shard_size <= 0:
            raise UserError("--max-shard-size must be positive")
        options.max_shard_bytes = args.max_shard_size
    bar = _ProgressBar(enabled=not args.quiet and sys.stderr.isatty())
    try:
        with bar:
            report = convert(args.src, args.dst, options, progress=bar.start, log=bar.log)
    except ConvertError as err:
        raise UserError(str(err)) from None
    if not args.quiet:
        print_summary(report)
    return 0 if report.verified else 1


class _ProgressBar:
    """A tqdm bar over the bytes converted, on stderr, only when a person is watching."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None

    def start(self, total: int):
        if not self.enabled:
            return lambda n: None
        from tqdm import tqdm

        self._bar = tqdm(
            total=total, unit="B", unit_scale=True, desc="converting", file=sys.stderr, leave=False
        )
        return self._bar.update

    def log(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def print_summary(report) -> None:
    """What was converted, what was dropped and why, what was checked, and where the result is."""
    lines = [f"dfc convert: {report.source} -> {report.destination}"]
    from convert.orbax_io import LAYOUT_DESCRIPTIONS

    source = f"{report.source_format}, {LAYOUT_DESCRIPTIONS.get(report.layout, report.layout)}"
    if report.step is not None:
        source += f", step {report.step}"
    lines.append(f"  source     {source}")
    config = f"{report.model_type} ({report.config_source})"
    if report.assumed:
        config += f"; assumed: {', '.join(f'{k}={getattr(report.config, k)}' for k in report.assumed)}"
    lines.append(f"  model      {config}")
    tensors = f"{len(report.converted)} converted, {len(report.dropped)} dropped"
    lines.append(f"  tensors    {tensors}")
    reasons: dict[str, int] = {}
    for reason in report.dropped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        lines.append(f"             dropped {count}: {reason}")
    for subtree, count in report.not_read.items():
        lines.append(f"             not read: {subtree} ({count} leaves, not part of the model)")
    lines.append(f"  written    {_size(report.bytes_written)} of {report.dtype} tensors")
    for check in report.checks:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[check.ok]
        lines.append(f"  {mark}       {check.name}: {check.detail}")
    lines.append(f"  output     {', '.join(str(f) for f in report.files)}")
    print("\n".join(lines))
