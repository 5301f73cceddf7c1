"""Where a `.dfc` file's clips live, so that neither reading nor writing holds a whole video's latents.

Reading: a clip keeps its small description (start, length, gaps, 8-bit scale/low) and a `StoredLatents`,
the place of its latents in the file; `clip.latents` decodes them from bounded reads of the open file
(never a map of it) each time it is asked, so a decoder walking the clips holds one batch at a time.
Writing: a `ClipSpool` encodes each clip as it comes and appends its tensors to an unnamed temporary
file beside the output (in memory without a folder); `dfc.container.write_container` then writes the
header and copies these bytes, hashing as it goes. The file layout is docs/FORMAT.md's, dfc/container.py
writes and checks it; this module only moves the clips' bytes.
"""

from __future__ import annotations

import io
import os
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dfc.errors import UserError
from dfc.latent_values import bf16_bits_to_float32, dequantize_u8, float32_to_bf16_bits, quantize_u8

CHUNK = 1 << 20  # bytes per read when hashing or copying: memory does not grow with the file
# how each latent dtype is stored: safetensors dtype code and numpy dtype of the stored values
STORED = {"bf16": ("BF16", np.dtype("<u2")), "f32": ("F32", np.dtype("<f4")), "u8": ("U8", np.dtype("u1"))}
DTYPES = {"BF16": np.dtype("<u2"), "F32": np.dtype("<f4"), "I32": np.dtype("<i4"), "U8": np.dtype("u1")}


class ContainerError(UserError):
    """A `.dfc` file that cannot be written or read as it is: one line saying what is wrong."""


# ------------------------------------------------------------------------------------------ byte sources


class FileBytes:
    """An open file read with bounded `pread`s. It keeps its own descriptor (closed when no clip needs
    it any more), so a clip decoded later reads the very file that was checked, even if renamed."""

    def __init__(self, fileno: int, size: int, name: str):
        self.fd, self.size, self.name = os.dup(fileno), size, name
        weakref.finalize(self, os.close, self.fd)

    def read(self, offset: int, length: int) -> bytes:
        parts = []
        while length > 0:
            part = os.pread(self.fd, min(length, 1 << 30), offset)
            if not part:
                raise ContainerError(f"{self.name}: the file became shorter while it was read")
            parts.append(part)
            offset, length = offset + len(part), length - len(part)
        return b"".join(parts)

    def chunks(self, begin: int, end: int) -> Iterator[bytes]:
        for offset in range(begin, end, CHUNK):
            yield self.read(offset, min(CHUNK, end - offset))


class MemoryBytes:
    """Bytes in memory (`decode_container`), or the in-memory spool of `encode_container`."""

    def __init__(self, data: bytes | bytearray | memoryview | io.BytesIO, name: str = "<bytes>"):
        self.data, self.name = data, name

    @property
    def size(self) -> int:
        return self.data.getbuffer().nbytes if isinstance(self.data, io.BytesIO) else len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        if isinstance(self.data, io.BytesIO):
            with self.data.getbuffer() as view:  # released at once: the spool may grow again
                return bytes(view[offset : offset + length])
        return bytes(memoryview(self.data)[offset : offset + length])

    def chunks(self, begin: int, end: int) -> Iterator[bytes]:
        for offset in range(begin, end, CHUNK):
            yield self.read(offset, min(CHUNK, end - offset))


Source = FileBytes | MemoryBytes


# ------------------------------------------------------------------------------------------------ clips


def check_latent_values(where: str, latents: np.ndarray) -> None:
    if not np.isfinite(latents).all():
        raise ContainerError(f"{where}: latents contain NaN or infinity")


@dataclass(frozen=True)
class StoredLatents:
    """One clip's latents where a file (or spool) holds them: `shape` (K, hw, L) float32 once decoded.
    `begin`/`end`: the byte range of the stored tensor (plain values, or one zstd frame when `coding`
    says so); `scale`/`low`: the 8-bit tensors, small and checked when the file was read."""

    source: Any  # Source
    shape: tuple[int, int, int]
    latent_dtype: str
    coding: str
    begin: int
    end: int
    scale: np.ndarray | None = None
    low: np.ndarray | None = None
    prefix: str = ""  # what an error line starts with: "FILE: damaged or not a .dfc file: "
    where: str = ""  # "clip 3 (frames 96..127)"
    tensor: str = ""  # "clip.00003.latents"

    def stored(self) -> np.ndarray:
        """The stored values `(K, hw, L)`: bf16 bit patterns, float32 or 8-bit codes."""
        wanted = STORED[self.latent_dtype][1]
        data = self.source.read(self.begin, self.end - self.begin)
        if self.coding == "none":
            return np.frombuffer(data, wanted).reshape(self.shape)
        from dfc import entropy

        try:
            return entropy.decode(data, wanted, self.shape, self.coding)
        except entropy.EntropyError as err:
            raise ContainerError(f"{self.prefix}{self.tensor}.{self.coding}: {err}") from None

    def load(self) -> np.ndarray:
        """float32 latents `(K, hw, L)`, decoded now and owned by the caller (nothing is kept)."""
        stored = self.stored()
        if self.latent_dtype == "bf16":
            latents = bf16_bits_to_float32(stored)
        elif self.latent_dtype == "f32":
            latents = stored.astype(np.float32)
        else:
            latents = dequantize_u8(stored, self.scale, self.low)
        try:
            check_latent_values(self.where, latents)
        except ContainerError as err:
            raise ContainerError(f"{self.prefix}{err}") from None
        return latents


