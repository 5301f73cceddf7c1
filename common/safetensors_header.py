"""safetensors framing, the one home of it: 8 bytes little-endian header length N, then N bytes of JSON
padded with spaces to a multiple of 8, then the data. Writing (`frame`) and reading (`parse` from bytes in
memory, `read` from an open file) for every safetensors file the tools touch: converted weights
(`convert.safetensors_io`, `torch_impl.loading`) and `.dfc` containers (`dfc.container`); the tensor
table of a header, checked against the bytes the file holds (`tensor_table`); and the shard index
`model.safetensors.index.json` (`read_index`).

Reads are bounded: the 8-byte length first, checked against the file's real size and `MAX_HEADER_BYTES`
before the header is read or allocated; a declared shape is checked against the bytes the file holds
before anything is allocated for it. Each framing problem is a `HeaderError` with a `reason` (one of
`REASONS`) so that each format words it in its own terms; a bad tensor table is a `TableError`, a bad
index an `IndexFileError`, each one line. Needs the standard library only.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from common.files import InputFileError, check_regular, read_text_bounded

ALIGN = 8
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; a larger "header" is not a header
# JSON values a header may hold, bounded before it is parsed: 100 MB of `[0,0,...]` parse into 50 M
# values (600 MB); 2**21 keep any header under 400 MB of Python objects and still describe about
# 200,000 tensors (a .dfc of some 80,000 clips).
MAX_HEADER_VALUES = 2**21
REASONS = ("short", "length", "truncated", "json", "object", "values")
# Bytes per element of every dtype the safetensors format defines.
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
MAX_RANK = 64
INDEX_NAME = "model.safetensors.index.json"
MAX_INDEX_BYTES = 64 * 1024 * 1024


class HeaderError(ValueError):
    """`reason`: short (under 8 bytes), length (0 or above the limit), truncated (the header runs past the
    end of the file), json (not UTF-8 JSON), object (JSON, but not an object), values (more JSON values
    than `MAX_HEADER_VALUES`)."""

    def __init__(self, reason: str, length: int = 0, file_size: int = 0):
        super().__init__(f"{reason} (header length {length}, {file_size} bytes)")
        self.reason, self.length, self.file_size = reason, length, file_size


def value_bound(text: bytes | str) -> int:
    """At least the number of JSON values `text` holds (every value after a container's first follows a
    comma, and every container opens with a bracket), counted without parsing it."""
    marks = (",", "[", "{") if isinstance(text, str) else (b",", b"[", b"{")
    return sum(text.count(mark) for mark in marks) + 1


def frame(header: dict[str, Any]) -> bytes:
    """The 8-byte length plus the compact JSON `header`, padded so that the data is 8-byte aligned.
    A header that readers would refuse (`MAX_HEADER_BYTES`, `MAX_HEADER_VALUES`) is a `ValueError`."""
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > MAX_HEADER_BYTES or value_bound(text) > MAX_HEADER_VALUES:
        raise ValueError(
            f"the header would hold {len(text):,} bytes and up to {value_bound(text):,} JSON values; "
            f"readers take at most {MAX_HEADER_BYTES:,} bytes and {MAX_HEADER_VALUES:,} values"
        )
    text += b" " * (-len(text) % ALIGN)
    return struct.pack("<Q", len(text)) + text


def _length(prefix: bytes, file_size: int) -> int:
    if len(prefix) < 8:
        raise HeaderError("short", 0, file_size)
    (length,) = struct.unpack("<Q", prefix[:8])
    if not 0 < length <= MAX_HEADER_BYTES:
        raise HeaderError("length", length, file_size)
    if 8 + length > file_size:
        raise HeaderError("truncated", length, file_size)
    return length


def _decode(raw: bytes, length: int, file_size: int) -> dict[str, Any]:
    if value_bound(raw) > MAX_HEADER_VALUES:
        raise HeaderError("values", length, file_size)
    try:
        text = raw.decode("utf-8")
        del raw  # the caller passed its only reference: the bytes go before the parse, 100 MB less at worst
        header = json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HeaderError("json", length, file_size) from None
    if not isinstance(header, dict):
        raise HeaderError("object", length, file_size)
    return header


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse(data: bytes | memoryview) -> tuple[dict[str, Any], int]:
    """(the header, where the data starts) of a whole file held in memory."""
    length = _length(bytes(data[:8]), len(data))
    return _decode(bytes(data[8 : 8 + length]), length, len(data)), 8 + length


def read(f: BinaryIO, file_size: int) -> tuple[dict[str, Any], int]:
    """(the header, where the data starts) of an open file of `file_size` bytes, read from its start:
    never more than the 8-byte length and the header it announces, once checked."""
    f.seek(0)
    length = _length(f.read(8), file_size)
    return _decode(_read_exactly(f, length, file_size), length, file_size), 8 + length


def _read_exactly(f: BinaryIO, length: int, file_size: int) -> bytes:
    raw = f.read(length)
    if len(raw) != length:  # the file shrank meanwhile
        raise HeaderError("truncated", length, file_size)
    return raw


# ------------------------------------------------------------------------------------------ tensor table


class TableError(ValueError):
    """A header whose tensor table does not describe the file's data; one line naming the tensor."""


