"""The channels-last 3-D UNet that refines the decoder's upsampled video features (MODEL_SPEC section 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common.precision import MAX_GROUPS, NormNumerics
from jax_ref.compat import module_list
from jax_ref.init import conv, conv_transpose, zeros
from jax_ref.norms import GroupNorm

POOL = (1, 2, 2)  # halve H and W, never T


def max_pool(x: jax.Array) -> jax.Array:
    """`(B, T, H, W, C) -> (B, T, H/2, W/2, C)`, window = stride = (1, 2, 2), VALID."""
    window = (1, *POOL, 1)
    # A Python scalar init lets JAX recognise max-pooling (reduce_window_max), which is differentiable;
    # an array init becomes a generic reduce_window, which reverse-mode autodiff cannot go through.
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")


class ConvBlock3D(nnx.Module):
    """`conv` (kt, 3, 3) -> `norm` GroupNorm(min(8, out) groups) -> SiLU."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        temporal_kernel: int = 3,
        *,
        rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
    ):
        self.conv = conv(
            in_features,
            out_features,
            (temporal_kernel, 3, 3),
            padding="SAME",
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.norm = GroupNorm(
            out_features,
            min(MAX_GROUPS, out_features),
            dtype=dtype,
            param_dtype=param_dtype,
            numerics=norm_numerics,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.silu(self.norm(self.conv(x)))


class DownBlock3D(nnx.Module):
    """`(B, T, H, W, in) -> (pooled (B, T, H/2, W/2, out), skip (B, T, H, W, out))`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        temporal_kernel: int = 3,
        *,
        rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, norm_numerics=norm_numerics)
        self.conv1 = ConvBlock3D(in_features, out_features, temporal_kernel, **kw)
        self.conv2 = ConvBlock3D(out_features, out_features, temporal_kernel, **kw)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        skip = self.conv2(self.conv1(x))
        return max_pool(skip), skip


class UpBlock3D(nnx.Module):
    """`(B, T, H, W, in), skip (B, T, 2H, 2W, out) -> (B, T, 2H, 2W, out)`; upsampled first in the concat."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        temporal_kernel: int = 3,
        *,
        rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, norm_numerics=norm_numerics)
        self.upsample = conv_transpose(
            in_features,
            out_features,
            POOL,
            POOL,
            padding="SAME",
            transpose_kernel=False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.conv1 = ConvBlock3D(2 * out_features, out_features, temporal_kernel, **kw)
        self.conv2 = ConvBlock3D(out_features, out_features, temporal_kernel, **kw)

    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        up = self.upsample(x)
        x = jnp.concatenate([up, skip.astype(up.dtype)], axis=-1)
        return self.conv2(self.conv1(x))


class UNet(nnx.Module):
    """`(B, T, H, W, in_features) -> (B, T, H, W, out_features)`; H and W divisible by 2**num_levels."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        base_features: int = 16,
        num_levels: int = 3,
        temporal_kernel: int = 3,
        *,
        rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
    ):
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, norm_numerics=norm_numerics)
        conv_kw = dict(padding="SAME", dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        width = [base_features * 2**i for i in range(num_levels + 1)]
        self.patch_mixer = conv(in_features, in_features, (temporal_kernel, 7, 7), **conv_kw)
        self.encoders = module_list(
            DownBlock3D(in_features if i == 0 else width[i - 1], width[i], temporal_kernel, **kw)
            for i in range(num_levels)
        )
        self.bottleneck1 = ConvBlock3D(width[num_levels - 1], width[num_levels], temporal_kernel, **kw)
        self.bottleneck2 = ConvBlock3D(width[num_levels], width[num_levels], temporal_kernel, **kw)
        self.decoders = module_list(
            UpBlock3D(width[i + 1], width[i], temporal_kernel, **kw) for i in reversed(range(num_levels))
        )
        # zero-initialised: a fresh UNet adds nothing to the decoder's downsampled video
        self.final_conv = conv(
            base_features, out_features, (1, 1, 1), kernel_init=zeros, bias_init=zeros, **conv_kw
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.patch_mixer(x.astype(self.dtype))
        skips = []
        for block in self.encoders:
            x, skip = block(x)
            skips.append(skip)
        x = self.bottleneck2(self.bottleneck1(x))
        for block, skip in zip(self.decoders, reversed(skips), strict=True):
            x = block(x, skip)
        return self.final_conv(x)
