"""safetensors framing, the one home of it: 8 bytes little-endian header length N, then N bytes of JSON
padded with spaces to a multiple of 8, then the data. Writing (`frame`) and reading (`parse` from bytes in
memory, `read` from an open file) for every safetensors file the tools touch: converted weights
(`convert.safetensors_io`) and `.dfc` containers (`dfc.container`).

Reads are bounded: the 8-byte length first, checked against the file's real size and `MAX_HEADER_BYTES`
before the header is read or allocated. Each problem is a `HeaderError` with a `reason` (one of
`REASONS`) so that each format words it in its own terms. Needs the standard library only.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

ALIGN = 8
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; a larger "header" is not a header
REASONS = ("short", "length", "truncated", "json", "object")


class HeaderError(ValueError):
    """`reason`: short (under 8 bytes), length (0 or above the limit), truncated (the header runs past the
    end of the file), json (not UTF-8 JSON), object (JSON, but not an object)."""

    def __init__(self, reason: str, length: int = 0, file_size: int = 0):
        super().__init__(f"{reason} (header length {length}, {file_size} bytes)")
        self.reason, self.length, self.file_size = reason, length, file_size


def frame(header: dict[str, Any]) -> bytes:
    """The 8-byte length plus the compact JSON `header`, padded so that the data is 8-byte aligned."""
    text = json.dumps(header, separators=(",", ":")).encode()
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
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HeaderError("json", length, file_size) from None
    if not isinstance(header, dict):
        raise HeaderError("object", length, file_size)
    return header


def parse(data: bytes | memoryview) -> tuple[dict[str, Any], int]:
    """(the header, where the data starts) of a whole file held in memory."""
    length = _length(bytes(data[:8]), len(data))
    return _decode(bytes(data[8 : 8 + length]), length, len(data)), 8 + length


def read(f: BinaryIO, file_size: int) -> tuple[dict[str, Any], int]:
    """(the header, where the data starts) of an open file of `file_size` bytes, read from its start:
    never more than the 8-byte length and the header it announces, once checked."""
    f.seek(0)
    length = _length(f.read(8), file_size)
    raw = f.read(length)
    if len(raw) != length:  # the file shrank meanwhile
        raise HeaderError("truncated", length, file_size)
    return _decode(raw, length, file_size), 8 + length
