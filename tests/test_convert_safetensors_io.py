"""The streaming safetensors writer: header first, tensors after, readable by the safetensors library."""

from __future__ import annotations

import errno
import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

from convert import blas_transpose
from convert import safetensors_io as st_io
from convert.safetensors_io import (
    INDEX_FILE,
    SafetensorsError,
    SafetensorsReader,
    ShardedWriter,
    StreamingWriter,
    TensorSpec,
    copy_into,
    encode_header,
    plan_shards,
    read_header,
)

BF16 = np.dtype(ml_dtypes.bfloat16)


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a.weight": rng.standard_normal((6, 5), dtype=np.float32),
        "a.bias": rng.standard_normal(6, dtype=np.float32),
        "b.weight": rng.standard_normal((4, 3, 2, 2, 2), dtype=np.float32).astype(BF16),
        "c": np.arange(7, dtype=np.int64),
        "empty": np.zeros((0, 3), np.float32),
    }


def _specs(tensors):
    return [TensorSpec(name, a.shape, a.dtype) for name, a in tensors.items()]


def test_one_file_is_read_by_the_safetensors_library(tmp_path):
    tensors = _tensors()
    writer = ShardedWriter(
        _specs(tensors), {"format": "pt", "model_type": "vae"}, single_file=tmp_path / "w.safetensors"
    )
    for name, array in tensors.items():
        writer.write(name, array)
        assert np.array_equal(writer.re_read(name).view(np.uint8), np.ascontiguousarray(array).view(np.uint8))
    assert writer.close() == [tmp_path / "w.safetensors"]
    with safe_open(str(tmp_path / "w.safetensors"), framework="numpy") as f:
        assert f.metadata() == {"format": "pt", "model_type": "vae"}
        assert set(f.keys()) == set(tensors)
        for name in ("a.weight", "a.bias", "c"):
            assert np.array_equal(f.get_tensor(name), tensors[name])
        assert tuple(f.get_slice("b.weight").get_shape()) == (4, 3, 2, 2, 2)
    reader = SafetensorsReader(tmp_path / "w.safetensors")
    for name, array in tensors.items():
        assert reader.tensor(name).dtype == array.dtype
        assert np.array_equal(reader.tensor(name).view(np.uint8), np.ascontiguousarray(array).view(np.uint8))


def test_the_header_is_written_before_any_tensor(tmp_path):
    tensors = _tensors()
    specs = _specs(tensors)
    header = encode_header(specs, {"format": "pt"})
    assert len(header) % 8 == 0
    writer = StreamingWriter(tmp_path / "w.safetensors", specs, {"format": "pt"})
    assert (tmp_path / "w.safetensors").read_bytes()[: len(header)] == header  # before any write
    (length,) = struct.unpack("<Q", header[:8])
    parsed = json.loads(header[8 : 8 + length])
    assert parsed["a.weight"] == {"dtype": "F32", "shape": [6, 5], "data_offsets": [0, 120]}
    assert parsed["b.weight"]["dtype"] == "BF16"
    writer.abort()


def test_strided_sources_are_laid_out_and_cast(tmp_path):
    rng = np.random.default_rng(1)
    source = rng.standard_normal((300, 200), dtype=np.float32)
    dst = np.empty((200, 300), BF16)
    copy_into(dst, source.T, block_bytes=1000)
    assert np.array_equal(dst.view(np.uint16), source.T.astype(BF16).view(np.uint16))
    spec = TensorSpec("t", (200, 300), np.dtype(np.float32))
    writer = StreamingWriter(tmp_path / "w.safetensors", [spec], None)
    writer.write("t", source.T)
    writer.close()
    assert np.array_equal(SafetensorsReader(tmp_path / "w.safetensors").tensor("t"), source.T)


@pytest.fixture(params=["openblas", "numpy tiles"])
def transpose_path(request, monkeypatch):
    """Run a test through each way a transposed float32 matrix can be copied."""
    if request.param == "openblas":
        if not blas_transpose.available():
            pytest.skip("numpy here ships no OpenBLAS with somatcopy")
    else:
        monkeypatch.setattr(blas_transpose, "_somatcopy", lambda: None)
    return request.param


