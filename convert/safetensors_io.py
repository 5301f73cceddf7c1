"""safetensors written as a stream: the header first (shapes are known up front), then each tensor's bytes.

File format (https://huggingface.co/docs/safetensors): 8 bytes little-endian header length N, N bytes of
JSON `{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}` padded with
spaces to a multiple of 8, then the tensors back to back with no gaps. Above `max_shard_bytes` the tensors
are split over `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`, as Hugging Face
does. Reading maps the file (no copy), with bfloat16 through ml_dtypes, which numpy lacks.
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from common import safetensors_header as framing
from common.files import InputFileError
from convert.blas_transpose import transpose_into

SINGLE_FILE = "model.safetensors"
INDEX_FILE = framing.INDEX_NAME
CONFIG_FILE = "config.json"
# Hugging Face's default largest shard (huggingface_hub `max_shard_size="5GB"`): the full DiT in fp32
# (2.0 GB) stays one file, like the published weights.
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9

_CODES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}
_DTYPES = {code: dtype for dtype, code in _CODES.items()}


class SafetensorsError(Exception):
    """A safetensors file that is not one, or does not hold what it says; the message names the file."""


def dtype_code(dtype: np.dtype) -> str:
    try:
        return _CODES[np.dtype(dtype)]
    except KeyError:
        raise SafetensorsError(f"dtype {dtype} has no safetensors code") from None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def encode_header(specs: Sequence[TensorSpec], metadata: Mapping[str, str] | None) -> bytes:
    """The 8-byte length plus the padded JSON header for `specs` laid out in order."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for spec in specs:
        if spec.name in header:
            raise SafetensorsError(f"tensor {spec.name!r} listed twice")
        header[spec.name] = {
            "dtype": dtype_code(spec.dtype),
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    return framing.frame(header)


def copy_into(dst: np.ndarray, src: np.ndarray, block_bytes: int = 1 << 18) -> None:
    """`dst[...] = src` (with a cast), in blocks that keep both sides in cache.

    `src` is often a transposed view; copied whole, numpy walks one side with a large stride and misses
    the cache at every element. A transposed float32 matrix (a Linear kernel) goes through OpenBLAS
    (`blas_transpose`, about 5 GB/s) when numpy's bundled one is there and the matrix holds no NaN;
    otherwise in tiles of 1024 rows by 16 columns, measured two to five times faster than numpy's own
    transposing copy on this project's machines. Anything else goes in slabs of a few hundred kB along
    the first axis.
    """
    if dst.ndim == 0 or dst.shape[0] <= 1 or src.flags.c_contiguous:
        np.copyto(dst, src, casting="unsafe")
        return
    if src.ndim == 2 and src.strides[0] == src.itemsize:  # column-major: a transposed C array
        if not transpose_into(dst, src):
            _copy_tiles(dst, src)
        return
    row_bytes = max(1, dst[0].nbytes)
    step = max(1, block_bytes // row_bytes)
    for i in range(0, dst.shape[0], step):
        np.copyto(dst[i : i + step], src[i : i + step], casting="unsafe")


def _copy_tiles(dst: np.ndarray, src: np.ndarray, rows: int = 1024, columns: int = 16) -> None:
    for j in range(0, dst.shape[1], columns):
        for i in range(0, dst.shape[0], rows):
            tile = (slice(i, i + rows), slice(j, j + columns))
            np.copyto(dst[tile], src[tile], casting="unsafe")


class StreamingWriter:
    """One safetensors file: the header goes out on open, then `write` each tensor in the order of `specs`.

    The file is allocated at its final size up front (`posix_fallocate`), so a full disk fails before
    any tensor is written. A tensor that needs a new layout or dtype is laid out in one reusable buffer
    and written with `pwrite`; mapping the output file instead was measured slower on ext4 (every first
    write to an allocated page converts an extent) and counts the whole file as resident memory.
    Written data goes on to the disk while later tensors are converted (`_WriteThrough`).

    The caller re-reads and checks each tensor before writing the next: from then on the writer may send
    it to the disk and drop it from the page cache.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        specs: Sequence[TensorSpec],
        metadata: Mapping[str, str] | None,
        sync: bool = False,
    ):
        self.path = Path(path)
        self.specs = list(specs)
        self.sync = sync
        header = encode_header(self.specs, metadata)
        self.data_start = len(header)
        self._offsets = {}
        offset = self.data_start
        for spec in self.specs:
            self._offsets[spec.name] = offset
            offset += spec.nbytes
        self.size = offset
        self._next = 0
        self._buffer = np.empty(0, np.uint8)
        # Exclusive create: a writer never replaces a file; the caller picks a fresh temporary name.
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._through = _WriteThrough(self._fd)
        try:
            _allocate(self._fd, self.size)
            _write_all(self._fd, memoryview(header), 0)
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, array: np.ndarray) -> np.ndarray:
        """Write `array` (any strides; cast to the planned dtype) as the next tensor; returns the
        C-contiguous array whose bytes went to the file (valid until the next `write`)."""
        if self._next >= len(self.specs):
            raise SafetensorsError(f"{self.path.name}: {name!r} is one tensor too many")
        spec = self.specs[self._next]
        if name != spec.name or tuple(array.shape) != spec.shape:
            raise SafetensorsError(
                f"{self.path.name}: expected {spec.name} {list(spec.shape)} next, "
                f"got {name} {list(array.shape)}"
            )
        offset = self._offsets[name]
        self._through.checked_up_to(offset)
        if array.dtype == spec.dtype and array.flags.c_contiguous:
            laid_out = array
        else:
            if self._buffer.size < spec.nbytes:
                self._buffer = np.empty(spec.nbytes, np.uint8)
            laid_out = self._buffer[: spec.nbytes].view(spec.dtype).reshape(spec.shape)
            copy_into(laid_out, array)
        # Through uint8: memoryview does not know bfloat16.
        _write_all(self._fd, memoryview(laid_out.reshape(-1).view(np.uint8)), offset)
        self._next += 1
        return laid_out

    @property
    def complete(self) -> bool:
        return self._next == len(self.specs)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the file (synced to disk first if asked) and check its size."""
        try:
            if self._fd >= 0:
                self._through.finish(self.size)
                if self.sync:
                    os.fsync(self._fd)
        finally:
            self.abort()
        if self.path.stat().st_size != self.size:
            raise SafetensorsError(
                f"{self.path.name}: {self.path.stat().st_size} bytes on disk, expected {self.size}"
            )

    def abort(self) -> None:
        """Close without syncing (the caller removes the file)."""
        self._buffer = np.empty(0, np.uint8)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _WriteThrough:
    """Sends a file's written bytes to the disk while it grows, and drops them from the page cache once
    they are there and checked, keeping the last `KEEP` bytes. Linux only; elsewhere it does nothing.

    Why: left to the kernel, a 2 GB output becomes 2 GB of new page cache. On a virtual machine whose
    free memory goes back to the host (a memory balloon, as on this project's CI machines), each new page
    costs a fault on the host: writing 2 GB into a fresh page cache took 3 to 7 s of CPU there, against
    1 s when the same few dozen megabytes of cache are reused. On any machine it keeps a multi-gigabyte
    output from pushing other files out of the cache, and leaves no gigabytes of writeback for later.
    The writer waits only when the disk falls more than `KEEP` behind it: on a disk slower than the
    conversion, the conversion goes at the disk's speed, and ends with the data on the disk.
    """

    # Small: the first CHUNK + KEEP bytes are new page cache, everything after reuses them. Measured
    # writing 2 GB here: 16 + 64 MB cost 0.8 s of CPU, 8 + 16 MB 0.55 s; the disk kept up with both.
    CHUNK = 8 << 20  # writeback is started per chunk: larger requests, fewer calls
    KEEP = 16 << 20

    def __init__(self, fd: int):
        self.fd = fd
        self.started = 0  # writeback started for [0, started)
        self.dropped = 0  # on disk and out of the page cache: [0, dropped)
        self.enabled = _sync_file_range is not None

    def checked_up_to(self, offset: int) -> None:
        """Everything before `offset` is written and checked."""
        if not self.enabled or offset - self.started < self.CHUNK:
            return
        if not self._sync(self.started, offset - self.started, _SYNC_WRITE):
            return
        self.started = offset
        while self.started - self.KEEP - self.dropped >= self.CHUNK:
            if not self._sync(self.dropped, self.CHUNK, _SYNC_ON_DISK):
                return
            os.posix_fadvise(self.fd, self.dropped, self.CHUNK, os.POSIX_FADV_DONTNEED)
            self.dropped += self.CHUNK

    def finish(self, size: int) -> None:
        """Start writeback of the rest (kept in the page cache: the caller may still re-read it)."""
        if self.enabled and size > self.started:
            if self._sync(self.started, size - self.started, _SYNC_WRITE):
                self.started = size

    def _sync(self, offset: int, nbytes: int, flags: int) -> bool:
        """False, and off from now on, where the file system cannot do it (the kernel writes back as
        usual then); a failed write (EIO, ENOSPC) is raised."""
        try:
            _sync_file_range(self.fd, offset, nbytes, flags)
            return True
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ESPIPE):
                raise
            self.enabled = False
            return False


_SYNC_WAIT_BEFORE, _SYNC_WRITE, _SYNC_WAIT_AFTER = 1, 2, 4  # <linux/fs.h> SYNC_FILE_RANGE_*
_SYNC_ON_DISK = _SYNC_WAIT_BEFORE | _SYNC_WRITE | _SYNC_WAIT_AFTER


def _libc_sync_file_range():
    """`sync_file_range(2)` (which the os module lacks) as a function raising OSError, or None."""
    if not sys.platform.startswith("linux") or not hasattr(os, "posix_fadvise"):
        return None
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def sync_file_range(fd: int, offset: int, nbytes: int, flags: int) -> None:
        if function(fd, offset, nbytes, flags) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return sync_file_range


_sync_file_range = _libc_sync_file_range()


def _allocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate
            os.ftruncate(fd, size)
        else:
            raise


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    while view:  # a write may be short
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive runs of tensors of at most `max_shard_bytes` (a larger tensor gets a shard of its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards if shards[0] else []


def shard_names(count: int) -> list[str]:
    if count <= 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class ShardedWriter:
    """Tensors written in order into one file or several shards of a directory, plus the shard index.

    With `single_file`, everything goes into that one file whatever its size (the user asked for a file).
    """

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        metadata: Mapping[str, str],
        directory: str | os.PathLike | None = None,
        single_file: str | os.PathLike | None = None,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        sync: bool = False,
    ):
        if (directory is None) == (single_file is None):
            raise ValueError("give exactly one of directory and single_file")
        self.metadata = dict(metadata)
        self.sync = sync
        if single_file is not None:
            self.shards = [list(specs)]
            self.paths = [Path(single_file)]
            self.index_path = None
        else:
            self.shards = plan_shards(specs, max_shard_bytes) or [[]]
            names = shard_names(len(self.shards))
            self.paths = [Path(directory) / name for name in names]
            self.index_path = Path(directory) / INDEX_FILE if len(self.shards) > 1 else None
        self._shard_of = {spec.name: i for i, shard in enumerate(self.shards) for spec in shard}
        self._writers: list[StreamingWriter | None] = [None] * len(self.shards)
        self._headers: dict[int, dict[str, StoredTensor]] = {}
        self._readers: dict[int, int] = {}  # shard -> read-only descriptor for `re_read`
        self._current = -1
        self._open_next()

    def _open_next(self) -> None:
        if self._current >= 0:
            self._writers[self._current].close()
        self._current += 1
        if self._current < len(self.shards):
            self._writers[self._current] = StreamingWriter(
                self.paths[self._current], self.shards[self._current], self.metadata, sync=self.sync
            )

    def write(self, name: str, array: np.ndarray) -> np.ndarray:
        # The next shard opens only when its first tensor comes, so that the last tensor of the previous
        # one can still be re-read from its open file.
        if self._writers[self._current].complete and self._current < len(self.shards) - 1:
            self._open_next()
        return self._writers[self._current].write(name, array)

    def re_read(self, name: str) -> np.ndarray:
        """A written tensor as the file holds it, mapped read-only at the offsets found by parsing the
        header on disk afresh (so a wrong offset or header cannot check itself). Mapping shares the page
        cache instead of copying; drop the array when done, and the mapping goes with it."""
        shard = self._shard_of[name]
        if shard not in self._headers:
            self._headers[shard] = read_header(self.paths[shard])[0]
            self._readers[shard] = os.open(self.paths[shard], os.O_RDONLY)
        stored = self._headers[shard][name]
        if stored.nbytes == 0:
            return np.empty(stored.shape, stored.dtype)
        # mmap on a kept descriptor, not np.memmap: that reopens the file, 120 us a tensor.
        start = stored.begin - stored.begin % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(
            self._readers[shard], stored.begin + stored.nbytes - start, prot=mmap.PROT_READ, offset=start
        )
        flat = np.frombuffer(mapped, np.uint8, stored.nbytes, stored.begin - start)
        return flat.view(stored.dtype).reshape(stored.shape)

    def _forget_readers(self) -> None:
        self._headers.clear()
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()

    def close(self) -> list[Path]:
        """Sync and close every shard, write the index; returns every file written."""
        unfinished = [w for w in self._writers if w is None or not w.complete]
        self._forget_readers()
        for writer in self._writers:
            if writer is not None and not writer.closed:
                writer.close()
        if unfinished:
            raise SafetensorsError(f"{len(unfinished)} shard(s) not completely written")
        files = list(self.paths)
        if self.index_path is not None:
            total = sum(spec.nbytes for shard in self.shards for spec in shard)
            index = {
                "metadata": {"total_size": total, **self.metadata},
                "weight_map": {name: self.paths[i].name for name, i in sorted(self._shard_of.items())},
            }
            write_text(self.index_path, json.dumps(index, indent=2) + "\n", sync=self.sync)
            files.append(self.index_path)
        return files

    def abort(self) -> None:
        self._forget_readers()
        for writer in self._writers:
            if writer is not None:
                writer.abort()


def write_text(path: Path, text: str, sync: bool = False) -> None:
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)
        if sync:
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class StoredTensor:
    name: str
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: str | os.PathLike) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """Tensors and `__metadata__` of one file, checked with bounded reads (`common.safetensors_header`):
    every dtype known, every shape's bytes its data range, the ranges tiling the data exactly."""
    path = Path(path)
    try:
        table, metadata, data_start = framing.read_table(path)
    except InputFileError as err:
        raise SafetensorsError(str(err)) from None
    except framing.HeaderError as err:
        raise SafetensorsError(f"{path}: not a safetensors file ({framing.describe(err)})") from None
    except framing.TableError as err:
        raise SafetensorsError(f"{path}: damaged safetensors file ({err})") from None
    tensors = {}
    for name, e in table.items():
        if e.dtype not in _DTYPES:
            raise SafetensorsError(f"{path}: {name} has dtype {e.dtype}, which this converter does not read")
        tensors[name] = StoredTensor(
            name, path, _DTYPES[e.dtype], e.shape, data_start + e.begin, data_start + e.end
        )
    return tensors, metadata


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of a file or a directory (one file, or the shards its index lists, each
    inside the directory)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / INDEX_FILE).exists():
        try:
            return framing.read_index(path)[1]
        except framing.IndexFileError as err:
            raise SafetensorsError(str(err)) from None
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found
    raise SafetensorsError(f"{path}: no {SINGLE_FILE} and no {INDEX_FILE}")


