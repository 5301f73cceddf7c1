"""The decoder's 3-D UNet refiner (MODEL_SPEC section 2), channels last at its public surface.

Internally `(B, C, T, H, W)` for torch's convolutions. Convolutions use 'same' padding; pooling and
upsampling act on H and W only (window/stride (1, 2, 2)), so H and W must divide by 2**num_levels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from torch_impl.layers import lecun_normal_
from torch_impl.norms import GroupNorm
from torch_impl.precision import bf16_product, emulates_bf16

_POOL = (1, 2, 2)
# Emulated bf16 convolutions (`precision.bf16_product`) hold float32 copies of their whole input and
# output: at 64 frames of 256x256 those copies were most of the decoder's peak memory. Without autograd
# they therefore run on chunks of at least this many output frames (see `_by_frames`).
CHUNK_FRAMES = 8


def _channel_bias(bias: torch.Tensor) -> torch.Tensor:
    return bias.reshape(-1, 1, 1, 1)


def _bf16_conv(conv: Callable[..., torch.Tensor], layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`x -> conv(x, weight) + bias` with bf16 weights: the bias is added after the product's rounding."""
    return lambda x: bf16_product(conv, x, layer.weight) + _channel_bias(layer.bias)


def _frame_chunks(frames: int) -> list[tuple[int, int]]:
    """`range(frames)` cut into near-equal `(start, stop)` chunks of at least CHUNK_FRAMES frames."""
    count = max(frames // CHUNK_FRAMES, 1)
    bounds = [i * frames // count for i in range(count + 1)]
    return list(zip(bounds, bounds[1:]))


def _chunks_keep_backend(layer: nn.Module, x: torch.Tensor, padding: list[int], kernel_frames: int) -> bool:
    """Whether `layer`'s float32 convolution may run on frame chunks of `x`: only without autograd, where
    bf16 is emulated, and where a chunk gets the same backend (torch picks one by input size, and
    backends round differently) as the whole clip.
    """
    frames = x.shape[2]
    if torch.is_grad_enabled() or frames < 2 * CHUNK_FRAMES or not emulates_bf16(x):
        return False
    transposed = isinstance(layer, nn.ConvTranspose3d)
    output_padding = list(layer.output_padding) if transposed else [0, 0, 0]

    def backend(frames: int, padding: list[int]) -> object:
        like = x.new_zeros((), dtype=torch.float32).expand(*x.shape[:2], frames, *x.shape[3:])
        args = (list(layer.stride), padding, list(layer.dilation), transposed, output_padding, layer.groups)
        return torch._C._select_conv_backend(like, layer.weight, None, *args)

    piece_padding = [0, *padding[1:]]
    return backend(frames, padding) == backend(CHUNK_FRAMES + kernel_frames - 1, piece_padding)


def _by_frames(
    product: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    kernel_frames: int,
    pad_before: int,
    pad_after: int,
) -> torch.Tensor:
    """`product(x)` for a convolution with stride 1 along frames, computed chunk by chunk of output frames
    into one preallocated output.

    `product` must not pad frames itself: output frame t reads input frames `t - pad_before` to
    `t - pad_before + kernel_frames - 1`, and the zero frames beyond the clip's ends are added here. Every
    output value is the same sum of the same products as in a single call, so the result is bit for bit
    that of one call; only the float32 temporaries shrink to a chunk's size.
    """
    frames = x.shape[2]
    out_frames = frames + pad_before + pad_after - kernel_frames + 1
    out = None
    for start, stop in _frame_chunks(out_frames):
        lo, hi = start - pad_before, stop - pad_before + kernel_frames - 1
        piece = x[:, :, max(lo, 0) : min(hi, frames)]
        if lo < 0 or hi > frames:
            piece = F.pad(piece, (0, 0, 0, 0, max(-lo, 0), max(hi - frames, 0)))
        y = product(piece)
        if out is None:  # the memory format of a single call's result (the backend's choice)
            channels_last = not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last_3d)
            layout = torch.channels_last_3d if channels_last else torch.contiguous_format
            shape = (*y.shape[:2], out_frames, *y.shape[3:])
            out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=layout)
        out[:, :, start:stop] = y
    return out


class Conv3d(nn.Conv3d):
    """`nn.Conv3d`; with bf16 weights the bias is added after the product's rounding, as in flax."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != torch.bfloat16:
            return super().forward(x)
        conv = functools.partial(F.conv3d, stride=self.stride, dilation=self.dilation, groups=self.groups)
        w_before, w_after, h_before, h_after, t_before, t_after = self._reversed_padding_repeated_twice
        frames = self.kernel_size[0]
        if (
            self.stride[0] == self.dilation[0] == 1
            and (w_before, h_before) == (w_after, h_after)
            and _chunks_keep_backend(self, x, [t_before, h_before, w_before], frames)
        ):
            product = _bf16_conv(functools.partial(conv, padding=(0, h_before, w_before)), self)
            return _by_frames(product, x, frames, t_before, t_after)
        return _bf16_conv(functools.partial(conv, padding=self.padding), self)(x)


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
        product = _bf16_conv(conv, self)
        # The UNet's upsampling maps each frame on its own (kernel and stride 1 along frames, no padding).
        frame_by_frame = (
            self.kernel_size[0] == self.stride[0] == 1 and self.padding[0] == self.output_padding[0] == 0
        )
        if frame_by_frame and _chunks_keep_backend(self, x, list(self.padding), 1):
            return _by_frames(product, x, 1, 0, 0)
        return product(x)


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
        # In place where no autograd graph needs the norm's output: one clip-sized tensor less.
        return F.silu(self.norm(self.conv(x)), inplace=not torch.is_grad_enabled())


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
        x = self.conv1(torch.cat([self.upsample(x), skip], dim=1))  # the concatenation is freed here
        return self.conv2(x)


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
        for block in self.decoders:
            x = block(x, skips.pop())  # each skip is freed once its decoder has used it
        return rearrange(self.final_conv(x), "b c t h w -> b t h w c")
