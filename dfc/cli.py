"""Entry point of `dfc`. Each subcommand lives in `dfc/commands/<name>.py` with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import importlib
import signal
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds exactly as Ctrl-C does: temporary
    outputs removed, ffmpeg and check children stopped by the same `finally`/`except` blocks."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def _user_facing() -> tuple[type[BaseException], ...]:
    """Error types whose message is already one line for a person (bad input files, configs)."""
    from common.config import ConfigError
    from common.files import InputFileError

    return (UserError, InputFileError, ConfigError)


def _os_error_line(err: OSError) -> str:
    from common.atomic import output_of

    where = f"{output_of(err.filename)}: " if err.filename else ""
    return f"{where}{err.strerror or err}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(_module(args.command).run(args) or 0)
    except _user_facing() as err:
        text = str(err) if isinstance(err, UserError) else (str(err).strip().splitlines() or [""])[0]
        print(f"dfc {args.command}: error: {text}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except Terminated:
        print(f"dfc {args.command}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"dfc {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # the file system said no (read-only folder, a name too long, disk full)
        print(f"dfc {args.command}: error: {_os_error_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