@pytest.mark.parametrize("shape", [(1, 7), (5, 1), (17, 1025), (2050, 33), (96, 1024)])
def test_transposed_kernels_are_laid_out_exactly_at_every_tile_edge(shape, transpose_path):
    source = np.random.default_rng(2).standard_normal(shape, dtype=np.float32)
    dst = np.empty(shape[::-1], np.float32)
    copy_into(dst, source.T)
    assert np.array_equal(dst, np.ascontiguousarray(source.T))
    flipped = np.random.default_rng(3).standard_normal((3, 2, 2, 4, 5), dtype=np.float32)
    view = np.flip(flipped.transpose(3, 4, 0, 1, 2), (2, 3, 4))
    out = np.empty(view.shape, np.float32)
    copy_into(out, view, block_bytes=64)
    assert np.array_equal(out, np.ascontiguousarray(view))


def _every_kind_of_float32(shape, nan: bool) -> np.ndarray:
    """Random bit patterns: denormals, signed zeros, infinities, and quiet and signalling NaNs if asked."""
    rng = np.random.default_rng(4)
    bits = rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32)
    special = [0x00000001, 0x807FFFFF, 0x80000000, 0x00000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF]
    if nan:
        special += [0x7F800001, 0xFFBFFFFF, 0x7FC00000, 0x7FA5A5A5]
    else:  # clear the NaNs the random bits made: set their exponent to 254
        is_nan = (bits & 0x7F800000) == 0x7F800000
        bits[is_nan] &= 0xFF7FFFFF
    bits.flat[: len(special)] = special
    return bits.view(np.float32)


@pytest.mark.parametrize("nan", [False, True], ids=["finite and infinite", "with NaNs"])
def test_a_transposing_copy_keeps_every_bit(nan, transpose_path):
    source = _every_kind_of_float32((300, 257), nan)
    expected = np.ascontiguousarray(source.T).view(np.uint32)
    dst = np.empty((257, 300), np.float32)
    copy_into(dst, source.T)
    assert np.array_equal(dst.view(np.uint32), expected)
    # Strided on both sides: a kernel sliced out of a wider array, into a slice of a wider buffer.
    wide = np.empty((257, 310), np.float32)
    copy_into(wide[:, 5:305], np.concatenate([source, source], axis=1)[:, :257].T)
    assert np.array_equal(wide[:, 5:305].view(np.uint32), expected)


@pytest.mark.skipif(not blas_transpose.available(), reason="numpy here ships no OpenBLAS with somatcopy")
def test_openblas_transposes_only_what_it_keeps_bit_for_bit():
    dst = np.empty((257, 300), np.float32)
    assert blas_transpose.transpose_into(dst, _every_kind_of_float32((300, 257), nan=False).T)
    assert not blas_transpose.transpose_into(dst, _every_kind_of_float32((300, 257), nan=True).T)
    assert not blas_transpose.transpose_into(dst.astype(BF16), np.ones((300, 257), BF16).T)  # float32 only
    assert not blas_transpose.transpose_into(dst, np.ones((257, 300), np.float32))  # not a transpose


def test_writes_must_follow_the_plan(tmp_path):
    tensors = _tensors()
    writer = StreamingWriter(tmp_path / "w.safetensors", _specs(tensors), None)
    with pytest.raises(SafetensorsError, match="expected a.weight"):
        writer.write("a.bias", tensors["a.bias"])
    with pytest.raises(SafetensorsError, match=r"expected a.weight \[6, 5\] next, got a.weight \[5, 6\]"):
        writer.write("a.weight", tensors["a.weight"].T)
    writer.abort()
    with pytest.raises(FileExistsError):  # never replaces a file
        StreamingWriter(tmp_path / "w.safetensors", _specs(tensors), None)


def test_shards_and_index(tmp_path):
    tensors = {f"layer.{i}.weight": np.full((100,), i, np.float32) for i in range(7)}
    specs = _specs(tensors)
    assert [len(s) for s in plan_shards(specs, 1000)] == [2, 2, 2, 1]
    assert [len(s) for s in plan_shards(specs, 10)] == [1] * 7  # a tensor above the limit goes alone
    writer = ShardedWriter(specs, {"format": "pt"}, directory=tmp_path, max_shard_bytes=1000)
    for name, array in tensors.items():
        writer.write(name, array)
        assert np.array_equal(writer.re_read(name), array)
    files = writer.close()
    assert [f.name for f in files] == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)] + [
        INDEX_FILE
    ]
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == 2800 and index["metadata"]["format"] == "pt"
    assert index["weight_map"]["layer.6.weight"] == "model-00004-of-00004.safetensors"
    reader = SafetensorsReader(tmp_path)
    assert len(reader.files) == 4 and reader.metadata == {"format": "pt"}
    for name, array in tensors.items():
        assert np.array_equal(reader.tensor(name), array)


