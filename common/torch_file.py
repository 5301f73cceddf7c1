"""Reading a legacy PyTorch `.pt` state dict: the one module of `common` that imports torch, lazily.

`torch.load` with `weights_only=True` (no arbitrary pickle) and memory-mapped where the file allows it
(the zip format); the pre-zip format cannot be mapped and is read whole. Anything else than a non-empty
plain mapping of names to tensors is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


class TorchFileError(ValueError):
    """A `.pt` that is not a readable plain state dict; the message is one line that names the file."""


def read_torch_state(path: str | os.PathLike) -> dict:
    """`{name: torch.Tensor}` of a `torch.save`d state dict, memory-mapped when the format allows."""
    path = Path(path)
    try:
        import torch
    except ImportError:
        raise TorchFileError("reading a .pt needs torch (pip install torch)") from None

    def unreadable(err: Exception) -> TorchFileError:
        first_line = (str(err) or type(err).__name__).splitlines()[0]
        return TorchFileError(f"{path}: not a readable PyTorch file ({first_line})")

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err) and "zip" not in str(err):
            raise unreadable(err) from None
        try:  # the legacy (pre-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err2:
            raise unreadable(err2) from None
    except Exception as err:
        raise unreadable(err) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TorchFileError(f"{path}: expected a plain state dict of tensors, got {type(state).__name__}")
    if not state:
        raise TorchFileError(f"{path}: the state dict is empty")
    return dict(state)
