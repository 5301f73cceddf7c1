"""How one tensor changes layout and name between Flax and PyTorch, by layer kind.

Flax stores a Linear kernel as (in, out) and a Conv kernel as (kt, kh, kw, in, out); PyTorch wants
(out, in) and (out, in, kt, kh, kw). Every transform here is a pure permutation or flip, so the way back
is exact, bit for bit.
"""

from __future__ import annotations

import enum

import numpy as np

# (kt, kh, kw, in, out) -> (out, in, kt, kh, kw)
_CONV_TO_TORCH = (4, 3, 0, 1, 2)
_CONV_TO_FLAX = (2, 3, 4, 1, 0)
# (kt, kh, kw, in, out) -> (in, out, kt, kh, kw)
_CONVT_TO_TORCH = (3, 4, 0, 1, 2)
_CONVT_TO_FLAX = (2, 3, 4, 0, 1)
_SPATIOTEMPORAL = (2, 3, 4)


class Kind(enum.Enum):
    """Layer kinds: (label, flax leaf name, torch leaf name, ndim or None for any)."""

    LINEAR = ("linear", "kernel", "weight", 2)
    CONV = ("conv", "kernel", "weight", 5)
    # flax ConvTranspose (transpose_kernel=False) computes a correlation with the kernel as stored;
    # torch's ConvTranspose3d is the adjoint of a convolution, so its kernel is the flax one mirrored
    # in t, h and w (MODEL_SPEC section 2; without the flip outputs differ).
    CONV_TRANSPOSE = ("conv_transpose", "kernel", "weight", 5)
    NORM_SCALE = ("norm_scale", "scale", "weight", 1)
    EMBEDDING = ("embedding", "embedding", "weight", 2)  # (vocab, features) on both sides
    BIAS = ("bias", "bias", "bias", 1)
    PARAM = ("param", None, None, None)  # kept as is, same name (fill_token)
    ROPE_CACHE = ("rope_cache", None, None, 4)  # a pure function of the config: checked, then dropped

    @property
    def flax_leaf(self) -> str | None:
        return self.value[1]

    @property
    def torch_leaf(self) -> str | None:
        return self.value[2]

    @property
    def ndim(self) -> int | None:
        return self.value[3]

    def torch_name(self, flax_name: str) -> str:
        if self.flax_leaf is None:
            return flax_name
        head, _, leaf = flax_name.rpartition(".")
        assert leaf == self.flax_leaf, (flax_name, self)
        return f"{head}.{self.torch_leaf}" if head else self.torch_leaf

    def flax_name(self, torch_name: str) -> str:
        if self.torch_leaf is None:
            return torch_name
        head, _, leaf = torch_name.rpartition(".")
        assert leaf == self.torch_leaf, (torch_name, self)
        return f"{head}.{self.flax_leaf}" if head else self.flax_leaf

    def torch_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self is Kind.LINEAR:
            return tuple(flax_shape[::-1])
        if self is Kind.CONV:
            return tuple(flax_shape[i] for i in _CONV_TO_TORCH)
        if self is Kind.CONV_TRANSPOSE:
            return tuple(flax_shape[i] for i in _CONVT_TO_TORCH)
        return tuple(flax_shape)

    @property
    def torch_axes(self) -> tuple[tuple[int, ...] | None, tuple[int, ...]]:
        """`to_torch` as data, for readers that lay out while reading: (the axis permutation, or None
        for none; the axes reversed after permuting)."""
        if self is Kind.LINEAR:
            return (1, 0), ()
        if self is Kind.CONV:
            return _CONV_TO_TORCH, ()
        if self is Kind.CONV_TRANSPOSE:
            return _CONVT_TO_TORCH, _SPATIOTEMPORAL
        return None, ()

    def flax_shape(self, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The inverse of `torch_shape`."""
        if self is Kind.LINEAR:
            return tuple(torch_shape[::-1])
        if self is Kind.CONV:
            return tuple(torch_shape[i] for i in _CONV_TO_FLAX)
        if self is Kind.CONV_TRANSPOSE:
            return tuple(torch_shape[i] for i in _CONVT_TO_FLAX)
        return tuple(torch_shape)

    def to_torch(self, array: np.ndarray) -> np.ndarray:
        """Flax layout -> PyTorch layout (a view where possible; copy with np.ascontiguousarray)."""
        if self is Kind.LINEAR:
            return array.T
        if self is Kind.CONV:
            return array.transpose(_CONV_TO_TORCH)
        if self is Kind.CONV_TRANSPOSE:
            return np.flip(array.transpose(_CONVT_TO_TORCH), _SPATIOTEMPORAL)
        return array

    def to_flax(self, array: np.ndarray) -> np.ndarray:
        """PyTorch layout -> Flax layout; the exact inverse of `to_torch`."""
        if self is Kind.LINEAR:
            return array.T
        if self is Kind.CONV:
            return array.transpose(_CONV_TO_FLAX)
        if self is Kind.CONV_TRANSPOSE:
            return np.flip(array, _SPATIOTEMPORAL).transpose(_CONVT_TO_FLAX)
        return array
