"""Flax models of any kind as flat `{dotted name: array}` weights, and back: NNX modules and Linen modules.

Names are parameter-tree paths: an NNX module's `nnx.state` path (`encoder.layers.0.norm.scale`), a Linen
module's path in its `params` collection (`mlp.up.kernel`; other collections keep their name first,
`batch_stats.norm.mean`). A Linen module and an NNX module of the same architecture name their leaves
alike. A Linen model is held as a `LinenModel` (the module and its variables); a case gets it bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convert.trees import PARAMS, linen_tree
from convert.trees import flatten as linen_flat


def is_linen(module: Any) -> bool:
    from flax import linen

    return isinstance(module, linen.Module)


@dataclass
class LinenModel:
    """A Linen module with its variables. `submodules` collects `{path: (unbound module, variables)}` of
    every submodule seen called during a capture, so that each can be replayed alone."""

    module: Any
    variables: dict
    submodules: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def bound(self):
        return self.module.bind(self.variables)


def _nnx_variables(module) -> dict[str, Any]:
    from flax import nnx

    found = {}
    for path, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Variable):
            found[".".join(str(p) for p in path)] = node
    return dict(sorted(found.items()))


def _get(var):
    return var.get_value() if hasattr(var, "get_value") else var.value


def _set(var, value) -> None:
    if hasattr(var, "set_value"):
        var.set_value(value)
    else:
        var.value = value


def random_leaf(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A seeded random fp32 value for a parameter, by its leaf name: kernels scaled by fan-in, norm scales
    near 1, biases small, anything else standard normal. Never zero: a zero bias hides a conversion bug."""
    leaf = name.rpartition(".")[2]
    noise = rng.standard_normal(shape, dtype=np.float32)
    if leaf == "kernel":
        fan_in = int(np.prod(shape[:-1])) or 1  # Linear (in, out); Conv (..., in, out)
        return noise / np.float32(np.sqrt(fan_in))
    if leaf == "scale":
        return 1 + np.float32(0.1) * noise
    if leaf == "bias":
        return np.float32(0.1) * noise
    return noise


def _linen_init(subject, dtype, variant):
    import jax

    if subject.example_args is None:
        raise ValueError(
            f"subject {subject.name}: a Linen module creates its parameters on a call; give the subject "
            "example_args (the arguments of one call) or init_weights"
        )
    module = subject.build(dtype, variant)
    return module, module.init(jax.random.key(0), *subject.example_args())


def random_weights(subject, seed: int) -> dict[str, np.ndarray]:
    """Seeded random fp32 leaves for every parameter of the subject's JAX model (other variables, such as
    caches and statistics, keep the values the model is built with). Names are visited in sorted order."""
    import jax.numpy as jnp

    if subject.init_weights is not None:
        return dict(subject.init_weights(seed))
    rng = np.random.default_rng(seed)
    probe = subject.build(jnp.float32, None)
    if not is_linen(probe):
        from flax import nnx

        out = {}
        for name, var in _nnx_variables(probe).items():
            value = np.asarray(_get(var))
            if isinstance(var, nnx.Param):
                value = random_leaf(name, value.shape, rng)
            out[name] = value.astype(np.float32) if value.dtype.kind == "f" else value
        return out
    _, variables = _linen_init(subject, jnp.float32, None)
    flat = {k: np.asarray(v) for k, v in sorted(linen_flat(variables).items())}
    params = set(linen_flat({PARAMS: variables.get(PARAMS, {})}))
    return {
        k: random_leaf(k, v.shape, rng)
        if k in params
        else (v.astype(np.float32) if v.dtype.kind == "f" else v)
        for k, v in flat.items()
    }


def _strict(what: str, want: Mapping[str, tuple], flat: Mapping[str, np.ndarray]) -> None:
    missing = sorted(set(want) - set(flat))
    unexpected = sorted(set(flat) - set(want))
    if missing or unexpected:
        raise ValueError(f"{what}: missing {missing or 'none'}; unexpected {unexpected or 'none'}")
    for name, shape in want.items():
        if tuple(np.shape(flat[name])) != tuple(shape):
            raise ValueError(
                f"{what}: {name} has shape {np.shape(flat[name])}, the module wants {tuple(shape)}"
            )


def abstract_module(subject, dtype, variant: str | None):
    """A Linen module as built (it holds no arrays), or an NNX module with abstract leaves."""
    from flax import nnx

    linen = []

    def make():
        module = subject.build(dtype, variant)
        if is_linen(module):
            linen.append(module)
            return None
        return module

    module = nnx.eval_shape(make)
    return linen[0] if linen else module


def jax_model(subject, flat: Mapping[str, np.ndarray], dtype, variant: str | None):
    """The subject's JAX model in compute `dtype` holding exactly `flat` (strict: every leaf, no other).

    NNX modules are built abstractly (`nnx.eval_shape`: no initialiser runs, which in eager JAX would
    compile one kernel per shape) and then filled.
    """
    import jax
    import jax.numpy as jnp

    module = abstract_module(subject, dtype, variant)
    if is_linen(module):
        if subject.example_args is None:  # nothing to check the leaves against: take them as given
            return LinenModel(module, linen_tree({k: jnp.asarray(v) for k, v in flat.items()}))
        shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *subject.example_args()))
        abstract = linen_flat(shapes)
        _strict(f"subject {subject.name}", {k: v.shape for k, v in abstract.items()}, flat)
        arrays = {k: jnp.asarray(v, dtype=abstract[k].dtype) for k, v in flat.items()}
        return LinenModel(module, linen_tree(arrays, tuple(c for c in shapes if c != PARAMS)))
    leaves = _nnx_variables(module)
    _strict(f"subject {subject.name}", {k: _get(v).shape for k, v in leaves.items()}, flat)
    for name, var in leaves.items():
        _set(var, jnp.asarray(flat[name], dtype=_get(var).dtype))
    return module
