"""Layer kinds as names: how a tensor's name and shape differ between Flax and PyTorch, by kind of layer.

Flax stores a Linear kernel as (in, out) and a Conv kernel as (kt, kh, kw, in, out); PyTorch wants
(out, in) and (out, in, kt, kh, kw). This module states the names, leaf renames, dimensions and axis
permutations of each kind; the array transforms that apply them live in `convert.layout`. Framework-free.
"""

from __future__ import annotations

import enum

# (kt, kh, kw, in, out) -> (out, in, kt, kh, kw)
CONV_TO_TORCH = (4, 3, 0, 1, 2)
CONV_TO_FLAX = (2, 3, 4, 1, 0)
# (kt, kh, kw, in, out) -> (in, out, kt, kh, kw)
CONVT_TO_TORCH = (3, 4, 0, 1, 2)
CONVT_TO_FLAX = (2, 3, 4, 0, 1)
SPATIOTEMPORAL = (2, 3, 4)


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

    @property
    def torch_axes(self) -> tuple[tuple[int, ...] | None, tuple[int, ...]]:
        """The Flax -> PyTorch layout as data: (the axis permutation, or None for none; the axes
        reversed after permuting). `convert.layout.to_torch` applies it to an array."""
        if self is Kind.LINEAR:
            return (1, 0), ()
        if self is Kind.CONV:
            return CONV_TO_TORCH, ()
        if self is Kind.CONV_TRANSPOSE:
            return CONVT_TO_TORCH, SPATIOTEMPORAL
        return None, ()

    def torch_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
        permutation, _ = self.torch_axes
        return tuple(flax_shape) if permutation is None else tuple(flax_shape[i] for i in permutation)

    def flax_shape(self, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The inverse of `torch_shape`."""
        permutation, _ = self.torch_axes
        if permutation is None:
            return tuple(torch_shape)
        out = [0] * len(permutation)
        for position, axis in enumerate(permutation):
            out[axis] = torch_shape[position]
        return tuple(out)
