"""Two porting mistakes, planted in a copy of a correct torch GPT2Model, that the suite must name.

- A square kernel copied without its transpose (`h.1.attn.c_proj`): the shapes agree, so strict
  loading cannot notice. HF's FlaxConv1D holds its kernel as (out, in) and torch's Conv1D as (in, out): a
  porter who knows that Flax Dense kernels are (in, out) "like Conv1D" skips the transpose; every
  non-square kernel then fails to load, the square ones load silently wrong.
- q and k swapped when splitting the fused projection (`k, q, v = ...`, in `h.1.attn`): the projection
  itself is right (and is captured as right), the attention that uses it is not. It shows only with
  several positions: at one position causal attention has one key and the softmax is 1 either way.

Both are in the second block, so naming the first block would be wrong too.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

SQUARE_KERNEL = "h.1.attn.c_proj"
SWAPPED_QK = "h.1.attn"


def untransposed_square_kernel(model: nn.Module, path: str = SQUARE_KERNEL) -> nn.Module:
    """A copy of `model` whose Conv1D at `path` holds its kernel untransposed."""
    broken = copy.deepcopy(model)
    module = broken.get_submodule(path)
    with torch.no_grad():
        module.weight.copy_(module.weight.T.clone())
    return broken


class _SwappedQK(nn.Module):
    """Stands in for `c_attn` during one attention call: the real projection runs (its hooks see the right
    output), then q and k trade places."""

    def __init__(self, projection: nn.Module):
        super().__init__()
        object.__setattr__(self, "projection", projection)  # not a child: the module tree stays the same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.projection(x).chunk(3, dim=-1)
        return torch.cat([k, q, v], dim=-1)


def swapped_q_and_k(model: nn.Module, path: str = SWAPPED_QK) -> nn.Module:
    """A copy of `model` whose attention at `path` splits its fused projection as `k, q, v`."""
    broken = copy.deepcopy(model)
    attention = broken.get_submodule(path)
    forward = attention.forward

    def swapped(*args, **kwargs):
        projection = attention._modules["c_attn"]
        attention._modules["c_attn"] = _SwappedQK(projection)
        try:
            return forward(*args, **kwargs)
        finally:
            attention._modules["c_attn"] = projection

    attention.forward = swapped
    return broken


MISTAKES = {
    "square kernel not transposed": (untransposed_square_kernel, SQUARE_KERNEL),
    "q and k swapped": (swapped_q_and_k, SWAPPED_QK),
}
