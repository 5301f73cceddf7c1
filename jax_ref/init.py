"""Initialisers of the original (same distributions), cheap to run on CPU.

`jax.random` compiles one XLA program per parameter shape, and a 5-D conv-kernel draw takes XLA:CPU
seconds to compile, so building even a tiny model spent minutes in the compiler. With a concrete key
these draw in numpy (seeded from the key); under tracing (`nnx.eval_shape`, `nnx.jit`) they fall back
to flax's own initialisers. Values differ from flax's for the same seed; the distributions do not.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

zeros = nnx.initializers.zeros
# jax's truncated normal on [-2, 2] has this std; dividing by it restores the requested std
_TRUNCATED_STD = 0.87962566103423978


def _numpy_rng(key) -> np.random.Generator | None:
    """A numpy generator seeded by `key`, or None while tracing."""
    # an isinstance check, not try/except: jax builds a costly message for every tracer conversion error
    if isinstance(key, jax.core.Tracer):
        return None
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)  # new-style key, or a raw uint32 one
    data = np.asarray(jax.random.key_data(key) if typed else key)
    return np.random.default_rng(data.astype(np.uint32).ravel().tolist())


def _truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
    out = rng.standard_normal(shape, dtype=np.float32)
    outside = np.abs(out) > 2
    while outside.any():
        out[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
        outside = np.abs(out) > 2
    return out


def variance_scaling(scale: float):
    """Truncated normal, std `sqrt(scale / fan_in)`; fan_in = in features times the kernel window."""
    traced = nnx.initializers.variance_scaling(scale, "fan_in", "truncated_normal")

    def init(key, shape, dtype=jnp.float32):
        rng = _numpy_rng(key)
        if rng is None:
            return traced(key, shape, dtype)
        fan_in = shape[-2] * math.prod(shape[:-2])
        std = math.sqrt(scale / fan_in) / _TRUNCATED_STD
        return jnp.asarray(_truncated_normal(rng, tuple(shape)) * np.float32(std), dtype)

    return init


def normal(stddev: float):
    traced = nnx.initializers.normal(stddev)

    def init(key, shape, dtype=jnp.float32):
        rng = _numpy_rng(key)
        if rng is None:
            return traced(key, shape, dtype)
        return jnp.asarray(rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(stddev), dtype)

    return init


# flax's default for Linear and Conv kernels (lecun normal)
default_kernel = variance_scaling(1.0)
# residual-branch outputs of the original start 100x smaller, so a fresh block is close to the identity
small_kernel = variance_scaling(1e-2)

# flax layers with these defaults; any init can still be overridden per call
linear = functools.partial(nnx.Linear, kernel_init=default_kernel)
conv = functools.partial(nnx.Conv, kernel_init=default_kernel)
conv_transpose = functools.partial(nnx.ConvTranspose, kernel_init=default_kernel)
