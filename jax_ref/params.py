"""A module's state as a flat `{dotted name: numpy array}` dict, and back, strictly.

Names are the training code's tree paths without Orbax's `model.` prefix and `.value` suffix, list indices
as strings: `encoder.layers.0.TemporalAttention.qkv_projection.kernel` (the names of `common.tables`).
Walks the live module graph, so it behaves the same on every supported flax.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_ref.compat import get_value, set_value


def variables(module: nnx.Module) -> Iterator[tuple[str, nnx.Variable]]:
    """Every Variable (Params and RoPE caches) of `module` as `(dotted name, Variable)`, sorted by name."""
    found = {}
    for path, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Variable):
            found[".".join(str(part) for part in path)] = node
    yield from sorted(found.items())


def state_to_flat(module: nnx.Module) -> dict[str, np.ndarray]:
    """`{name: numpy array}` of every Param and RoPE cache, in the arrays' own dtype."""
    return {name: np.asarray(get_value(var)) for name, var in variables(module)}


def load_flat(module: nnx.Module, flat: Mapping[str, np.ndarray]) -> None:
    """Set every leaf of `module` from `flat` (cast to the leaf's dtype); any mismatch is a ValueError.

    Strict: a leaf missing from `flat`, a name `flat` has and the module lacks, or a shape that differs,
    all name the offending leaf, and nothing is written unless everything matches.
    """
    leaves = dict(variables(module))
    missing = sorted(set(leaves) - set(flat))
    unexpected = sorted(set(flat) - set(leaves))
    if missing or unexpected:
        raise ValueError(f"load_flat: missing {missing or 'none'}; unexpected {unexpected or 'none'}")
    for name, var in leaves.items():
        want = tuple(get_value(var).shape)
        if tuple(np.shape(flat[name])) != want:
            raise ValueError(f"load_flat: {name} has shape {np.shape(flat[name])}, the module wants {want}")
    for name, var in leaves.items():
        set_value(var, jnp.asarray(flat[name], dtype=get_value(var).dtype))


def _random_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    leaf = name.rpartition(".")[2]
    noise = rng.standard_normal(shape, dtype=np.float32)
    if leaf == "kernel":
        fan_in = int(np.prod(shape[:-1])) or 1  # Linear (in, out); Conv (kt, kh, kw, in, out)
        return noise / np.float32(np.sqrt(fan_in))
    if leaf == "scale":
        return 1 + np.float32(0.1) * noise
    if leaf == "bias":
        return np.float32(0.1) * noise
    return noise  # fill_token: about the size of a latent


def randomize(module: nnx.Module, seed: int = 0) -> None:
    """Overwrite every Param (zero-initialised ones too) with seeded random values; RoPE caches untouched.

    So that parity tests exercise every weight: a zero bias or an all-ones scale hides a conversion bug.
    Values depend only on the names, shapes and seed, in sorted-name order.
    """
    rng = np.random.default_rng(seed)
    for name, var in variables(module):
        if isinstance(var, nnx.Param):
            current = get_value(var)
            set_value(var, jnp.asarray(_random_value(name, tuple(current.shape), rng), dtype=current.dtype))


class _FixedKey:
    """Stands in for `nnx.Rngs` when only shapes are wanted: every stream returns the same key.

    A real `Rngs` traced by `eval_shape` updates its counter on every draw, and each update makes jax
    describe the whole trace so far (quadratic: 8 s for the published VAE against 1 s this way).
    """

    def __getattr__(self, stream: str):
        if stream.startswith("__"):
            raise AttributeError(stream)
        return lambda: jax.random.key(0)

    def __call__(self):
        return jax.random.key(0)


def abstract_model(cls, config=None, **kwargs) -> nnx.Module:
    """`cls(config, **kwargs)` with `jax.ShapeDtypeStruct` leaves, nothing allocated (an Orbax target)."""
    return nnx.eval_shape(lambda: cls(config, rngs=_FixedKey(), **kwargs))
