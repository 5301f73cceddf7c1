"""Checks on where a command will write, made before any model is loaded or frame decoded: the one
home of "never replace what the user did not ask to replace".

- A name longer than the file system allows is refused with one line, not an OSError later.
- A path ending in '/' asks for a folder: it never replaces a file of that name, `--force` or not.
- An output that is one of the command's own inputs (the same file through a symlink, `..`, a hard
  link or a trailing slash) is refused, `--force` or not: `--force` replaces old outputs, never inputs.
- An existing output is replaced only with `--force`.
- An output where nothing can be written (a read-only folder, one without permission) is refused at once,
  not after the work that would have filled it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from common.files import NAME_MAX, long_component, same_file
from dfc.errors import UserError
from dfc.video import OUTPUT_SUFFIXES


def wants_folder(path: str | os.PathLike) -> bool:
    """A path written with a trailing '/' names a folder (`Path` drops the slash, so ask the text)."""
    return os.fspath(path).endswith(("/", os.sep))


def check_name(path: str | os.PathLike, flag: str = "") -> None:
    part = long_component(path)
    if part is not None:
        raise UserError(
            f"{flag}{os.fspath(path)[:60]}...: a name in this path is {len(os.fsencode(part))} bytes long, "
            f"the file system allows {NAME_MAX}"
        )


def check_not_input(
    output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], flag: str = ""
) -> None:
    """Refuse an output that is (or, for a folder output, holds) one of the command's inputs."""
    out = os.fspath(output)
    for item in inputs:
        if item is None:
            continue
        text = os.fspath(item)
        if same_file(out, text):
            raise UserError(
                f"{flag}{out}: is the input {text}; choose another output (--force never replaces an input)"
            )
        if os.path.isdir(out.rstrip("/") or "/") and _inside(text, out):
            raise UserError(
                f"{flag}{out}: holds the input {text}; choose another output "
                "(--force never replaces an input)"
            )


def _inside(path: str, folder: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real != base and os.path.commonpath([real, base]) == base


def check_writable(path: str | os.PathLike, flag: str = "", *, is_folder: bool = False) -> None:
    """Refuse an output where no new file can be made: a probe file, the kind of hidden temporary sibling
    every output starts as, is created and removed at once in the folder that would hold the output (for a
    folder output, the folder itself), or in its nearest existing ancestor when that folder is still to be
    made."""
    from common.atomic import temporary_sibling

    text = os.fspath(path)
    folder = Path(os.path.abspath(text))
    folder = folder if is_folder else folder.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    probe = temporary_sibling(folder / "write-probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        raise UserError(f"{flag}{text}: cannot write in {folder} ({err.strerror or err})") from None
    os.unlink(probe)


def check_file_target(
    path: str | os.PathLike, *, overwrite: bool, inputs: Iterable = (), flag: str = ""
) -> None:
    """A single output file: not a folder, not an input, in an existing folder, new unless `overwrite`."""
    text = os.fspath(path)
    check_name(text, flag)
    check_not_input(text, inputs, flag)
    target = Path(text)
    if wants_folder(text) or target.is_dir():
        what = "is a folder" if target.is_dir() else "ends with '/' (a folder name)"
        raise UserError(f"{flag}{text}: {what}; give a file name such as {target / 'out.dfc'}")
    if not target.absolute().parent.is_dir():
        raise UserError(f"{flag}{text}: the folder {target.absolute().parent} does not exist")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise UserError(f"{flag}{text}: exists; pass --force to replace it")
    if (target.exists() or target.is_symlink()) and not target.is_file():
        raise UserError(f"{flag}{text}: exists and is not a regular file; refusing to replace it")
    check_writable(text, flag)


def check_folder_target(path: str | os.PathLike, *, inputs: Iterable = (), flag: str = "") -> None:
    """A folder output: never a file of that name, never an input or a folder holding one."""
    text = os.fspath(path)
    check_name(text, flag)
    check_not_input(text, inputs, flag)
    target = Path(text)
    if (target.exists() or target.is_symlink()) and not target.is_dir():
        raise UserError(f"{flag}{text}: exists and is not a folder; refusing to replace it with a folder")
    check_writable(text, flag, is_folder=True)


def check_video_target(path: str, *, overwrite: bool = False, inputs: Iterable = ()) -> None:
    """Fail before any decoding when the output cannot be written, or would replace a file unasked."""
    check_name(path)
    check_not_input(path, inputs)
    target = Path(path)
    is_folder = wants_folder(path) or target.is_dir() or not target.suffix
    if not is_folder and target.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(
            f"{path}: unknown video type {target.suffix!r}; use one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    if is_folder and (target.exists() or target.is_symlink()) and not target.is_dir():
        raise UserError(
            f"{path}: names a folder of PNG frames, but {target} is a file; refusing to replace it "
            "(give a video suffix without '/' and --force to replace the file)"
        )
    if is_folder and target.is_dir() and any(target.iterdir()):
        raise UserError(f"{path}: folder exists and is not empty; choose a new or empty folder")
    if not is_folder and target.exists() and not overwrite:
        raise UserError(f"{path}: exists; pass --force to replace it")
    if not is_folder and target.exists() and not target.is_file():
        raise UserError(f"{path}: exists and is not a regular file; refusing to replace it")
    if not target.absolute().parent.is_dir():
        raise UserError(f"{path}: the folder {target.absolute().parent} does not exist")
    check_writable(path, is_folder=is_folder)
