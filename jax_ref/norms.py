"""LayerNorm and GroupNorm with the flax-era arithmetic chosen explicitly (MODEL_SPEC section 7).

flax changed its norms in 0.12.1: before, scale and bias stay in param dtype (float32); after, input,
scale and bias are first cast to the compute dtype. Which one reproduces a checkpoint depends on the flax
it was evaluated with, so the choice is an argument here and never follows the installed flax. The
operations mirror flax's `_compute_stats` / `_normalize` step for step, so the result is bit-identical
to `nnx.LayerNorm` / `nnx.GroupNorm` of the matching era.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common.precision import NORM_EPSILON, NormNumerics
from jax_ref.compat import get_value


def _cast_inputs(numerics: NormNumerics, dtype, x, scale, bias):
    if numerics is NormNumerics.FLAX_0_12_1 and dtype is not None:
        cast = lambda a: None if a is None else jnp.asarray(a, dtype)  # noqa: E731
        return cast(x), cast(scale), cast(bias)
    return x, scale, bias


def _stats(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """Mean and one-pass variance `E[x^2] - E[x]^2` (clipped at 0) in at least float32."""
    x = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
    mean = x.mean(axes)
    mean2 = (x * x).mean(axes)
    return mean, jnp.maximum(0.0, mean2 - mean * mean)


def _normalize(x, mean, var, scale, bias, epsilon, dtype):
    """`(x - mean) * (rsqrt(var + eps) * scale) + bias`, cast to `dtype` (or the promoted input type)."""
    y = x - mean
    mul = jax.lax.rsqrt(var + epsilon)
    args = [x]
    if scale is not None:
        mul = mul * scale
        args.append(scale)
    y = y * mul
    if bias is not None:
        y = y + bias
        args.append(bias)
    out_dtype = dtype if dtype is not None else jnp.result_type(*args)
    return jnp.asarray(y, out_dtype)


class LayerNorm(nnx.Module):
    """Normalises the last axis: `(..., num_features) -> (..., num_features)`."""

    def __init__(
        self,
        num_features: int,
        *,
        use_bias: bool = True,
        epsilon: float = NORM_EPSILON,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        numerics: NormNumerics = NormNumerics.FLAX_0_10,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs  # deterministic init; accepted so every block has the same constructor shape
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.numerics = NormNumerics.parse(numerics)
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = None if self.bias is None else get_value(self.bias)
        x, scale, bias = _cast_inputs(self.numerics, self.dtype, x, get_value(self.scale), bias)
        mean, var = _stats(x, (-1,))
        return _normalize(x, mean[..., None], var[..., None], scale, bias, self.epsilon, self.dtype)


class GroupNorm(nnx.Module):
    """`(B, ..., C) -> (B, ..., C)`; statistics per sample over every non-batch axis and the group's channels.

    For a video `(B, T, H, W, C)` that means over T, H, W: each frame's output depends on all frames.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int,
        *,
        epsilon: float = NORM_EPSILON,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        numerics: NormNumerics = NormNumerics.FLAX_0_10,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs
        if num_features % num_groups:
            raise ValueError(f"GroupNorm: {num_features} features do not split into {num_groups} groups")
        self.num_features = num_features
        self.num_groups = num_groups
        self.epsilon = epsilon
        self.dtype = dtype
        self.numerics = NormNumerics.parse(numerics)
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        scale, bias = get_value(self.scale), get_value(self.bias)
        x, scale, bias = _cast_inputs(self.numerics, self.dtype, x, scale, bias)
        group_size = self.num_features // self.num_groups
        grouped = x.reshape(*x.shape[:-1], self.num_groups, group_size)
        # axes 1 .. ndim-2 of x, plus the channels within a group; the group axis survives
        mean, var = _stats(grouped, (*range(1, x.ndim - 1), grouped.ndim - 1))
        stats_shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (self.num_features,)
        mean = jnp.repeat(mean, group_size, axis=1).reshape(stats_shape)
        var = jnp.repeat(var, group_size, axis=1).reshape(stats_shape)
        return _normalize(x, mean, var, scale, bias, self.epsilon, self.dtype)
