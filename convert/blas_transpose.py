"""Transposing float32 copies through `somatcopy` of the OpenBLAS that numpy ships with.

Flax stores a Linear kernel as (in, out) and PyTorch wants (out, in), so nearly every byte of both models
passes through one transposing copy. numpy moves a transposed array element by element (0.7 GB/s on the
2-core CI machine, 1.4 to 2 GB/s in cache-sized tiles); OpenBLAS's blocked kernel runs at about 5 GB/s.
numpy's own wheels bundle that OpenBLAS (`numpy.libs/libscipy_openblas64_*.so`), so nothing new is
installed; where it is missing (numpy built against another BLAS) `transpose_into` says no and the
caller copies with numpy.

`somatcopy` computes `alpha * a` with alpha = 1: the identity on every float32 except signalling NaNs,
which it makes quiet. A tensor holding any NaN therefore goes the numpy way. And because a thread running
with flush-to-zero would also change denormals, the library is used only after a probe of denormals,
signed zeros, infinities and extreme values comes back bit for bit (in the thread that first asks).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

_ROW_MAJOR, _TRANSPOSE = 101, 112  # CBLAS_ORDER, CBLAS_TRANSPOSE
_SYMBOL = "scipy_cblas_somatcopy64_"  # 64-bit integer interface, scipy_ prefix (scipy-openblas64)
_SMALLEST = 4096  # elements; below this the call costs more than numpy's copy


def _library_candidates() -> list[Path]:
    root = Path(np.__file__).resolve().parent
    found = []
    for folder in (root.parent / "numpy.libs", root / ".dylibs", root.parent / "numpy" / ".libs"):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if "openblas" in p.name.lower())
    return found


def _probe_bits() -> np.ndarray:
    """Every float32 class that a multiply by one could disturb, and a few ordinary values."""
    bits = [0x00000001, 0x80000001, 0x007FFFFF, 0x00400000, 0x80000000, 0x00000000, 0x7F800000]
    bits += [0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0x3F800000, 0xBF800000, 0x3EAAAAAB]
    rng = np.random.default_rng(0)
    filler = rng.integers(0, 0x7F800000, size=64 * 48 - len(bits), dtype=np.int64).astype(np.uint32)
    return np.concatenate([np.array(bits, np.uint32), filler]).reshape(64, 48)


@functools.cache
def _somatcopy() -> Callable | None:
    for path in _library_candidates():
        try:
            function = getattr(ctypes.CDLL(str(path)), _SYMBOL)
        except (OSError, AttributeError):
            continue
        function.restype = None
        function.argtypes = [
            ctypes.c_int,  # order
            ctypes.c_int,  # trans
            ctypes.c_int64,  # rows of a
            ctypes.c_int64,  # columns of a
            ctypes.c_float,  # alpha
            ctypes.c_void_p,  # a
            ctypes.c_int64,  # lda
            ctypes.c_void_p,  # b
            ctypes.c_int64,  # ldb
        ]
        source = _probe_bits()
        out = np.zeros(source.shape[::-1], np.uint32)
        _call(function, out, source.T)
        if np.array_equal(out, source.T):
            return function
    return None


def _call(function: Callable, dst: np.ndarray, src: np.ndarray) -> None:
    """dst = src, for src the transpose of a row-major matrix `a` (rows = src.shape[1])."""
    item = src.itemsize
    function(
        _ROW_MAJOR,
        _TRANSPOSE,
        src.shape[1],
        src.shape[0],
        1.0,
        src.ctypes.data,
        src.strides[1] // item,
        dst.ctypes.data,
        dst.strides[0] // item,
    )


def available() -> bool:
    return _somatcopy() is not None


def transpose_into(dst: np.ndarray, src: np.ndarray) -> bool:
    """`dst[...] = src` for a float32 `src` that is a transposed row-major matrix and a row-major `dst`,
    bit for bit; False (nothing written) when this path does not apply and numpy should copy instead."""
    if not (
        src.ndim == 2
        and src.dtype == np.float32
        and dst.dtype == np.float32
        and src.shape == dst.shape
        and src.size >= _SMALLEST
        and src.strides[0] == src.itemsize
        and src.strides[1] % src.itemsize == 0
        and dst.strides[1] == dst.itemsize
        and dst.strides[0] % dst.itemsize == 0
        and dst.flags.writeable
    ):
        return False
    with np.errstate(invalid="ignore"):  # comparing a signalling NaN raises the invalid flag
        if np.isnan(src.min()):  # the one class of value a multiply by one may change
            return False
    function = _somatcopy()
    if function is None:
        return False
    _call(function, dst, src)
    return True
