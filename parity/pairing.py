"""A real converted pair for any suite: the Flax weights read from an Orbax checkpoint, the torch model
loaded from the converted safetensors, both strictly.

`dfc parity --suite S --orbax CKPT --weights CONVERTED` uses a suite's own `pair` when it has one (ours
infer the configuration from the checkpoint); otherwise this: the suite's one subject, as configured,
gets the checkpoint's model subtree (an NNX state or Linen `params`, `convert.orbax_io`) and a torch
port of its own built and loaded with `load_state_dict(strict=True)`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from parity.suite import Options, Paired, Suite


def _widened(array: np.ndarray) -> np.ndarray:
    """Floats as float32 (bfloat16, which torch cannot take from numpy, widens exactly)."""
    floating = np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"
    return np.array(array, dtype=np.float32 if floating and array.dtype != np.float64 else array.dtype)


def read_converted(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file or directory, as writable numpy arrays."""
    from convert.safetensors_io import SafetensorsReader

    reader = SafetensorsReader(Path(path))
    try:
        return {name: _widened(reader.tensor(name)) for name in reader.tensors}
    finally:
        reader.close()


def generic_pair(suite: Suite, orbax, weights, precision: str, options: Options) -> Paired:
    import torch

    from convert.orbax_io import read_model_arrays
    from parity.transfer import cast_torch

    if len(suite.subjects) != 1:
        count = len(suite.subjects)
        raise ValueError(f"suite {suite.name} has {count} subjects; a checkpoint pairs with one")
    ((name, subject),) = suite.subjects.items()
    flat = {n: _widened(a) for n, a in read_model_arrays(orbax).items()}
    model = subject.build_torch()
    state = {k: torch.from_numpy(v) for k, v in read_converted(weights).items()}
    model.load_state_dict(state, strict=True)
    if subject.prepare_torch is not None:
        subject.prepare_torch(model)
    model = cast_torch(subject, model, precision).to(options.device).eval()
    describe = {"orbax": os.path.abspath(orbax), "weights": os.path.abspath(weights)}
    return Paired(suite, {name: flat}, {name: model}, describe)
