"""Capture every Flax NNX submodule call in eager mode, and replay single modules on given inputs.

NNX modules are plain Python objects called through their class's `__call__`, so for the duration of a
capture each module class gets a wrapper that records `(inputs, output)` of the instances tagged with a
path; everything else passes straight through. The tag is a static attribute, so it survives the
split/merge of `nnx.jit` (a jitted sampler step runs on copies of the modules). Captures run under
`jax.disable_jit()`: values are concrete, and every op rounds as eager execution does (XLA may fuse
away bf16 roundings under jit), so reports can state one execution mode for the whole run.
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
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # one layer's output is the next one's input, the very same immutable array: store it once
        self._seen: dict[int, tuple[Any, Recorded]] = {}

    def record_array(self, path: str, leaf: Any, keep_value: bool) -> Recorded | Any:
        if not isinstance(leaf, jax.Array | np.ndarray):
            return leaf
        if not keep_value:
            return Recorded(str(leaf.dtype), tuple(leaf.shape))
        if self.sink is not None:  # a trace stores each array once itself; holding them here would not bound
            return Recorded(str(leaf.dtype), tuple(leaf.shape), as_numpy(jax.device_get(leaf)))
        if isinstance(leaf, jax.Array) and id(leaf) in self._seen:
            return self._seen[id(leaf)][1]
        recorded = Recorded(str(leaf.dtype), tuple(leaf.shape), as_numpy(jax.device_get(leaf)))
        if isinstance(leaf, jax.Array):
            self._seen[id(leaf)] = (leaf, recorded)  # holding `leaf` keeps its id from being reused
        return recorded


def module_paths(models: Mapping[str, nnx.Module]) -> dict[str, nnx.Module]:
    """`{path: module}` of every module of every model (root included, as `""`)."""
    found = {}
    several = len(models) > 1
    for name, model in models.items():
        for parts, node in nnx.iter_graph(model):
            if isinstance(node, nnx.Module):
                found[qualified(name, ".".join(str(p) for p in parts), several)] = node
    return found


_TAG = "_parity_path"


def _calls(cls: type) -> bool:
    """Whether instances of `cls` are callable modules (containers like `nnx.List` are not)."""
    return any("__call__" in base.__dict__ for base in cls.__mro__ if base is not object)


@contextmanager
def recording(modules: Mapping[str, nnx.Module], recorder: Recorder) -> Iterator[Recorder]:
    """Within the block (run eagerly), every call of a module in `modules` is reported to `recorder`."""
    active: set[int] = set()
    classes = {type(m) for m in modules.values() if _calls(type(m))}
    # resolve every class's __call__ before patching any, so a subclass never wraps a wrapper
    saved = {cls: (cls.__dict__.get("__call__", _ABSENT), cls.__call__) for cls in classes}

    def wrap(resolved):
        def __call__(self, *args, **kwargs):
            path = getattr(self, _TAG, None)
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

    for path, module in modules.items():
        setattr(module, _TAG, path)
    for cls, (_, resolved) in saved.items():
        cls.__call__ = wrap(resolved)
    try:
        with jax.disable_jit():
            yield recorder
    finally:
        for cls, (own, _) in saved.items():
            if own is _ABSENT:
                delattr(cls, "__call__")
            else:
                cls.__call__ = own
        for module in modules.values():
            if hasattr(module, _TAG):
                delattr(module, _TAG)


class JaxSide:
    """One JAX run of a case: the fp32 reference or a bf16 run with one flax-era norm numerics."""

    framework = "jax"

    def __init__(self, name: str, models: Mapping[str, nnx.Module]):
        self.name = name
        self.models = dict(models)
        self.modules = module_paths(self.models)
        self.fw = JaxFramework()

    def capture(self, case, inputs: Mapping[str, np.ndarray], keep_inputs: bool = True, sink=None) -> Capture:
        recorder = JaxRecorder(case.step_path, keep_inputs)
        recorder.sink = sink
        native = {k: self.fw.asarray(v) for k, v in inputs.items()}
        with recording(self.modules, recorder):
            output = case.run(self.fw, self.models, native)
        recorder.capture.output = recorder.flatten("", output)
        return recorder.capture

    def replay(self, own: Call, reference: Call) -> dict[str, Recorded]:
        """Run the module of `own` alone on the reference's inputs (cast to this side's dtypes)."""
        args, kwargs = replay_inputs(own, reference, _to_jax)
        with jax.disable_jit():
            output = self.modules[own.path](*args, **kwargs)
        recorder = JaxRecorder()
        return recorder.flatten(own.path, output)


def _to_jax(reference: Recorded, own: Recorded) -> jax.Array:
    return jnp.asarray(reference.value, dtype=jnp.dtype(own.dtype))
