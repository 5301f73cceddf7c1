"""Which local weights made which `.dfc` files: a small map, weights identity -> path, in the user's
cache folder (`dfc.cache`), written by `dfc compress` and read by `dfc decompress`.

A `.dfc` file also carries the path of the weights it was made with, but a file can come from anyone:
`decompress` never opens weights at a path read from the file. It opens the weights the user passes
(`--weights`), else the ones this record names for the file's weights identity (a record the user's
own `compress` made), else the published repo; the path inside the file is only a hint in messages.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.atomic import atomic_output
from dfc.cache import cache_dir

RECORD_NAME = "weights.json"
MAX_RECORD_BYTES = 4 * 1024 * 1024
MAX_ENTRIES = 1000


def record_path() -> Path:
    return cache_dir() / RECORD_NAME


def _read() -> dict[str, str]:
    from common.files import InputFileError, read_text_bounded

    path = record_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(read_text_bounded(path, MAX_RECORD_BYTES, what="the weights record"))
    except (InputFileError, ValueError, RecursionError):
        return {}  # a damaged record is forgotten, never trusted
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def lookup(identity: str) -> str | None:
    """The local weights path recorded for `identity`, if it still exists."""
    path = _read().get(identity)
    return path if path is not None and Path(path).exists() else None


def remember(identity: str, source: str) -> None:
    """Record that local weights at `source` have `identity` (best effort: a cache, never an error)."""
    if not Path(source).exists():
        return  # a hub repo id needs no record
    entries = _read()
    entries.pop(identity, None)
    entries[identity] = str(Path(source).absolute())
    entries = dict(list(entries.items())[-MAX_ENTRIES:])
    try:
        record_path().parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(record_path()) as tmp:
            tmp.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    except OSError:
        pass
