"""Capture every Flax NNX submodule call in eager mode, and replay single modules on given inputs.

NNX modules are plain Python objects called through their class's `__call__`, so for the duration of a
capture each module class gets a wrapper that records `(inputs, output)` of the instances it knows by
path; everything else passes straight through. Values are concrete because nothing is jitted: captured
runs are eager by design (jit would hand us tracers and may fuse away bf16 roundings).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from parity.capture import Call, Capture, Recorded, Recorder, as_numpy, qualified, replay_inputs
from parity.structure import map_leaves

_ABSENT = object()


class JaxFramework:
    """What a case needs from a framework, JAX flavour (see `parity.cases`)."""

    name = "jax"

    def __init__(self):
        import jax_ref

        self.ns = jax_ref

    def asarray(self, array: np.ndarray) -> jax.Array:
        return jnp.asarray(array)

    def numpy(self, value: Any) -> np.ndarray:
        return np.asarray(jax.device_get(value))

    def fill_token(self, vae) -> jax.Array:
        return vae.fill_token.value


class JaxRecorder(Recorder):
    def record_array(self, path: str, leaf: Any, keep_value: bool) -> Recorded | Any:
        if isinstance(leaf, jax.Array | np.ndarray):
            value = as_numpy(jax.device_get(leaf)) if keep_value else None
            return Recorded(str(leaf.dtype), tuple(leaf.shape), value)
        return leaf


def module_paths(models: Mapping[str, nnx.Module]) -> dict[str, nnx.Module]:
    """`{path: module}` of every module of every model (root included, as `""`)."""
    found = {}
    several = len(models) > 1
    for name, model in models.items():
        for parts, node in nnx.iter_graph(model):
            if isinstance(node, nnx.Module):
                found[qualified(name, ".".join(str(p) for p in parts), several)] = node
    return found


@contextmanager
def recording(modules: Mapping[str, nnx.Module], recorder: Recorder) -> Iterator[Recorder]:
    """Within the block, every call of a module in `modules` is reported to `recorder`."""
    path_of = {id(module): path for path, module in modules.items()}
    active: set[int] = set()
    classes = {type(m) for m in modules.values() if callable(getattr(type(m), "__call__", None))}
    # resolve every class's __call__ before patching any, so a subclass never wraps a wrapper
    saved = {cls: (cls.__dict__.get("__call__", _ABSENT), cls.__call__) for cls in classes}

    def wrap(resolved):
        def __call__(self, *args, **kwargs):
            path = path_of.get(id(self))
            if path is None or id(self) in active:
                return resolved(self, *args, **kwargs)
            active.add(id(self))
            recorder.begin(path)
            try:
                output = resolved(self, *args, **kwargs)
            finally:
                active.discard(id(self))
            recorder.end(path, type(self).__name__, args, kwargs, output)
            return output

        return __call__

    for cls, (_, resolved) in saved.items():
        cls.__call__ = wrap(resolved)
    try:
        yield recorder
    finally:
        for cls, (own, _) in saved.items():
            if own is _ABSENT:
                delattr(cls, "__call__")
            else:
                cls.__call__ = own


class JaxSide:
    """One JAX run of a case: the fp32 reference or a bf16 run with one flax-era norm numerics."""

    framework = "jax"

    def __init__(self, name: str, models: Mapping[str, nnx.Module]):
        self.name = name
        self.models = dict(models)
        self.modules = module_paths(self.models)
        self.fw = JaxFramework()

    def capture(self, case, inputs: Mapping[str, np.ndarray], keep_inputs: bool = True) -> Capture:
        recorder = JaxRecorder(case.step_path, keep_inputs)
        native = {k: self.fw.asarray(v) for k, v in inputs.items()}
        with recording(self.modules, recorder):
            output = case.run(self.fw, self.models, native)
        recorder.capture.output = recorder.flatten("", output)
        return recorder.capture

    def replay(self, own: Call, reference: Call) -> dict[str, Recorded]:
        """Run the module of `own` alone on the reference's inputs (cast to this side's dtypes)."""
        args, kwargs = replay_inputs(own, reference, _to_jax)
        output = self.modules[own.path](*args, **kwargs)
        recorder = JaxRecorder()
        return recorder.flatten(own.path, output)


def _to_jax(reference: Recorded, own: Recorded) -> jax.Array:
    return jnp.asarray(reference.value, dtype=jnp.dtype(own.dtype))


def jax_tree(value: Any) -> Any:
    """Numpy leaves -> jax arrays, structure kept (for callers that build inputs by hand)."""
    return map_leaves(value, lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x)
