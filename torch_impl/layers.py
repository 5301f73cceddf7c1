"""Transformer building blocks shared by the VAE and the DiT (MODEL_SPEC section 2).

Attribute names are the checkpoint names: `Attention.qkv_projection` is stored as
`...TemporalAttention.qkv_projection.weight`. Everything is channels last.
Shapes use the one legend of docs/ARCHITECTURE.md (B, T, P, D, S, N, d, ...).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from common.rope import rope_tables
from torch_impl.norms import LayerNorm
from torch_impl.precision import bf16_product

# `variance_scaling(..., "truncated_normal")` divides by the std of a unit normal truncated to [-2, 2],
# so that the truncated draw still has the requested variance.
_TRUNCATED_STD = 0.87962566103423978
# The original initialises the layers that write into the residual stream 100x smaller in variance.
RESIDUAL_OUT_SCALE = 1e-2


def lecun_normal_(weight: torch.Tensor, fan_in: int, scale: float = 1.0) -> torch.Tensor:
    """Flax's default kernel init (`variance_scaling(scale, "fan_in", "truncated_normal")`) in place."""
    if weight.is_meta:  # nothing to draw; on meta, trunc_normal_'s ops would import torch._dynamo (~1 s)
        return weight
    std = math.sqrt(scale / fan_in) / _TRUNCATED_STD
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class Linear(nn.Linear):
    """`nn.Linear`; with bf16 weights the input is cast to bf16 and the bias added after the product's
    rounding, as flax's `Linear(dtype=bf16)` does (see `precision.bf16_product`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != torch.bfloat16:
            return super().forward(x)
        return bf16_product(F.linear, x, self.weight) + self.bias


def linear(in_features: int, out_features: int, *, scale: float = 1.0) -> Linear:
    """A `Linear` initialised like flax's: lecun-normal weight, zero bias."""
    layer = Linear(in_features, out_features)
    lecun_normal_(layer.weight, in_features, scale)
    nn.init.zeros_(layer.bias)
    return layer


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean key mask (True = attend) -> additive float mask for SDPA.

    JAX replaces masked logits by `-0.7 * finfo(float32).max` instead of -inf; adding that finite number
    swamps any real logit, so partly masked rows ignore masked keys and a fully masked row averages
    all values uniformly instead of turning into NaN.
    """
    big = 0.7 * min(torch.finfo(torch.float32).max, torch.finfo(dtype).max)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, -big)


class PatchEmbedding(nn.Module):
    """`(B,T,H,W,C) -> (B,T,P,D)` with D = patch_size**2 * C: norm first, then linear."""

    def __init__(self, patch_size: int, channels: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        dim = patch_size * patch_size * channels
        self.norm = LayerNorm(dim)
        self.linear = linear(dim, dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = rearrange(video, "b t (h p1) (w p2) c -> b t (h w) (p1 p2 c)", p1=p, p2=p)
        return self.linear(self.norm(x.to(self.linear.weight.dtype)))


class PatchUnEmbedding(nn.Module):
    """`(B,T,P,D) -> (features (B,T,H,W,C*u), video (B,T,H,W,C))`."""

    def __init__(self, height: int, width: int, patch_size: int, channels: int, upsample_rate: int) -> None:
        super().__init__()
        self.grid_h, self.grid_w = height // patch_size, width // patch_size
        self.patch_size, self.upsample_rate = patch_size, upsample_rate
        dim = patch_size * patch_size * channels
        self.linear = linear(dim, dim)
        self.upsample = linear(dim, dim * upsample_rate)
        self.downsample = linear(channels * upsample_rate, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.upsample(self.linear(x))
        p = self.patch_size
        features = rearrange(
            x,
            "b t (h w) (p1 p2 c u) -> b t (h p1) (w p2) (c u)",
            h=self.grid_h,
            w=self.grid_w,
            p1=p,
            p2=p,
            u=self.upsample_rate,
        )
        return features, self.downsample(features)


@functools.lru_cache(maxsize=32)
def _rope_tables(max_len: int, head_dim: int):
    return rope_tables(max_len, head_dim)


class ROPE(nn.Module):
    """Rotary embedding on `(B,S,N,d)`; position = sequence index, the first S rows of the caches.

    `cos_cached`/`sin_cached` `(1, max_len, 1, d)` are float32 from `common.rope.rope_tables`, registered
    non-persistent: the published weight files do not hold them. They are cast to q's dtype at use.
    """

    def __init__(self, head_dim: int, max_len: int) -> None:
        super().__init__()
        self.head_dim, self.max_len = head_dim, max_len
        self.reset_caches()

    def reset_caches(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the caches in float32, e.g. after building the model on the meta device."""
        cos, sin = _rope_tables(self.max_len, self.head_dim)
        self.register_buffer("cos_cached", torch.tensor(cos, device=device), persistent=False)
        self.register_buffer("sin_cached", torch.tensor(sin, device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence of {length} is longer than this RoPE's max_len {self.max_len}")
        cos = self.cos_cached[:, :length].to(x.dtype)
        sin = self.sin_cached[:, :length].to(x.dtype)
        half = self.head_dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with QK-norm and RoPE; returns the update, not x + update."""

    def __init__(self, in_features: int, num_heads: int, qkv_features: int, max_len: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = qkv_features // num_heads
        self.input_norm = LayerNorm(in_features)
        self.qkv_projection = linear(in_features, 3 * qkv_features)
        self.out_projection = linear(qkv_features, in_features, scale=RESIDUAL_OUT_SCALE)
        self.q_norm = LayerNorm(head_dim, bias=False)
        self.k_norm = LayerNorm(head_dim, bias=False)
        self.ROPE = ROPE(head_dim, max_len)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x `(B,S,D)`, mask `(B,1,1,S)` bool (True = attend) or None -> `(B,S,D)`."""
        qkv = self.qkv_projection(self.input_norm(x))
        q, k, v = rearrange(qkv, "b s (three n d) -> three b s n d", three=3, n=self.num_heads)
        q = self.ROPE(self.q_norm(q))
        k = self.ROPE(self.k_norm(k))
        bias = None if mask is None else attention_bias(mask, q.dtype)
        q, k, v = (rearrange(t, "b s n d -> b n s d") for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out_projection(rearrange(out, "b n s d -> b s (n d)"))


class MLP(nn.Module):
    """norm -> linear1 -> SiLU -> linear2; returns the update."""

    def __init__(self, in_features: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm(in_features)
        self.linear1 = linear(in_features, mlp_dim)
        self.linear2 = linear(mlp_dim, in_features, scale=RESIDUAL_OUT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.silu(self.linear1(self.norm(x))))


class FactoredAttention(nn.Module):
    """Temporal attention + MLP over frames of each patch, then spatial attention + MLP within frames.

    Residuals are added inside. Masked (padding) frames are hidden only as temporal keys; their own
    outputs are still computed.
    """

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        qkv_features: int,
        mlp_dim: int,
        max_temporal_len: int,
        max_spatial_len: int,
    ) -> None:
        super().__init__()
        self.SpatialAttention = Attention(in_features, num_heads, qkv_features, max_spatial_len)
        self.SpatialMLP = MLP(in_features, mlp_dim)
        self.TemporalAttention = Attention(in_features, num_heads, qkv_features, max_temporal_len)
        self.TemporalMLP = MLP(in_features, mlp_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x `(B,T,P,D)`, mask `(B,1,1,T)` bool or None -> `(B,T,P,D)`."""
        b, _, p, _ = x.shape
        x = rearrange(x, "b t p c -> (b p) t c")
        if mask is not None:
            mask = repeat(mask, "b 1 1 t -> (b p) 1 1 t", p=p)
        x = x + self.TemporalAttention(x, mask)
        x = x + self.TemporalMLP(x)
        x = rearrange(x, "(b p) t c -> (b t) p c", b=b)
        x = x + self.SpatialAttention(x)
        x = x + self.SpatialMLP(x)
        return rearrange(x, "(b t) p c -> b t p c", b=b)


class GumbelSigmoidSTE(nn.Module):
    """Hard 0/1 decision from logits with a straight-through gradient; no parameters.

    Stochastic (default in training mode): add logistic noise `log u - log(1-u)`, sigmoid, round; the
    forward value is the hard decision, the gradient that of the soft sigmoid. With `logits = logit(p)`
    the decision is a Bernoulli(p) draw. Deterministic (eval mode): `round(sigmoid(logits))`, i.e.
    keep iff p > 0.5.
    """

    def forward(
        self,
        logits: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        stochastic: bool | None = None,
    ) -> torch.Tensor:
        """`noise`: optional uniform [0,1) draws shaped like `logits`, else drawn from `generator`."""
        if not (self.training if stochastic is None else stochastic):
            return torch.round(torch.sigmoid(logits))
        if noise is None:
            noise = torch.rand(logits.shape, generator=generator, device=logits.device)
        u = noise.float().clamp(torch.finfo(torch.float32).tiny, 1 - 1e-7)
        soft = torch.sigmoid(logits + (torch.log(u) - torch.log1p(-u)).to(logits.dtype))
        return soft + (torch.round(soft) - soft).detach()
