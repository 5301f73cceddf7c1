"""Capture every Flax submodule call (NNX and Linen) in eager mode, and replay single modules on given inputs.

NNX modules are plain Python objects called through their class's `__call__`, so for the duration of a
capture each module class gets a wrapper that records `(inputs, output)` of the instances tagged with a
path; everything else passes straight through. The tag is a static attribute, so it survives the
split/merge of `nnx.jit` (a jitted sampler step runs on copies of the modules).

Linen modules are captured through flax's own method interception (`nn.intercept_methods`): every
`__call__` of a module bound to a model's variables is recorded under the module's `path`, which is its
path in the parameter tree, so a Linen model and an NNX model of the same architecture pair up alike.

Captures run under `jax.disable_jit()`: values are concrete, and every op rounds as eager execution does
(XLA may fuse away bf16 roundings under jit), so reports can state one execution mode for the whole run.
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
from parity.jax_models import LinenModel

_ABSENT = object()


class JaxFramework:
    """What a case needs from a framework, JAX flavour (see `parity.suite.Case`)."""

    name = "jax"

    def asarray(self, array: np.ndarray) -> jax.Array:
        return jnp.asarray(array)

    def numpy(self, value: Any) -> np.ndarray:
        return np.asarray(jax.device_get(value))


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


def module_paths(models: Mapping[str, nnx.Module], several: bool | None = None) -> dict[str, nnx.Module]:
    """`{path: module}` of every module of every model (root included, as `""`); paths carry the model's
    name when the case runs `several` models (default: when `models` has more than one)."""
    found = {}
    several = len(models) > 1 if several is None else several
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


@contextmanager
def linen_recording(models: Mapping[str, LinenModel], recorder: Recorder) -> Iterator[dict[str, Any]]:
    """Within the block, every `__call__` of a module of a Linen model in `models` is reported to `recorder`
    under its parameter-tree path, and remembered on the model (unbound, with its variables) for replay.
    Yields the models bound to their variables, which is what the case calls."""
    from flax import linen as nn

    several = len(models) > 1
    owners: dict[int, tuple[str, LinenModel]] = {}  # id of a bound model's root scope -> (name, model)
    bound = {}
    for name, model in models.items():
        bound[name] = model.bound()
        owners[id(bound[name].scope.root)] = (name, model)
    active: set[str] = set()

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        owner = owners.get(id(module.scope.root)) if module.scope is not None else None
        if context.method_name != "__call__" or owner is None:
            return next_fun(*args, **kwargs)
        name, model = owner
        path = qualified(name, ".".join(str(p) for p in module.path), several)
        if path in active:  # a subclass calling super().__call__: one call
            return next_fun(*args, **kwargs)
        if path not in model.submodules:
            model.submodules[path] = (module.clone(parent=None), module.variables)
        active.add(path)
        recorder.begin(path)
        try:
            output = next_fun(*args, **kwargs)
        finally:
            active.discard(path)
        recorder.end(path, type(module).__name__, args, kwargs, output)
        return output

    with nn.intercept_methods(interceptor), jax.disable_jit():
        yield bound


class JaxSide:
    """One JAX run of a case: the fp32 reference or one bf16 variant. Models may be NNX or Linen."""

    framework = "jax"

    def __init__(self, name: str, models: Mapping[str, Any]):
        self.name = name
        self.models = dict(models)
        self.nnx = {k: m for k, m in self.models.items() if not isinstance(m, LinenModel)}
        self.linen = {k: m for k, m in self.models.items() if isinstance(m, LinenModel)}
        self.modules = module_paths(self.nnx, len(self.models) > 1)
        self.fw = JaxFramework()

    def capture(self, case, inputs: Mapping[str, np.ndarray], keep_inputs: bool = True, sink=None) -> Capture:
        recorder = JaxRecorder(case.step_path, keep_inputs)
        recorder.sink = sink
        native = {k: self.fw.asarray(v) for k, v in inputs.items()}
        with recording(self.modules, recorder), linen_recording(self.linen, recorder) as bound:
            output = case.run(self.fw, {**self.models, **bound}, native)
        recorder.capture.output = recorder.flatten("", output)
        return recorder.capture

    def replay(self, own: Call, reference: Call) -> dict[str, Recorded]:
        """Run the module of `own` alone on the reference's inputs (cast to this side's dtypes)."""
        args, kwargs = replay_inputs(own, reference, _to_jax)
        with jax.disable_jit():
            if own.path in self.modules:
                output = self.modules[own.path](*args, **kwargs)
            else:
                module, variables = self._linen_module(own.path)
                output = module.apply(variables, *args, **kwargs)
        return JaxRecorder().flatten(own.path, output)

    def _linen_module(self, path: str):
        for model in self.linen.values():
            if path in model.submodules:
                return model.submodules[path]
        raise KeyError(f"{path}: no module at this path was called in the capture")


def _to_jax(reference: Recorded, own: Recorded) -> jax.Array:
    return jnp.asarray(reference.value, dtype=jnp.dtype(own.dtype))
