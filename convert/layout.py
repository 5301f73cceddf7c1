"""The array transforms of each layer kind (`common.kinds.Kind`): Flax layout <-> PyTorch layout.

Every transform here is a pure permutation or flip, so the way back is exact, bit for bit.
"""

from __future__ import annotations

import numpy as np

from common.kinds import Kind


def to_torch(kind: Kind, array: np.ndarray) -> np.ndarray:
    """Flax layout -> PyTorch layout (a view where possible; copy with np.ascontiguousarray)."""
    permutation, flipped = kind.torch_axes
    if permutation is None:
        return array
    out = array.transpose(permutation)
    return np.flip(out, flipped) if flipped else out


def to_flax(kind: Kind, array: np.ndarray) -> np.ndarray:
    """PyTorch layout -> Flax layout; the exact inverse of `to_torch`."""
    permutation, flipped = kind.torch_axes
    if permutation is None:
        return array
    if flipped:
        array = np.flip(array, flipped)
    return array.transpose(np.argsort(permutation))
