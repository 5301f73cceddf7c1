"""Atomic output: write to a hidden temporary sibling, rename it into place only when everything worked.

The one helper for every file or directory the tools write (`.dfc` containers, videos, frame folders,
converted checkpoints). The sibling lives in the same folder, so the final rename never crosses file
systems; it is hidden, so a half-written output is never mistaken for a result; on any failure it is
removed, so a failed run leaves nothing, and an existing output is never half-replaced.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

_SIBLING = re.compile(r"\.(.+)\.dfc-[a-z]+-\d+-[0-9a-f]{8}")


def temporary_sibling(path: Path, what: str = "tmp") -> Path:
    """A hidden, unique name beside `path`: `.NAME.dfc-tmp-PID-RANDOM`."""
    return path.with_name(f".{path.name}.dfc-{what}-{os.getpid()}-{secrets.token_hex(4)}")


def output_of(path: str | os.PathLike) -> Path:
    """The output a temporary sibling stands for (`.NAME.dfc-tmp-PID-RANDOM` -> `NAME`); any other path
    unchanged. Error messages name the file the user asked for, not our scaffolding."""
    path = Path(path)
    match = _SIBLING.fullmatch(path.name)
    return path.with_name(match.group(1)) if match else path


def remove(path: Path) -> None:
    """Remove a file, a link or a directory tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def sync_dir(path: Path) -> None:
    """fsync a directory's entries (best effort: some file systems refuse it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class StagedOutput:
    """A temporary sibling of `dst` (a file, or a directory when `is_dir`) that becomes `dst` on
    `commit`, and vanishes otherwise (`discard`, or leaving the `with` block by an exception).

    `replace=False` refuses to replace a `dst` that appeared meanwhile (`FileExistsError`); a replaced
    directory is moved aside first, then removed. `sync` fsyncs the entries after the rename.
    """

    def __init__(self, dst: str | os.PathLike, *, is_dir: bool = False, replace: bool = True, sync=False):
        self.dst, self.replace, self.sync = Path(dst), replace, sync
        self.tmp = temporary_sibling(self.dst)
        if is_dir:
            self.tmp.mkdir()

    def commit(self) -> None:
        old = None
        if self.dst.exists() or self.dst.is_symlink():
            if not self.replace:
                raise FileExistsError(f"{self.dst} appeared meanwhile")
            if self.tmp.is_dir() or (self.dst.is_dir() and not self.dst.is_symlink()):
                # a rename replaces a file with a file in one step, but never a directory, nor by one
                old = temporary_sibling(self.dst, "old")
                os.replace(self.dst, old)
        os.replace(self.tmp, self.dst)
        if old is not None:
            remove(old)
        if self.sync:  # the entries: the files inside a directory output, and the rename
            if self.dst.is_dir():
                sync_dir(self.dst)
            sync_dir(self.dst.parent)

    def discard(self) -> None:
        remove(self.tmp)

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it becomes `path`, on any failure it vanishes."""
    staged = StagedOutput(path, is_dir=is_dir)
    try:
        yield staged.tmp
        staged.commit()
    finally:
        staged.discard()