@dataclass(frozen=True)
class Entry:
    """One tensor of a header: its dtype code, shape and byte range relative to the data start."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _counts(value: Any, length: int | None = None, max_length: int | None = None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and (max_length is None or len(value) <= max_length)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)
    )


def tensor_table(header: dict[str, Any], data_size: int, dtypes=DTYPE_SIZES) -> dict[str, Entry]:
    """The tensors of a parsed header, checked against the `data_size` bytes after it: every dtype
    known (one of `dtypes`), every shape a list of counts whose bytes are exactly its data range,
    the ranges laid end to end from 0 to `data_size` (no overlap, no gap, no missing byte).
    `__metadata__`, when there, must map text to text. Pure arithmetic: nothing is allocated."""
    metadata = header.get("__metadata__")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise TableError("__metadata__ must map names to text")
    entries = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        label = repr(name[:80] + ("..." if len(name) > 80 else ""))
        if not isinstance(spec, dict):
            raise TableError(f"tensor {label} is not described by an object")
        dtype = spec.get("dtype")
        if not (isinstance(dtype, str) and dtype in dtypes):
            raise TableError(f"tensor {label} has an unknown dtype {str(dtype)[:20]!r}")
        shape, offsets = spec.get("shape"), spec.get("data_offsets")
        if not _counts(shape, max_length=MAX_RANK):
            raise TableError(f"tensor {label} has a bad shape {str(shape)[:60]}")
        if not (_counts(offsets, 2) and offsets[0] <= offsets[1]):
            raise TableError(f"tensor {label} has bad data offsets {str(offsets)[:60]}")
        nbytes = math.prod(shape) * dtypes[dtype]
        if offsets[1] > data_size or nbytes > data_size:
            raise TableError(
                f"tensor {label} ({dtype} {list(shape)}, {nbytes:,} bytes) lies past the end of the data "
                f"({data_size:,} bytes): the file is truncated or the header is wrong"
            )
        if offsets[1] - offsets[0] != nbytes:
            raise TableError(
                f"tensor {label}: {dtype} {list(shape)} needs {nbytes:,} bytes, its data range holds "
                f"{offsets[1] - offsets[0]:,}"
            )
        entries.append(Entry(name, dtype, tuple(shape), offsets[0], offsets[1]))
    entries.sort(key=lambda e: (e.begin, e.end))
    position = 0
    for entry in entries:
        if entry.begin < position:
            raise TableError(f"tensor {entry.name[:80]!r} overlaps the tensor before it")
        if entry.begin > position:
            raise TableError(f"{entry.begin - position:,} bytes of no tensor before {entry.name[:80]!r}")
        position = entry.end
    if position != data_size:
        raise TableError(f"{data_size - position:,} bytes after the last tensor belong to no tensor")
    return {entry.name: entry for entry in entries}


def read_table(path: str | os.PathLike) -> tuple[dict[str, Entry], dict[str, str], int]:
    """(tensors, metadata, where the data starts) of a safetensors file, every check above made with
    bounded reads. Errors: `InputFileError` (not a regular file), `HeaderError`, `TableError`."""
    path = check_regular(path, what="a .safetensors file")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header, data_start = read(f, size)
    table = tensor_table(header, size - data_start)
    return table, dict(header.get("__metadata__") or {}), data_start


def describe(err: HeaderError) -> str:
    """A framing problem in words, for a file that should be safetensors."""
    return {
        "short": "too short to be a safetensors file",
        "length": f"no safetensors header (the first 8 bytes announce {err.length:,} bytes of header)",
        "truncated": f"truncated: the header needs {8 + err.length:,} bytes, the file has {err.file_size:,}",
        "json": "its header is not JSON",
        "object": "its header is not a JSON object",
        "values": f"its header holds more than {MAX_HEADER_VALUES:,} JSON values, more than any header needs",
    }[err.reason]


# ----------------------------------------------------------------------------------------------- index


class IndexFileError(ValueError):
    """A `model.safetensors.index.json` that cannot be used; one line naming the file. `missing`: a
    shard it names is not there (the index itself may be fine)."""

    missing = False


def read_index(folder: str | os.PathLike, name: str = INDEX_NAME) -> tuple[dict[str, str], list[Path]]:
    """(weight_map, shard files in order of first mention) of a folder's shard index.

    The index must be a JSON object whose `weight_map` maps tensor names to shard file names; each
    shard must resolve inside `folder` (no absolute path, no `..`, no symlink out of it) and be a
    regular file there.
    """
    folder = Path(folder)
    path = folder / name
    try:
        text = read_text_bounded(path, MAX_INDEX_BYTES, what="a safetensors index")
    except InputFileError as err:
        raise IndexFileError(str(err)) from None
    if value_bound(text) > MAX_HEADER_VALUES:  # an index names each tensor once, as a header does
        raise IndexFileError(f"{path}: more than {MAX_HEADER_VALUES:,} JSON values, more than an index needs")
    try:
        index = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise IndexFileError(f"{path}: not JSON") from None
    if not isinstance(index, dict) or "weight_map" not in index:
        raise IndexFileError(f"{path}: no 'weight_map' (not a safetensors index)")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict) or not weight_map:
        raise IndexFileError(f"{path}: 'weight_map' must be a non-empty object of tensor name -> file name")
    bad = next((k for k, v in weight_map.items() if not isinstance(v, str) or not v), None)
    if bad is not None:
        raise IndexFileError(
            f"{path}: 'weight_map' value of {bad[:80]!r} is {str(weight_map[bad])[:40]!r}, "
            "expected a file name"
        )
    shards = []
    for shard in dict.fromkeys(weight_map.values()):
        target = folder / shard
        if os.path.isabs(shard) or ".." in Path(shard).parts or not _inside(target, folder):
            raise IndexFileError(
                f"{path}: shard {shard[:80]!r} lies outside the weights folder; shards must be files in it"
            )
        if not target.exists():
            error = IndexFileError(f"{path}: the shard {shard[:80]!r} named in the index is missing")
            error.missing = True
            raise error
        try:
            check_regular(target, what="a .safetensors shard")
        except InputFileError as err:
            raise IndexFileError(f"{path}: shard named in the index: {err}") from None
        shards.append(target)
    return dict(weight_map), shards


def _inside(path: Path, folder: Path) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real != base and os.path.commonpath([real, base]) == base


def check_index_coverage(
    index_path: str | os.PathLike, weight_map: dict[str, str], held: dict[str, set[str]]
) -> None:
    """Every tensor the index lists is in the shard it names (`held`: shard name -> tensor names),
    and every tensor of a shard is listed for it."""
    listed_missing = [k for k, shard in weight_map.items() if k not in held.get(shard, set())]
    if listed_missing:
        raise IndexFileError(
            f"{index_path}: {len(listed_missing)} tensor(s) listed in the index are in no shard that it "
            f"names: {preview(sorted(listed_missing))}"
        )
    unlisted = sorted(k for shard, names in held.items() for k in names if weight_map.get(k) != shard)
    if unlisted:
        raise IndexFileError(
            f"{index_path}: {len(unlisted)} tensor(s) in the shards are not listed for them in the "
            f"index: {preview(unlisted)}"
        )


def preview(names: list[str], first: int = 5) -> str:
    """The first few names, then how many more: a list that stays one readable line."""
    shown = ", ".join(n[:80] for n in names[:first])
    return shown + (f" and {len(names) - first} more" if len(names) > first else "")
