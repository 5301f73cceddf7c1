"""What a capture records, framework-free: every submodule call by parameter-tree path, in completion order.

A path is the dotted attribute path from the model root (`encoder.layers.0.TemporalAttention`), which
is both the torch state-dict prefix and the flax `nnx.state` path, so the two frameworks' calls pair up by
name. A module called several times (the RoPE of q and then of k, every layer once per sampler step)
gets one entry per call: `ROPE` and `ROPE#1`, and `step3/...` inside the fourth sampler step.
Arrays are stored as numpy in the reference layout (channels last); floats widened to float32, which holds
a bfloat16 exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.structure import map_leaves, named_leaves

STEP_PREFIX = "step"


def call_key(path: str, step: int | None, repeat: int) -> str:
    key = path if repeat == 0 else f"{path}#{repeat}"
    return key if step is None else f"{STEP_PREFIX}{step}/{key}"


def display_path(path: str, kind: str) -> str:
    """The root module has the empty path; show its class instead (`(VideoDiT)`, `dit/(VideoDiT)`)."""
    return f"{path}({kind})" if path == "" or path.endswith("/") else path


@dataclass(frozen=True)
class Recorded:
    """One array as a side saw it: its own dtype name, its value in the reference layout (or None when
    values were not kept)."""

    dtype: str
    shape: tuple[int, ...]
    value: np.ndarray | None = None


@dataclass
class Call:
    path: str
    kind: str  # class name on the side that made the call
    step: int | None
    repeat: int
    inputs: tuple[tuple, dict]  # (args, kwargs); arrays as Recorded, other values as passed
    outputs: dict[str, Recorded]  # output suffix ("", "[0]", ".kept") -> array

    @property
    def key(self) -> str:
        return call_key(self.path, self.step, self.repeat)

    def input_arrays(self) -> list[Recorded]:
        return [leaf for _, leaf in named_leaves(self.inputs) if isinstance(leaf, Recorded)]


@dataclass
class Capture:
    calls: dict[str, Call] = field(default_factory=dict)  # insertion order = order of completion
    output: dict[str, Recorded] = field(default_factory=dict)  # what the case itself returned


def as_numpy(value: Any) -> np.ndarray:
    """A framework array already moved to host numpy, widened so metrics see exact values."""
    array = np.asarray(value)
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        return array.astype(np.float32) if array.dtype != np.float64 else array
    return array


class Recorder:
    """Framework-free bookkeeping of one capture; the framework side supplies `record_array`.

    `step_path` names the module whose calls are sampler steps (a diffusion model's root); every call
    made while it runs belongs to that step. Only the outermost call of an instance is recorded, so a
    subclass calling `super().__call__` is one call, not two.
    """

    def __init__(self, step_path: str | None = None, keep_inputs: bool | Callable[[str], bool] = True):
        self.capture = Capture()
        self.step_path = step_path
        self.keep_inputs = keep_inputs
        # `sink(call) -> call | None`: takes each finished call (a trace writes its arrays out and hands
        # back the call without values, or None to leave it out); None keeps every call in memory
        self.sink: Callable[[Call], Call | None] | None = None
        self._steps_started = 0
        self._step: int | None = None
        self._repeats: dict[tuple[int | None, str], int] = {}

    def record_array(self, path: str, leaf: Any, keep_value: bool) -> Recorded | Any:
        """A `Recorded` for a framework array, anything else returned unchanged."""
        raise NotImplementedError

    def begin(self, path: str) -> None:
        if path == self.step_path:
            self._step = self._steps_started
            self._steps_started += 1

    def end(self, path: str, kind: str, args: tuple, kwargs: dict, output: Any) -> None:
        step = self._step
        repeat = self._repeats.get((step, path), 0)
        self._repeats[(step, path)] = repeat + 1
        keep = self.keep_inputs(path) if callable(self.keep_inputs) else self.keep_inputs
        seen = []  # every array after the call's first is kept all the same (see `replay_inputs`)

        def record(leaf):
            recorded = self.record_array(path, leaf, keep or bool(seen))
            if isinstance(recorded, Recorded):
                seen.append(recorded)
            return recorded

        inputs = map_leaves((tuple(args), dict(kwargs)), record)
        outputs = self.flatten(path, output)
        call = Call(path, kind, step, repeat, inputs, outputs)
        if path == self.step_path:
            self._step = None
        if self.sink is not None:
            call = self.sink(call)
        if call is not None:
            self.capture.calls[call.key] = call

    def flatten(self, path: str, output: Any) -> dict[str, Recorded]:
        out = {}
        for suffix, leaf in named_leaves(output):
            recorded = self.record_array(path, leaf, True)
            if not isinstance(recorded, Recorded):  # a Python number among the outputs (num_frames)
                value = np.asarray(recorded)
                recorded = Recorded(value.dtype.name, value.shape, value)
            out[suffix] = recorded
        return out


def qualified(model_name: str, path: str, several_models: bool) -> str:
    """Paths of a case that runs two models (DiT then VAE) carry the model's name: `vae/decoder.unet`."""
    return f"{model_name}/{path}" if several_models else path


def replay_inputs(own: Call, reference: Call, convert) -> tuple[tuple, dict]:
    """`own`'s (args, kwargs) with every array replaced by the reference's array at the same position,
    converted by `convert(reference_recorded, own_recorded)` into the side's own dtype and layout.

    Two implementations written independently may hand a module different arguments: transformers'
    torch GPT2Block gets the hidden states, the cache positions and a 4-D causal mask, its Flax twin the
    hidden states alone. When the counts differ, the first array (the activation) is the reference's and
    every other array is the side's own, as it was in the side's own run (the recorder keeps those).
    """
    references = reference.input_arrays()
    own_count, ref_count = len(own.input_arrays()), len(references)
    if own_count != ref_count:
        if not own_count or not ref_count:
            raise ValueError(f"{own.key}: called with {own_count} arrays here, {ref_count} in the reference")
        position = iter(range(own_count))

        def substitute_first(leaf):
            if not isinstance(leaf, Recorded):
                return leaf
            if next(position) == 0:
                return convert(references[0], leaf)
            if leaf.value is None:
                raise ValueError(f"{own.key}: its own input was not kept, so it cannot be replayed")
            return convert(leaf, leaf)

        return map_leaves(own.inputs, substitute_first)
    values = iter(references)

    def substitute(leaf):
        return convert(next(values), leaf) if isinstance(leaf, Recorded) else leaf

    return map_leaves(own.inputs, substitute)
