"""Transformer building blocks of both models (MODEL_SPEC section 2), channels last.

Attribute names are the parameter-tree names of the training code; they end up verbatim in checkpoints.
Shapes use the one legend of docs/ARCHITECTURE.md (B, T, P, D, S, N, d, ...).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from einops import rearrange, repeat
from flax import nnx

from common.precision import NormNumerics
from common.rope import rope_tables
from jax_ref.compat import get_value
from jax_ref.init import linear, small_kernel
from jax_ref.norms import LayerNorm


class PatchEmbedding(nnx.Module):
    """`(B, T, H, W, C) -> (B, T, P, D)` with `D = p*p*C`: patchify, `norm`, then `linear`."""

    def __init__(
        self,
        patch_size: int,
        channels: int,
        *,
        rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
    ):
        self.patch_size = patch_size
        self.dtype = dtype
        dim = patch_size * patch_size * channels
        self.norm = LayerNorm(dim, dtype=dtype, param_dtype=param_dtype, numerics=norm_numerics)
        self.linear = linear(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, video: jax.Array) -> jax.Array:
        p = self.patch_size
        x = rearrange(video, "b t (h p1) (w p2) c -> b t (h w) (p1 p2 c)", p1=p, p2=p)
        return self.linear(self.norm(x.astype(self.dtype)))


class PatchUnEmbedding(nnx.Module):
    """`(B, T, P, D) -> (features (B, T, H, W, C*u), video (B, T, H, W, C))`."""

    def __init__(
        self,
        height: int,
        width: int,
        patch_size: int,
        channels: int,
        upsample_rate: int,
        *,
        rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
    ):
        del norm_numerics  # no norm here; accepted for a uniform block signature
        self.grid = (height // patch_size, width // patch_size)
        self.patch_size = patch_size
        self.channels = channels
        self.upsample_rate = upsample_rate
        dim = patch_size * patch_size * channels
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear = linear(dim, dim, **kw)
        self.upsample = linear(dim, dim * upsample_rate, **kw)
        self.downsample = linear(channels * upsample_rate, channels, **kw)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.upsample(self.linear(x))
        p = self.patch_size
        features = rearrange(
            x,
            "b t (h w) (p1 p2 c u) -> b t (h p1) (w p2) (c u)",
            h=self.grid[0],
            w=self.grid[1],
            p1=p,
            p2=p,
            c=self.channels,
            u=self.upsample_rate,
        )
        return features, self.downsample(features)


class ROPE(nnx.Module):
    """Rotary embedding over axis 1 of `(B, S, N, d)`; position = sequence index, first S cache rows."""

    def __init__(self, head_dim: int, max_len: int):
        cos, sin = rope_tables(max_len, head_dim)
        # plain Variables, not Params: in checkpoints, never trained
        self.cos_cached = nnx.Variable(jnp.asarray(cos))
        self.sin_cached = nnx.Variable(jnp.asarray(sin))

    def __call__(self, x: jax.Array) -> jax.Array:
        s, half = x.shape[1], x.shape[-1] // 2
        cos = get_value(self.cos_cached)[:, :s].astype(x.dtype)
        sin = get_value(self.sin_cached)[:, :s].astype(x.dtype)
        rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin


RotaryEmbedding = ROPE  # the original's class name; `ROPE` is the attribute name in the tree


class Attention(nnx.Module):
    """`(B, S, D), mask (B, 1, 1, S) bool | None -> update (B, S, D)`; the caller adds the residual."""

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        qkv_features: int,
        max_len: int,
        *,
        rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
    ):
        self.num_heads = num_heads
        self.qkv_features = qkv_features
        head_dim = qkv_features // num_heads
        norm = dict(dtype=dtype, param_dtype=param_dtype, numerics=norm_numerics)
        lin = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.input_norm = LayerNorm(in_features, **norm)
        self.qkv_projection = linear(in_features, 3 * qkv_features, **lin)
        self.q_norm = LayerNorm(head_dim, use_bias=False, **norm)
        self.k_norm = LayerNorm(head_dim, use_bias=False, **norm)
        self.ROPE = ROPE(head_dim, max_len)
        self.out_projection = linear(qkv_features, in_features, kernel_init=small_kernel, **lin)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        qkv = self.qkv_projection(self.input_norm(x))
        q, k, v = (
            rearrange(part, "b s (n h) -> b s n h", n=self.num_heads) for part in jnp.split(qkv, 3, axis=-1)
        )
        q = self.ROPE(self.q_norm(q))
        k = self.ROPE(self.k_norm(k))
        scale = 1.0 / math.sqrt(q.shape[-1])
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)
        return self.out_projection(rearrange(out, "b s n h -> b s (n h)"))


class MLP(nnx.Module):
    """`(..., D) -> update (..., D)`: `norm`, `linear1`, SiLU, `linear2`."""

    def __init__(
        self,
        in_features: int,
        mlp_dim: int,
        *,
        rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
    ):
        lin = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = LayerNorm(in_features, dtype=dtype, param_dtype=param_dtype, numerics=norm_numerics)
        self.linear1 = linear(in_features, mlp_dim, **lin)
        self.linear2 = linear(mlp_dim, in_features, kernel_init=small_kernel, **lin)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(jax.nn.silu(self.linear1(self.norm(x))))


class FactoredAttention(nnx.Module):
    """`(B, T, P, D), mask (B, 1, 1, T) bool | None -> (B, T, P, D)`: temporal, then spatial attention.

    The residuals are added inside.

    Padded frames are hidden as keys only; their own outputs are still computed.
    """

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        qkv_features: int,
        mlp_dim: int,
        max_temporal_len: int,
        max_spatial_len: int,
        *,
        rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, norm_numerics=norm_numerics)
        self.SpatialAttention = Attention(in_features, num_heads, qkv_features, max_spatial_len, **kw)
        self.SpatialMLP = MLP(in_features, mlp_dim, **kw)
        self.TemporalAttention = Attention(in_features, num_heads, qkv_features, max_temporal_len, **kw)
        self.TemporalMLP = MLP(in_features, mlp_dim, **kw)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        b, t, s, _ = x.shape
        x = rearrange(x, "b t s c -> (b s) t c")
        if mask is not None:
            mask = repeat(mask, "b 1 1 t -> (b s) 1 1 t", s=s)
        x = x + self.TemporalAttention(x, mask)
        x = x + self.TemporalMLP(x)
        x = rearrange(x, "(b s) t c -> (b t) s c", b=b, s=s)
        x = x + self.SpatialAttention(x)
        x = x + self.SpatialMLP(x)
        return rearrange(x, "(b t) s c -> b t s c", b=b, t=t)


class GumbelSigmoidSTE(nnx.Module):
    """Hard 0/1 keep decisions from logits, no parameters.

    With a `key` (training): `round(sigmoid(logits + logistic noise))` in the forward pass, the gradient of
    the soft sigmoid in the backward pass (straight-through), so it is a Bernoulli(sigmoid(logits)) draw.
    Without (inference): `round(sigmoid(logits))`.
    """

    def __call__(self, logits: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        if key is None:
            return jnp.round(jax.nn.sigmoid(logits))
        # drawn flat: XLA:CPU compiles an N-d threefry draw many times slower than a 1-D one
        noise = (
            jax.random.logistic(key, (logits.size,), jnp.float32).reshape(logits.shape).astype(logits.dtype)
        )
        soft = jax.nn.sigmoid(logits + noise)
        return soft + jax.lax.stop_gradient(jnp.round(soft) - soft)
