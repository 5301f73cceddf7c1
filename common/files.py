"""Input files, the one home of the checks made before a file a user named is opened.

A FIFO, a device or a socket is refused at once (reading `/dev/zero` or a pipe never ends); a folder
only where the caller says a folder is a valid input; a file larger than what its kind can be is
refused before a byte is read. Each problem is an `InputFileError`, one line naming the path.
Standard library only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# The longest single path component most file systems allow (NAME_MAX), in bytes.
NAME_MAX = 255


class InputFileError(ValueError):
    """A path that cannot be read as the input it is meant to be; the message is one line."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path: str | os.PathLike, *, folder_ok: bool = False, what: str = "a file") -> Path:
    """`path` after checking, without opening it, that it is a regular file (or a folder, with
    `folder_ok`); symlinks are followed, so a link to a device is refused as the device is."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file or folder") from None
    except OSError as err:
        raise InputFileError(f"{path}: cannot read ({err.strerror or err})") from None
    if stat.S_ISDIR(info.st_mode):
        if folder_ok:
            return path
        raise InputFileError(f"{path}: is a folder, expected {what}")
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(f"{path}: is {_kind(info.st_mode)}, expected {what}; refusing to read it")
    return path


def file_size(path: str | os.PathLike) -> int:
    return os.stat(path).st_size


def read_bounded(path: str | os.PathLike, limit: int, *, what: str = "a file") -> bytes:
    """The bytes of a regular file no larger than `limit` (checked on its size before reading)."""
    path = check_regular(path, what=what)
    size = file_size(path)
    if size > limit:
        raise InputFileError(f"{path}: {size:,} bytes, too large for {what} (at most {limit:,})")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise InputFileError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(data) > limit:  # it grew meanwhile
        raise InputFileError(f"{path}: too large for {what} (at most {limit:,} bytes)")
    return data


def read_text_bounded(path: str | os.PathLike, limit: int, *, what: str = "a text file") -> str:
    data = read_bounded(path, limit, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not UTF-8 text, expected {what}") from None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name one file or folder: through symlinks, `..`, hard links and trailing
    slashes alike (a path that does not exist yet is compared by its resolved name)."""
    a_text, b_text = os.fspath(a).rstrip("/") or "/", os.fspath(b).rstrip("/") or "/"
    try:
        if os.path.exists(a_text) and os.path.exists(b_text):
            return os.path.samefile(a_text, b_text)
    except OSError:
        pass
    return os.path.realpath(a_text) == os.path.realpath(b_text)


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when `path`, resolved (symlinks, `..`), lies inside `folder`, resolved."""
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real != base and os.path.commonpath([real, base]) == base


def long_component(path: str | os.PathLike) -> str | None:
    """The first component of `path` longer than NAME_MAX bytes, or None."""
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            return part
    return None