def index_map(path: str | os.PathLike) -> dict[str, str] | None:
    """The weight map of a directory's shard index, or None."""
    path = Path(path)
    if path.is_dir() and (path / INDEX_FILE).exists():
        try:
            return framing.read_index(path)[0]
        except framing.IndexFileError as err:
            raise SafetensorsError(str(err)) from None
    return None


def is_safetensors(path: str | os.PathLike) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix == ".safetensors"
    return path.is_dir() and ((path / INDEX_FILE).is_file() or (path / SINGLE_FILE).is_file())


class SafetensorsReader:
    """Every tensor of a file or directory, mapped from disk on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.files = weight_files(self.path)
        self.tensors: dict[str, StoredTensor] = {}
        self.metadata: dict[str, str] = {}
        for file in self.files:
            tensors, metadata = read_header(file)
            for name in tensors:
                if name in self.tensors:
                    raise SafetensorsError(f"{self.path}: tensor {name} is in two shards")
            self.tensors.update(tensors)
            self.metadata = self.metadata or metadata
        weight_map = index_map(self.path)
        if weight_map is not None:
            held = {
                os.path.relpath(file, self.path): {n for n, t in self.tensors.items() if t.file == file}
                for file in self.files
            }
            try:
                framing.check_index_coverage(self.path / INDEX_FILE, weight_map, held)
            except framing.IndexFileError as err:
                raise SafetensorsError(str(err)) from None
        self._maps: dict[Path, np.memmap] = {}

    def _map(self, file: Path) -> np.memmap:
        if file not in self._maps:
            self._maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
        return self._maps[file]

    def tensor(self, name: str) -> np.ndarray:
        """A read-only view of the file's bytes (no copy)."""
        t = self.tensors[name]
        raw = self._map(t.file)[t.begin : t.end]
        return raw.view(t.dtype).reshape(t.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def close(self) -> None:
        self._maps.clear()


def read_config_text(path: str | os.PathLike) -> str | None:
    """The model configuration stored with the weights: `config.json` beside them, or `__metadata__`."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return (path / CONFIG_FILE).read_text(encoding="utf-8")
    files = weight_files(path)
    _, metadata = read_header(files[0])
    return metadata.get("config")
