"""Capture every PyTorch submodule call with forward hooks, and replay single modules on given inputs.

A module's path is its `named_modules()` name, i.e. its state-dict prefix, which the conversion table
keeps equal to the flax path. 5-D activations that a torch port keeps channels-first inside a block
(`(B, C, T, H, W)`, as torch's Conv3d wants) are moved to the reference's channels-last layout on the way
in, and back on replay; which paths those are is the subject's `channels_first` list, never guessed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from parity.capture import Call, Capture, Recorded, Recorder, as_numpy, qualified, replay_inputs


class TorchFramework:
    """What a case needs from a framework, PyTorch flavour (see `parity.suite.Case`)."""

    name = "torch"

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def asarray(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(array, copy=True)).to(self.device)

    def numpy(self, value: Any) -> np.ndarray:
        return _host(value) if isinstance(value, torch.Tensor) else np.asarray(value)


def _host(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        tensor = tensor.float()
    return tensor.cpu().numpy()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def channels_first_rule(patterns: Sequence[str]) -> Callable[[str], bool]:
    """`path -> True` where torch holds 5-D activations as `(B, C, T, H, W)` (fnmatch patterns)."""
    return lambda path: any(fnmatch.fnmatchcase(path, p) for p in patterns)


def to_reference_layout(array: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.moveaxis(array, 1, -1) if channels_first and array.ndim == 5 else array


def to_torch_layout(array: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.moveaxis(array, -1, 1) if channels_first and array.ndim == 5 else array


class TorchRecorder(Recorder):
    def __init__(self, channels_first: Callable[[str], bool], step_path=None, keep_inputs=True):
        super().__init__(step_path, keep_inputs)
        self.channels_first = channels_first

    def record_array(self, path: str, leaf: Any, keep_value: bool) -> Recorded | Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        shape = tuple(leaf.shape)
        if self.channels_first(path) and len(shape) == 5:
            shape = (shape[0], *shape[2:], shape[1])
        value = as_numpy(to_reference_layout(_host(leaf), self.channels_first(path))) if keep_value else None
        return Recorded(dtype_name(leaf.dtype), shape, value)


def module_paths(models: Mapping[str, nn.Module], renames: Mapping[str, str] = {}) -> dict[str, nn.Module]:
    """`{path: module}` of every module of every model; `renames` maps a torch path to the reference's name
    for the same module where the two differ (a subject's `paths`)."""
    several = len(models) > 1
    found = {}
    for name, model in models.items():
        for path, module in model.named_modules():
            path = qualified(name, path, several)
            found[renames.get(path, path)] = module
    return found


@contextmanager
def recording(modules: Mapping[str, nn.Module], recorder: Recorder) -> Iterator[Recorder]:
    handles = []
    for path, module in modules.items():

        def before(module, args, path=path):
            recorder.begin(path)

        def after(module, args, kwargs, output, path=path):
            recorder.end(path, type(module).__name__, args, kwargs, output)

        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


class TorchSide:
    """The PyTorch run of a case under one precision policy."""

    framework = "torch"

    def __init__(
        self,
        name: str,
        models: Mapping[str, nn.Module],
        device: str = "cpu",
        channels_first: Sequence[str] = (),
        renames: Mapping[str, str] = {},
    ):
        self.name = name
        self.models = {k: m.eval() for k, m in models.items()}
        self.modules = module_paths(self.models, renames)
        self.fw = TorchFramework(device)
        self.channels_first = channels_first_rule(channels_first)

    def capture(self, case, inputs: Mapping[str, np.ndarray], keep_inputs: bool = True, sink=None) -> Capture:
        recorder = TorchRecorder(self.channels_first, case.step_path, keep_inputs)
        recorder.sink = sink
        native = {k: self.fw.asarray(v) for k, v in inputs.items()}
        with torch.inference_mode(), recording(self.modules, recorder):
            output = case.run(self.fw, self.models, native)
        recorder.capture.output = recorder.flatten("", output)
        return recorder.capture

    def replay(self, own: Call, reference: Call) -> dict[str, Recorded]:
        """Run the module of `own` alone on the reference's inputs (cast to this side's dtypes)."""
        first = self.channels_first(own.path)

        def convert(ref: Recorded, mine: Recorded) -> torch.Tensor:
            array = to_torch_layout(ref.value, first)
            return self.fw.asarray(array).to(getattr(torch, mine.dtype))

        args, kwargs = replay_inputs(own, reference, convert)
        with torch.inference_mode():
            output = self.modules[own.path](*args, **kwargs)
        return TorchRecorder(self.channels_first).flatten(own.path, output)
