"""Reading a legacy PyTorch `.pt` state dict: the one module of `common` that imports torch, lazily.

`torch.load` with `weights_only=True` (no arbitrary pickle) and memory-mapped where the file allows it
(the zip format); the pre-zip format cannot be mapped and is read whole. Anything else than a non-empty
plain mapping of names to tensors is refused.

`torch.load` does not check the CRC-32 that a zip-format `.pt` stores for each member, so a flipped bit
in the tensor data would load silently: `verify_zip` checks them first (streaming, in bounded memory).
Where every CRC is zero the file cannot be verified, and a one-line warning says so.
"""

from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

_CHUNK = 1 << 20


class TorchFileError(ValueError):
    """A `.pt` that is not a readable plain state dict; the message is one line that names the file."""


def verify_zip(path: str | os.PathLike) -> bool | None:
    """Check the CRC-32 of every member of a zip-format `.pt`: True when all match, False when the
    archive stores no CRCs (all zero: cannot be verified), None for a file that is not a zip (the
    legacy format has no checksum). A mismatch or a broken archive is a `TorchFileError`."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.file_size > 0]
            if members and all(m.CRC == 0 for m in members):
                return False
            for member in members:
                with archive.open(member) as f:
                    while f.read(_CHUNK):
                        pass
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as err:
        raise TorchFileError(f"{path}: damaged PyTorch file ({str(err).splitlines()[0][:120]})") from None
    return True


def read_torch_state(path: str | os.PathLike) -> dict:
    """`{name: torch.Tensor}` of a `torch.save`d state dict, memory-mapped when the format allows; its
    zip CRCs checked first (`verify_zip`)."""
    from common.files import InputFileError, check_regular

    path = Path(path)
    try:
        check_regular(path, what="a .pt file")
    except InputFileError as err:
        raise TorchFileError(str(err)) from None
    if verify_zip(path) is False:
        print(
            f"warning: {path}: its zip stores no CRC-32 checksums; the file's bytes cannot be verified",
            file=sys.stderr,
        )
    try:
        import torch
    except ImportError:
        raise TorchFileError("reading a .pt needs torch (pip install torch)") from None

    def unreadable(err: Exception) -> TorchFileError:
        first_line = (str(err) or type(err).__name__).splitlines()[0]
        if "weights only load failed" in first_line.lower() or "weights_only" in str(err):
            # torch's advice (re-run torch.load with weights_only=False) would run the file's code
            return TorchFileError(
                f"{path}: holds Python objects besides tensors, which could run code when loaded; only plain "
                "state dicts of tensors are read (re-save it as a state dict or .safetensors where you "
                "trust it)"
            )
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
