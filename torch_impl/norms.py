"""LayerNorm and GroupNorm that always do their arithmetic in float32.

The input, the affine weights and the statistics are upcast to float32 whatever dtype the weights are
stored in, and the result is cast back to the input's dtype. So the same module serves every precision
policy: fp32 weights under MIXED reproduce flax <= 0.12.0 (fp32 scale/bias on a bf16 activation), bf16
weights under BF16 reproduce the published port's rounded scale/bias. Epsilon is flax's default 1e-6.

Statistics use PyTorch's two-pass variance, not flax's one-pass `E[x^2] - E[x]^2` (MODEL_SPEC 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.precision import MAX_GROUPS, NORM_EPSILON


def _fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last axis; `bias=False` gives the scale-only q_norm/k_norm."""

    def __init__(self, num_features: int, *, bias: bool = True, eps: float = NORM_EPSILON) -> None:
        super().__init__(num_features, eps=eps, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), self.normalized_shape, _fp32(self.weight), _fp32(self.bias), self.eps)
        return y.to(x.dtype)


class GroupNorm(nn.GroupNorm):
    """GroupNorm on channels-first `(B, C, T, H, W)`; statistics over T, H, W and the channel group.

    Groups default to `min(MAX_GROUPS, channels)` as in ConvBlock3D.
    """

    def __init__(
        self, num_channels: int, num_groups: int | None = None, *, eps: float = NORM_EPSILON
    ) -> None:
        groups = min(MAX_GROUPS, num_channels) if num_groups is None else num_groups
        super().__init__(groups, num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.group_norm(x.float(), self.num_groups, _fp32(self.weight), _fp32(self.bias), self.eps)
        return y.to(x.dtype)
