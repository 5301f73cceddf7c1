"""Bit-level comparison of a written tensor with its source: exact, or the exact rounding/widening of it.

The bf16 rounding here is deliberately independent of the writer's cast (ml_dtypes), so that
verification does not just repeat the conversion.
"""

from __future__ import annotations

import numpy as np


def bf16_bits_nearest_even(values: np.ndarray) -> np.ndarray:
    """The bfloat16 bit patterns of float32 `values` rounded to nearest, ties to even.

    Integer arithmetic on the float32 bits, independent of the ml_dtypes cast the writer uses, so that
    verification does not just repeat the conversion. NaNs are not meaningful here (checked separately).
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    return rounded.astype(np.uint16)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    unsigned = np.dtype(f"u{a.dtype.itemsize}")
    return bool(np.array_equal(a.view(unsigned), b.view(unsigned)))


def matches_source(written: np.ndarray, source: np.ndarray) -> bool:
    """`written` (in the source's layout) is the source exactly, or its exact rounding/widening."""
    if written.dtype == source.dtype:
        return same_bits(written, source)
    bf16 = np.dtype("bfloat16")
    if written.dtype == bf16 and source.dtype == np.float32:
        nan = np.isnan(source)
        if not np.array_equal(nan, np.isnan(written.astype(np.float32))):
            return False
        expected = bf16_bits_nearest_even(np.where(nan, 0, source))
        got = np.where(nan, np.uint16(0), written.view(np.uint16))
        return bool(np.array_equal(got, expected))
    if written.dtype == np.float32 and source.dtype == bf16:
        widened = source.view(np.uint16).astype(np.uint32) << np.uint32(16)
        return bool(np.array_equal(written.view(np.uint32), widened))
    return False
