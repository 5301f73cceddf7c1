"""`dfc convert`'s engine: Orbax or published `.pt` -> safetensors, and safetensors -> Orbax, streamed and
verified. None of it is model-specific: a model is a table of `common.tables`.

This module tells the source's format and checks the destination, then hands over to a direction
(`convert.to_safetensors`, `convert.to_orbax`). Checks that need an implementation (`torch_impl`,
`jax_ref`) come from the caller as `convert.checks.Checks` (`dfc.convert_checks` supplies them).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from common.files import InputFileError, check_regular
from common.infer import ConfigMismatch
from common.tables import TABLES
from convert import safetensors_io as st
from convert.checks import Checks
from convert.options import (
    DTYPES,
    FLAX_KINDS,
    TORCH_SUFFIXES,
    ConvertError,
    Log,
    Options,
    Progress,
    Report,
    quiet,
)
from convert.orbax_io import CheckpointError
from convert.to_orbax import safetensors_to_orbax
from convert.to_safetensors import orbax_to_safetensors, pt_to_safetensors


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    options: Options | None = None,
    progress: Callable[[int], Progress] | None = None,
    log: Log = quiet,
    checks: Checks | None = None,
) -> Report:
    """Convert `src` to `dst`; `progress(total_bytes)` returns the per-batch callback of a progress bar.

    `checks` supplies the checks that need an implementation; without them they are reported as skipped.
    """
    options = options or Options()
    checks = checks or Checks()
    if options.dtype is not None and options.dtype not in DTYPES:
        raise ConvertError(f"unknown --dtype {options.dtype!r}; choose one of {', '.join(DTYPES)}")
    if options.flax not in FLAX_KINDS:
        raise ConvertError(f"unknown Flax kind {options.flax!r}; choose one of {', '.join(FLAX_KINDS)}")
    if options.model is not None and options.model not in TABLES:
        raise ConvertError(f"unknown --model {options.model!r}; choose one of {', '.join(TABLES)}")
    src, dst = Path(src), Path(dst)
    kind = source_format(src)
    _check_destination(src, dst, kind, options.force)
    report = Report(source=str(src), source_format=kind)
    direction = {"orbax": orbax_to_safetensors, "pt": pt_to_safetensors}.get(kind, safetensors_to_orbax)
    try:
        return direction(src, dst, options, report, progress, log, checks)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise ConvertError(f"no space left on device while writing {dst}; nothing was written") from None
        raise ConvertError(f"{err.filename or dst}: {err.strerror or err}") from None
    except (CheckpointError, st.SafetensorsError, ConfigMismatch) as err:
        raise ConvertError(str(err)) from None


def source_format(src: Path) -> str:
    """'orbax', 'pt' or 'safetensors', from what is on disk."""
    if not src.exists():
        raise ConvertError(f"{src}: no such file or directory")
    if src.is_dir():
        return "safetensors" if st.is_safetensors(src) else "orbax"
    try:
        check_regular(src, what="a checkpoint")  # a FIFO or a device is never opened
    except InputFileError as err:
        raise ConvertError(str(err)) from None
    if src.suffix == ".safetensors":
        return "safetensors"
    with open(src, "rb") as f:
        magic = f.read(4)
    if src.suffix in TORCH_SUFFIXES or magic[:2] == b"PK" or magic[:1] == b"\x80":
        return "pt"
    raise ConvertError(f"{src}: not a checkpoint (expected an Orbax directory, a .pt or safetensors)")


def _check_destination(src: Path, dst: Path, kind: str, force: bool) -> None:
    if kind == "safetensors" and dst.suffix == ".safetensors":
        raise ConvertError(
            f"{dst}: a safetensors source converts to an Orbax directory, not a .safetensors file"
        )
    source, target = src.resolve(), dst.resolve()
    if target == source or target in source.parents:
        raise ConvertError(f"{dst}: writing there would replace the source")
    if source in target.parents:
        raise ConvertError(f"{dst}: the output may not go inside the source")
    if (dst.exists() or dst.is_symlink()) and not force:
        raise ConvertError(f"{dst} already exists (pass --force to replace it)")
