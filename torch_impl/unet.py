"""The decoder's 3-D UNet refiner (MODEL_SPEC section 2), channels last at its public surface.

Internally `(B, C, T, H, W)` for torch's convolutions. Convolutions use 'same' padding; pooling and
upsampling act on H and W only (window/stride (1, 2, 2)), so H and W must divide by 2**num_levels.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from torch_impl.layers import lecun_normal_
from torch_impl.norms import GroupNorm
from torch_impl.precision import bf16_product

_POOL = (1, 2, 2)


def _channel_bias(bias: torch.Tensor) -> torch.Tensor:
    return bias.reshape(-1, 1, 1, 1)


class Conv3d(nn.Conv3d):
    """`nn.Conv3d`; with bf16 weights the bias is added after the product's rounding, as in flax."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != torch.bfloat16:
            return super().forward(x)
        conv = functools.partial(
            F.conv3d, stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups
        )
        return bf16_product(conv, x, self.weight) + _channel_bias(self.bias)


class ConvTranspose3d(nn.ConvTranspose3d):
    """`nn.ConvTranspose3d`; with bf16 weights the bias is added after the product's rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != torch.bfloat16:
            return super().forward(x)
        conv = functools.partial(
            F.conv_transpose3d,
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            groups=self.groups,
            dilation=self.dilation,
        )
        return bf16_product(conv, x, self.weight) + _channel_bias(self.bias)


def conv3d(in_features: int, out_features: int, kernel: tuple[int, int, int]) -> Conv3d:
    """A `Conv3d` with 'same' padding, initialised like flax's Conv (lecun-normal, zero bias)."""
    layer = Conv3d(in_features, out_features, kernel, padding="same")
    lecun_normal_(layer.weight, in_features * math.prod(kernel))
    nn.init.zeros_(layer.bias)
    return layer


class ConvBlock3D(nn.Module):
    """conv (kt, 3, 3) -> GroupNorm(min(8, out)) -> SiLU."""

    def __init__(self, in_features: int, out_features: int, temporal_kernel: int = 3) -> None:
        super().__init__()
        self.conv = conv3d(in_features, out_features, (temporal_kernel, 3, 3))
        self.norm = GroupNorm(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.conv(x)))


class DownBlock3D(nn.Module):
    """Two ConvBlock3D; returns `(pooled, skip)` with the skip taken before the (1,2,2) max-pool."""

    def __init__(self, in_features: int, out_features: int, temporal_kernel: int = 3) -> None:
        super().__init__()
        self.conv1 = ConvBlock3D(in_features, out_features, temporal_kernel)
        self.conv2 = ConvBlock3D(out_features, out_features, temporal_kernel)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.conv2(self.conv1(x))
        return F.max_pool3d(skip, _POOL, _POOL), skip


class UpBlock3D(nn.Module):
    """ConvTranspose (1,2,2) upsample, concat `[upsampled, skip]` on channels, two ConvBlock3D."""

    def __init__(self, in_features: int, out_features: int, temporal_kernel: int = 3) -> None:
        super().__init__()
        self.upsample = ConvTranspose3d(in_features, out_features, _POOL, stride=_POOL)
        lecun_normal_(self.upsample.weight, in_features * math.prod(_POOL))
        nn.init.zeros_(self.upsample.bias)
        self.conv1 = ConvBlock3D(2 * out_features, out_features, temporal_kernel)
        self.conv2 = ConvBlock3D(out_features, out_features, temporal_kernel)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.upsample(x), skip], dim=1)
        return self.conv2(self.conv1(x))


class UNet(nn.Module):
    """`(B,T,H,W,in_features) -> (B,T,H,W,out_features)`; the input is cast to the compute dtype."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        base_features: int = 16,
        num_levels: int = 3,
        temporal_kernel: int = 3,
    ) -> None:
        super().__init__()
        widths = [base_features * 2**i for i in range(num_levels + 1)]
        self.patch_mixer = conv3d(in_features, in_features, (temporal_kernel, 7, 7))
        self.encoders = nn.ModuleList(
            DownBlock3D(c_in, c_out, temporal_kernel)
            for c_in, c_out in zip([in_features, *widths[:-2]], widths[:-1])
        )
        self.bottleneck1 = ConvBlock3D(widths[-2], widths[-1], temporal_kernel)
        self.bottleneck2 = ConvBlock3D(widths[-1], widths[-1], temporal_kernel)
        self.decoders = nn.ModuleList(
            UpBlock3D(widths[i + 1], widths[i], temporal_kernel) for i in reversed(range(num_levels))
        )
        # Zero-initialised: at init the UNet adds nothing to the patch-unembedded video.
        self.final_conv = Conv3d(base_features, out_features, 1)
        nn.init.zeros_(self.final_conv.weight)
        nn.init.zeros_(self.final_conv.bias)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.patch_mixer.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x.to(self.compute_dtype), "b t h w c -> b c t h w")
        x = self.patch_mixer(x)
        skips = []
        for block in self.encoders:
            x, skip = block(x)
            skips.append(skip)
        x = self.bottleneck2(self.bottleneck1(x))
        for block, skip in zip(self.decoders, reversed(skips)):
            x = block(x, skip)
        return rearrange(self.final_conv(x), "b c t h w -> b t h w c")