def test_small_model_stays_one_file(tmp_path):
    tensors = _tensors()
    writer = ShardedWriter(_specs(tensors), {}, directory=tmp_path)
    for name, array in tensors.items():
        writer.write(name, array)
    assert [f.name for f in writer.close()] == ["model.safetensors"]


def test_incomplete_writes_are_refused(tmp_path):
    tensors = _tensors()
    writer = ShardedWriter(_specs(tensors), {}, directory=tmp_path)
    writer.write("a.weight", tensors["a.weight"])
    with pytest.raises(SafetensorsError, match="not completely written"):
        writer.close()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-4], "past the end of the data.*truncated"),
        (lambda b: b + b"\0" * 8, "8 bytes after the last tensor belong to no tensor"),
        (lambda b: b[:5], "too short to be a safetensors file"),
        (lambda b: struct.pack("<Q", 1 << 40) + b[8:], "no safetensors header"),
        (lambda b: b[:8] + b"[" + b[9:], "not a safetensors file"),
    ],
)
def test_damaged_files_are_named(tmp_path, damage, message):
    tensors = _tensors()
    writer = ShardedWriter(_specs(tensors), {}, single_file=tmp_path / "w.safetensors")
    for name, array in tensors.items():
        writer.write(name, array)
    writer.close()
    (tmp_path / "w.safetensors").write_bytes(damage((tmp_path / "w.safetensors").read_bytes()))
    with pytest.raises(SafetensorsError, match=message):
        read_header(tmp_path / "w.safetensors")


def _cached_fraction(path) -> float:
    """Share of the file's pages in the page cache, by mincore(2) on a fresh read-only mapping (mapping
    alone reads nothing in)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value)
        resident = (ctypes.c_ubyte * pages)()
        try:
            assert libc.mincore(address, size, resident) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(flag & 1 for flag in resident) / pages


@pytest.mark.skipif(st_io._sync_file_range is None, reason="write-through needs Linux sync_file_range")
def test_a_large_output_goes_to_disk_as_it_is_written_and_leaves_the_page_cache(tmp_path, monkeypatch):
    # Scaled down: 1 MB chunks, the last 2 MB kept; the file is 24 MB of 48 tensors.
    monkeypatch.setattr(st_io._WriteThrough, "CHUNK", 1 << 20)
    monkeypatch.setattr(st_io._WriteThrough, "KEEP", 2 << 20)
    rng = np.random.default_rng(3)
    tensors = {f"layer{i}.weight": rng.standard_normal((256, 512), dtype=np.float32) for i in range(48)}
    path = tmp_path / "big.safetensors"
    writer = StreamingWriter(path, _specs(tensors), {"format": "pt"})
    for name, array in tensors.items():
        writer.write(name, array)
    writer.close()
    assert _cached_fraction(path) < 0.25  # the 24 MB written kept only about the last 3 MB cached
    reader = SafetensorsReader(path)
    for name, array in tensors.items():  # and the dropped pages read back from the disk exactly
        assert np.array_equal(reader.tensor(name), array)
    assert _cached_fraction(path) > 0.99


def test_a_file_system_without_sync_file_range_still_gets_the_whole_file(tmp_path, monkeypatch):
    # (A failing disk, EIO, is raised instead: test_convert_pipeline checks what the user then sees.)
    def unsupported(fd, offset, nbytes, flags):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(st_io, "_sync_file_range", unsupported)
    monkeypatch.setattr(st_io._WriteThrough, "CHUNK", 1 << 10)
    tensors = {f"t{i}": np.full((64, 64), i, np.float32) for i in range(8)}
    writer = StreamingWriter(tmp_path / "w.safetensors", _specs(tensors), None)
    for name, array in tensors.items():  # the kernel writes back as usual
        writer.write(name, array)
    writer.close()
    reader = SafetensorsReader(tmp_path / "w.safetensors")
    assert all(np.array_equal(reader.tensor(name), array) for name, array in tensors.items())