class ClipLatents:
    """One clip: frames `[start, start + num_frames)` of the video, the kept latents `(K, hw, L)` in
    time order and their gaps `(K,)` (gaps[0] = index of the first kept frame within the clip).

    `latents` is a float32 array held in memory (what an encoder makes), or, for a clip read from a file
    or spooled for writing, decoded from where it is stored each time it is read: read it once per use.
    """

    def __init__(self, start: int, num_frames: int, latents: np.ndarray | StoredLatents, gaps: np.ndarray):
        self.start, self.num_frames, self.gaps = start, num_frames, gaps
        self.latents = latents

    @property
    def latents(self) -> np.ndarray:
        held = self._latents
        return held.load() if isinstance(held, StoredLatents) else held

    @latents.setter
    def latents(self, value: np.ndarray | StoredLatents) -> None:
        self._latents = value

    @property
    def stored(self) -> StoredLatents | None:
        """Where the latents are stored, or None when they are held in memory."""
        return self._latents if isinstance(self._latents, StoredLatents) else None

    @property
    def latents_shape(self) -> tuple[int, ...]:
        return tuple(self._latents.shape)

    @property
    def stop(self) -> int:
        return self.start + self.num_frames

    @property
    def kept(self) -> int:
        return int(self.gaps.shape[0])

    def positions(self) -> np.ndarray:
        """Frame index (within the clip) of each kept latent."""
        return np.cumsum(self.gaps, dtype=np.int64)

    def __repr__(self) -> str:
        where = "stored" if self.stored is not None else "in memory"
        return f"ClipLatents(start={self.start}, num_frames={self.num_frames}, kept={self.kept}, {where})"


# ----------------------------------------------------------------------------------------------- writing


def clip_tensors(clip: ClipLatents, latent_dtype: str, coding: str) -> list[tuple[str, str, tuple, bytes]]:
    """(name within the clip, safetensors dtype, shape, little-endian bytes) of one clip's tensors, in
    the order they are written: gaps, [scale, low,] latents (coded: `latents.{coding}`, U8 bytes)."""
    latents = np.asarray(clip.latents, np.float32)
    tensors = [("gaps", "I32", clip.gaps.shape, clip.gaps.astype("<i4").tobytes())]
    if latent_dtype == "bf16":
        stored = float32_to_bf16_bits(latents).astype("<u2")
    elif latent_dtype == "f32":
        stored = latents.astype("<f4")
    else:
        stored, scale, low = quantize_u8(latents)
        tensors.append(("scale", "F32", scale.shape, scale.astype("<f4").tobytes()))
        tensors.append(("low", "F32", low.shape, low.astype("<f4").tobytes()))
    del latents
    if coding == "none":
        tensors.append(("latents", STORED[latent_dtype][0], stored.shape, stored.tobytes()))
    else:
        from dfc import entropy

        blob = entropy.encode(stored, coding)
        tensors.append((f"latents.{coding}", "U8", (len(blob),), blob))
    return tensors


class ClipSpool:
    """The data section of a `.dfc` being made, clip by clip (see the module docstring).

    `add(clip)` checks the clip's values, encodes it, appends its tensors and gives the clip back as a
    reader would get it: its latents now come from the spool, so the caller can drop the array.
    `tables[i]`: (name within the clip, dtype, shape, bytes) of clip i's tensors, in file order.
    """

    def __init__(self, latent_dtype: str = "bf16", latent_coding: str = "none", folder=None):
        self.latent_dtype, self.latent_coding = latent_dtype, latent_coding
        if folder is None:
            self._file: Any = io.BytesIO()
            self.source: Any = MemoryBytes(self._file, "<spool>")
        else:  # unnamed (O_TMPFILE where the system has it): nothing is left behind, even on a crash
            self._file = tempfile.TemporaryFile(dir=folder)
            self.source = FileBytes(self._file.fileno(), 0, "<spool>")
        self.tables: list[list[tuple[str, str, tuple, int]]] = []
        self.clips: list[ClipLatents] = []
        self.size = 0

    def add(self, clip: ClipLatents) -> ClipLatents:
        index = len(self.clips)
        where = f"clip {index} (frames {clip.start}..{clip.stop - 1})"
        latents = clip.latents
        check_latent_values(where, latents)
        held = ClipLatents(clip.start, clip.num_frames, latents, clip.gaps)
        del latents
        table, stored = [], {}
        for name, dtype, shape, data in clip_tensors(held, self.latent_dtype, self.latent_coding):
            stored[name.split(".")[0]] = (self.size, self.size + len(data), data)
            self._file.write(data)
            self.size += len(data)
            table.append((name, dtype, tuple(shape), len(data)))
        self._file.flush()  # read back with pread
        begin, end, _ = stored["latents"]
        scale = low = None
        if self.latent_dtype == "u8":
            scale = np.frombuffer(stored["scale"][2], "<f4").astype(np.float32)
            low = np.frombuffer(stored["low"][2], "<f4").astype(np.float32)
        place = StoredLatents(
            self.source, tuple(held.latents_shape), self.latent_dtype, self.latent_coding, begin, end,
            scale, low, "<spool>: ", where, f"clip.{index:05d}.latents",
        )  # fmt: skip
        spooled = ClipLatents(clip.start, clip.num_frames, place, np.array(clip.gaps, np.int32))
        self.tables.append(table)
        self.clips.append(spooled)
        return spooled

    def holds(self, clips: list[ClipLatents], latent_dtype: str, latent_coding: str) -> bool:
        """Whether `clips` are exactly the clips `add` gave back, in order, stored as asked."""
        return (
            (latent_dtype, latent_coding) == (self.latent_dtype, self.latent_coding)
            and len(clips) == len(self.clips)
            and all(a is b for a, b in zip(clips, self.clips))
        )

    def chunks(self) -> Iterator[bytes]:
        return self.source.chunks(0, self.size)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ClipSpool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
