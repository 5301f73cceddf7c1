"""Checks on where a command will write, made before any model is loaded or frame decoded."""

from __future__ import annotations

import os
from pathlib import Path

from dfc.errors import UserError
from dfc.video import OUTPUT_SUFFIXES


def check_video_target(path: str, *, overwrite: bool = False) -> None:
    """Fail before any decoding when the output cannot be written, or would replace a file unasked."""
    target = Path(path)
    is_folder = path.endswith(("/", os.sep)) or target.is_dir() or not target.suffix
    if not is_folder and target.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(
            f"{path}: unknown video type {target.suffix!r}; use one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    if is_folder and target.is_dir() and any(target.iterdir()):
        raise UserError(f"{path}: folder exists and is not empty; choose a new or empty folder")
    if not is_folder and target.exists() and not overwrite:
        raise UserError(f"{path}: exists; pass --force to replace it")
    if not target.absolute().parent.is_dir():
        raise UserError(f"{path}: the folder {target.absolute().parent} does not exist")
