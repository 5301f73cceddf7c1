"""Euler flow-matching sampler of the DiT and the predicted frame spacing (MODEL_SPEC section 5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


# one compiled step reused N times (op-by-op dispatch recompiles every primitive for each new shape)
@nnx.jit
def _velocity(dit, x: jax.Array, mask: jax.Array, t: jax.Array):
    return dit(x, mask, t)


def sample(dit, noise: jax.Array, mask: jax.Array, num_steps: int) -> tuple[jax.Array, jax.Array]:
    """`noise (B, T, P, L)`, `mask (B, T)` bool -> `(x (B, T, P, L) float32, gaps (B, T) float32)`.

    x_{i+1} = x_i + v(x_i, t=i/N) / N. The state stays float32 (the original kept it in bf16, rounding
    each of the N small updates); the model runs in its own compute dtype. The gaps are the last step's.
    """
    if num_steps < 1:
        raise ValueError(f"sample needs num_steps >= 1, got {num_steps}")
    x = jnp.asarray(noise, jnp.float32)
    compute_dtype = getattr(dit, "dtype", None) or jnp.float32
    batch = x.shape[0]
    gaps = None
    for i in range(num_steps):
        t = jnp.full((batch, 1), i / num_steps, jnp.float32)
        velocity, gaps = _velocity(dit, x.astype(compute_dtype), jnp.asarray(mask, bool), t)
        x = x + velocity.astype(jnp.float32) / num_steps
    return x, gaps.astype(jnp.float32)


def gaps_to_positions(gaps: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`gaps (B, T)` float or int, `mask (B, T)` bool -> `(positions (B, T) int32, total (B,) int32)`.

    Rounded; the first gap clamped >= 0 (the first kept frame may be frame 0), the rest >= 1 (two kept
    frames never share a slot); zero where `mask` is False. positions = cumsum, total = last valid
    position + 1 (0 for a row without valid frames). [2, 6, 6, 3, 5, 2, 2, 4] -> total 31.
    """
    rounded = jnp.round(jnp.asarray(gaps, jnp.float32)).astype(jnp.int32)
    floor = jnp.ones_like(rounded).at[:, 0].set(0)
    mask = jnp.asarray(mask, bool)
    clamped = jnp.where(mask, jnp.maximum(rounded, floor), 0)
    positions = jnp.cumsum(clamped, axis=1, dtype=jnp.int32)
    total = jnp.max(jnp.where(mask, positions, -1), axis=1) + 1
    return positions, total.astype(jnp.int32)
