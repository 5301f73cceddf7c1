"""The VAE/DiT catalogue of planted porting mistakes: each names the model path it is planted at.

- ConvTranspose kernel transposed but not mirrored (flax's is a correlation, torch's the adjoint);
- q and k swapped when splitting the fused projection (`k, q, v = ...`): shows only with several keys;
- LayerNorm epsilon left at torch's 1e-5 instead of flax's 1e-6: shows only when the variance is small;
- RoPE rotating interleaved pairs instead of halves: shows only at non-zero positions;
- a square Linear kernel copied without the transpose (shapes agree, so loading cannot notice);
- the key-padding mask dropped: shows only with a padded frame;
- the sampler's time one step ahead (`t = (i + 1) / N`): named at the first Euler step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from parity.mistakes import Mistake, layernorm_epsilon, unflipped_conv_transpose, untransposed_square_kernel


class _SwappedQK(nn.Module):
    """Stands in for `qkv_projection` during one attention call: the real projection runs (and is captured
    as correct), then q and k trade places, as if the port had split `k, q, v = qkv`."""

    def __init__(self, projection: nn.Module):
        super().__init__()
        object.__setattr__(self, "projection", projection)  # not a child: the module tree stays the same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.projection(x).chunk(3, dim=-1)
        return torch.cat([k, q, v], dim=-1)


def swapped_q_and_k(attention: nn.Module) -> None:
    forward = attention.forward

    def swapped(x, mask=None):
        projection = attention._modules["qkv_projection"]
        attention._modules["qkv_projection"] = _SwappedQK(projection)
        try:
            return forward(x, mask)
        finally:
            attention._modules["qkv_projection"] = projection

    attention.forward = swapped


def ignored_mask(attention: nn.Module) -> None:
    forward = attention.forward
    attention.forward = lambda x, mask=None: forward(x, None)


def interleaved_rope(rope: nn.Module) -> None:
    """Rotate pairs (x0, x1), (x2, x3), ... (GPT-J style) against caches built for halves."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        cos = rope.cos_cached[:, :length].to(x.dtype)
        sin = rope.sin_cached[:, :length].to(x.dtype)
        rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
        return x * cos + rotated * sin

    rope.forward = forward


def time_one_step_ahead(steps: int) -> Callable[[nn.Module], None]:
    def plant(dit: nn.Module) -> None:
        def shift(module, args):
            latent, mask, time = args
            return latent, mask, time + 1.0 / steps

        dit.register_forward_pre_hook(shift)

    return plant


def catalogue(steps: int = 4) -> dict[str, Mistake]:
    """The planted mistakes of the test suite, by name, each with the model path it is planted at."""
    mistakes = [
        Mistake(
            "unflipped ConvTranspose kernel",
            "decoder.unet.decoders.0.upsample",
            unflipped_conv_transpose,
            "any input: a 2x2 kernel mirrored changes every output block",
        ),
        Mistake(
            "q and k swapped",
            "encoder.layers.0.TemporalAttention",
            swapped_q_and_k,
            "at least 3 frames (with one key, softmax is 1 whatever q and k are)",
        ),
        Mistake(
            "LayerNorm epsilon 1e-5",
            "encoder.patch_embedding.norm",
            layernorm_epsilon(1e-5),
            "a patch variance near 1e-5 (in bf16, a difference of 1e-6 in 0.08 drowns in rounding)",
        ),
        Mistake(
            "RoPE halves interleaved",
            "encoder.layers.1.TemporalAttention.ROPE",
            interleaved_rope,
            "non-zero positions (at position 0 the rotation is the identity): at least 2 frames",
        ),
        Mistake(
            "square kernel not transposed",
            "decoder.patch_unembedding.linear",
            untransposed_square_kernel,
            "any input; loading cannot notice, since a D x D kernel has the same shape both ways",
        ),
        Mistake(
            "padding mask ignored", "layers.0.TemporalAttention", ignored_mask, "a padded frame in the clip"
        ),
        Mistake(
            "sampler time one step ahead",
            "",
            time_one_step_ahead(steps),
            "any input; isolated per step it is named at step 0",
        ),
    ]
    return {m.name: m for m in mistakes}
