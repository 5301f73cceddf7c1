"""Loading the models a command asked for (`--weights`, `--device`, `--precision`), failures as one line.

Imports torch only when called, so `dfc --help` and the torch-free commands stay fast.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.hub import DEFAULT_REPO, HUB_FILENAMES
from common.precision import Precision
from dfc.errors import UserError


@dataclass
class LoadedModel:
    model: Any
    source: str
    identity: str


def add_model_arguments(parser: argparse.ArgumentParser, *, weights_help: str | None = None) -> None:
    parser.add_argument(
        "--weights",
        metavar="W",
        help=weights_help
        or "a weights file (.safetensors or .pt), a folder with model.safetensors + config.json, or a "
        f"Hugging Face repo id (default: {DEFAULT_REPO}; offline, the local hub cache is used)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=[p.value for p in Precision],
        help="fp32 (default); bf16 = every weight bf16 (as the published port); mixed = matmul weights bf16",
    )


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def _how_to_provide(model_type: str, source: str) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub could not be reached"
    name = HUB_FILENAMES[model_type]
    return (
        f"no {model_type.upper()} weights: {name} of the Hugging Face repo {source} is not in the local "
        f"cache ({cache}) and {why}; pass --weights PATH (a .pt, a .safetensors or a folder with "
        f"model.safetensors + config.json), or run `hf download {source} {name}` on a machine with "
        f"internet and copy its cache folder to {cache} (or set HF_HUB_CACHE to the copy)"
    )


def load_model(model_type: str, source: str | os.PathLike | None, device: str, precision: str) -> LoadedModel:
    """The VAE or DiT behind `source` (default: the published repo), with its weights identity."""
    from safetensors import SafetensorError

    import torch_impl

    source = os.fspath(source) if source is not None else DEFAULT_REPO
    # "owner/name" is a hub repo id; anything path-like that does not exist is a typo, not a repo
    looks_local = source.startswith((".", "/", "~")) or source.endswith((".pt", ".safetensors", ".json"))
    if looks_local and not Path(source).exists():
        raise UserError(f"--weights {source}: no such file or folder")
    loader = torch_impl.load_vae if model_type == "vae" else torch_impl.load_dit
    _quiet_hub()
    try:
        located = torch_impl.locate_weights(source, model_type)  # once: the loader reads what is hashed
        model = loader(located, device=resolve_device(device), precision=precision)
        identity = torch_impl.file_identity(located.files)
    except torch_impl.WeightsNotFoundError as err:
        if Path(source).exists():
            raise UserError(f"--weights {source}: {_first_line(err)}") from None
        raise UserError(_how_to_provide(model_type, source)) from None
    except torch_impl.WeightsFileError as err:
        raise UserError(
            f"--weights {source}: cannot load {model_type.upper()} weights ({_first_line(err)})"
        ) from None
    except torch_impl.WeightsError as err:
        raise UserError(
            f"--weights {source}: not {model_type.upper()} weights ({_first_line(err)})"
        ) from None
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # e.g. a damaged .safetensors
        raise UserError(
            f"--weights {source}: cannot load {model_type.upper()} weights ({_first_line(err)})"
        ) from None
    return LoadedModel(model, source, identity)


def _quiet_hub() -> None:
    """huggingface_hub logs each retry of an unreachable hub as a warning; the user gets one line, ours.

    Imported first: the library sets its logger's level when it is imported, undoing an earlier setting.
    """
    try:
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:  # local weights need no hub client
        return
    hub_logging.set_verbosity_error()


def _first_line(err: BaseException) -> str:
    """The first line, with the Python API's advice said for the command line."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line.replace("pass config= explicitly", "put the model's config.json beside the weights")
