"""Which videos a command line names: a folder of videos, a glob, or a manifest (text or JSONL).

A folder of image frames is one video, not many: it goes the single-video way. Every video gets an
output name: its path relative to the folder (or to the common folder of a glob's or manifest's files),
without the suffix; two videos with the same name are refused before anything runs.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

from dfc.errors import UserError
from dfc.evaluation import VIDEO_SUFFIXES, find_videos

MANIFEST_SUFFIXES = (".txt", ".jsonl", ".list")
MAX_MANIFEST_BYTES = 64 * 2**20  # a million videos' paths; read whole, so bounded first
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Task:
    id: int  # position in the input list: the order of the tables
    input: str  # absolute path
    name: str  # output name, relative, without suffix

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "input": self.input, "name": self.name})

    @classmethod
    def from_json(cls, text: str | bytes) -> Task:
        return cls(**json.loads(text))


def names_many(spec: str | os.PathLike) -> bool:
    """Does `spec` name many videos (a folder of videos, a glob, a manifest) rather than one?"""
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir():
        return bool(find_videos(path))
    if path.is_file():
        return path.suffix.lower() in MANIFEST_SUFFIXES
    return any(c in text for c in _GLOB_CHARS)


def resolve(spec: str | os.PathLike) -> list[Task]:
    """The videos `spec` names, in order (sorted for a folder or glob, as listed for a manifest)."""
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir():
        files = find_videos(path)
        if not files:
            raise UserError(f"{path}: no videos in this folder ({' '.join(VIDEO_SUFFIXES)})")
        root = path
    elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        files = _manifest(path)
        root = None
    elif path.is_file():
        files, root = [path], path.parent
    elif any(c in text for c in _GLOB_CHARS):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"{text}: the pattern matches no files")
        root = None
    else:
        raise UserError(f"{path}: no such file or folder")
    files = [Path(os.path.abspath(f)) for f in dict.fromkeys(files)]
    if root is None:
        root = Path(os.path.commonpath([f.parent for f in files]))
    return _named(files, Path(os.path.abspath(root)))


def _named(files: list[Path], root: Path) -> list[Task]:
    tasks, seen = [], {}
    for index, file in enumerate(files):
        name = file.relative_to(root).with_suffix("").as_posix()
        if name in seen:
            raise UserError(f"{seen[name]} and {file} would write the same outputs ({name}); rename one")
        seen[name] = file
        tasks.append(Task(index, str(file), name))
    return tasks


def _manifest(path: Path) -> list[Path]:
    """One path per line (`#` comments and blank lines skipped), or JSONL: a string or {"path": ...} per
    line. Relative paths are relative to the manifest's folder. Missing files are kept: each is recorded
    as a failed video, like any other bad one."""
    from common.files import InputFileError, read_text_bounded

    try:
        lines = read_text_bounded(path, MAX_MANIFEST_BYTES, what="a manifest of videos").splitlines()
    except InputFileError as err:
        raise UserError(str(err)) from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the manifest ({err.strerror or err})") from None
    jsonl = path.suffix.lower() == ".jsonl"
    files = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = line
        if jsonl:
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):
                raise UserError(f"{path}: line {number} is not JSON") from None
            if isinstance(entry, dict):
                entry = entry.get("path")
            if not isinstance(entry, str) or not entry:
                raise UserError(f'{path}: line {number} has no "path"')
        files.append(path.parent / Path(entry).expanduser())
    if not files:
        raise UserError(f"{path}: the manifest lists no videos")
    return files
