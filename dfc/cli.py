"""Entry point of `dfc`. Each subcommand lives in `dfc/commands/<name>.py` with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import importlib
import sys

from dfc import __version__
from dfc.errors import UserError

# name -> module under dfc.commands; imported lazily so `dfc --help` stays fast and torch/jax load only
# for the commands that need them.
COMMANDS = {
    "convert": "Convert an Orbax checkpoint or a published .pt to safetensors (and back)",
    "inspect": "Show the tree of an Orbax checkpoint, a safetensors file/directory or a .pt",
    "parity": "Layer-by-layer parity of a torch port against its Flax model (suite: vae, dit, all or yours)",
    "compress": "Compress a video into a .dfc file",
    "decompress": "Decompress a .dfc file into a video",
    "generate": "Generate videos with the DiT and decode them with the VAE",
    "evaluate": "Evaluate compression over a folder of videos",
    "demo": "Build small models, convert, check parity, compress and decompress a test clip",
}


def _module(name: str):
    return importlib.import_module(f"dfc.commands.{name}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfc", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dfc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        if wanted == name:
            _module(name).add_parser(sub.add_parser(name, help=help_text, description=help_text))
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(_module(args.command).run(args) or 0)
    except UserError as err:
        print(f"dfc {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"dfc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
