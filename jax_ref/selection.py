"""Which latent frames to keep, and the packed form they are stored in (MODEL_SPEC section 4).

All batched with array ops; the only host round trip is K, the packed length, which sets an array shape.
Packing and placing are compiled once per shape (op-by-op dispatch would compile every primitive).
Shapes use the one legend of docs/ARCHITECTURE.md (K: kept slots, the largest kept count of the batch).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("threshold", "bernoulli", "topk")


class Compressed(NamedTuple):
    """Kept latent frames `(B, K, P, L)` in time order, their gaps `(B, K)` int32, which slots are real
    `(B, K)` bool, and the frame count `T` of the clip they came from."""

    kept: jax.Array
    gaps: jax.Array
    kept_valid: jax.Array
    num_frames: int


def _rank_desc(scores: jax.Array) -> jax.Array:
    """Rank of each entry along axis 1 in descending order, ties to the earlier index: `(B, T)` int."""
    order = jnp.argsort(-scores, axis=1, stable=True)
    return jnp.argsort(order, axis=1, stable=True)


def select_frames(
    prob: jax.Array, valid: jax.Array, mode: str, k: int | None = None, noise: jax.Array | None = None
) -> jax.Array:
    """`prob (B, T)`, `valid (B, T)` bool -> keep `(B, T)` bool.

    threshold: `p > 0.5`; bernoulli: `noise < p` with `noise` uniform [0, 1) `(B, T)`; topk: the `k` most
    probable valid frames. Padded frames are never kept; a row with no kept frame keeps its most probable
    valid one (ties to the earlier frame), so `gaps[0]` is always defined. A row without valid frames keeps
    none.
    """
    prob = jnp.asarray(prob, jnp.float32)
    valid = jnp.asarray(valid, bool)
    scores = jnp.where(valid, prob, -jnp.inf)
    if mode == "threshold":
        keep = prob > 0.5
    elif mode == "bernoulli":
        if noise is None:
            raise ValueError("select_frames(mode='bernoulli') needs `noise`, uniform [0, 1) of shape (B, T)")
        keep = jnp.asarray(noise) < prob
    elif mode == "topk":
        if k is None or k < 1:
            raise ValueError(f"select_frames(mode='topk') needs k >= 1, got {k!r}")
        keep = _rank_desc(scores) < k
    else:
        raise ValueError(f"unknown selection mode {mode!r}; choose one of {', '.join(MODES)}")
    keep = keep & valid
    best = jax.nn.one_hot(jnp.argmax(scores, axis=1), prob.shape[1], dtype=bool) & valid
    return jnp.where(keep.any(axis=1, keepdims=True), keep, best)


def pack_kept(latent: jax.Array, keep: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`latent (B, T, P, L)`, `keep (B, T)` -> `(kept (B, K, P, L), gaps (B, K) int32, kept_valid (B, K))`.

    K is the largest kept count of the batch; kept frames move to the front in time order, padding slots
    are zero. `gaps[:, 0]` = index of the first kept frame, `gaps[:, i]` = distance from kept frame i-1.
    """
    keep = jnp.asarray(keep, bool)
    num_kept = int(np.max(np.asarray(keep).sum(axis=1), initial=0))
    return _pack(latent, keep, num_kept)


@functools.partial(jax.jit, static_argnums=2)
def _pack(latent: jax.Array, keep: jax.Array, num_kept: int):
    counts = keep.sum(axis=1)
    # a stable sort of "not kept" puts kept indices first, still in time order
    index = jnp.argsort(~keep, axis=1, stable=True)[:, :num_kept]
    kept_valid = jnp.arange(num_kept)[None, :] < counts[:, None]
    kept = jnp.take_along_axis(latent, index[:, :, None, None], axis=1)
    kept = jnp.where(kept_valid[:, :, None, None], kept, jnp.zeros((), latent.dtype))
    previous = jnp.concatenate([jnp.zeros_like(index[:, :1]), index[:, :-1]], axis=1)
    gaps = jnp.where(kept_valid, index - previous, 0).astype(jnp.int32)
    return kept, gaps, kept_valid


def place_kept(
    kept: jax.Array, gaps: jax.Array, kept_valid: jax.Array, num_frames: int, fill_token: jax.Array
) -> jax.Array:
    """-> `(B, num_frames, P, L)` in `kept`'s dtype: `fill_token` everywhere, kept frames at cumsum(gaps)."""
    return _place(
        kept, jnp.asarray(gaps), jnp.asarray(kept_valid, bool), int(num_frames), jnp.asarray(fill_token)
    )


@functools.partial(jax.jit, static_argnums=3)
def _place(kept: jax.Array, gaps: jax.Array, kept_valid: jax.Array, num_frames: int, fill_token: jax.Array):
    b, _, hw, dim = kept.shape
    out = jnp.broadcast_to(
        jnp.asarray(fill_token, kept.dtype).reshape(1, 1, -1, dim), (b, num_frames, hw, dim)
    )
    positions = jnp.cumsum(jnp.asarray(gaps, jnp.int32), axis=1)
    # padding slots point past the end and are dropped, so they cannot overwrite a real frame
    positions = jnp.where(kept_valid, positions, num_frames)
    batch = jnp.arange(b)[:, None]
    return out.at[batch, positions].set(kept, mode="drop")
