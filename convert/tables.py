"""The model-agnostic walk over a model's table (`common.tables`): Flax leaves <-> PyTorch state dicts.

The table says which layer kind each name is; `convert.layout` lays each array out for the other side.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from common.kinds import Kind
from common.tables.base import ROPE_DROP_REASON, Table
from convert import layout


def _check_ndim(name: str, kind: Kind, array: np.ndarray) -> None:
    if kind.ndim is not None and array.ndim != kind.ndim:
        raise ValueError(f"{name}: a {kind.name} tensor must have {kind.ndim} dims, got shape {array.shape}")


def flax_to_torch(
    table: Table, flat: Mapping[str, np.ndarray], prefix: str = ""
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Flax leaves -> (PyTorch state dict, {dropped Flax name: reason}).

    `prefix` places a block inside its model (`"decoder.unet."` for a UNet on its own), so that the
    model's rules apply; it is stripped from the output names.
    """
    state, dropped = {}, {}
    for name, array in flat.items():
        kind = table.kind_of(prefix + name)
        _check_ndim(prefix + name, kind, array)
        if kind is Kind.ROPE_CACHE:
            dropped[name] = ROPE_DROP_REASON
            continue
        state[kind.torch_name(name)] = np.ascontiguousarray(layout.to_torch(kind, array))
    return state, dropped


def torch_to_flax(
    table: Table,
    state: Mapping[str, np.ndarray],
    config: object | None = None,
    prefix: str = "",
) -> dict[str, np.ndarray]:
    """PyTorch state dict -> Flax leaves. With `config`, the RoPE caches are regenerated from it."""
    flat = {}
    for key, array in state.items():
        kind = table.kind_of_torch(prefix + key)
        _check_ndim(prefix + key, kind, array)
        flat[kind.flax_name(key)] = np.ascontiguousarray(layout.to_flax(kind, array))
    if config is not None:
        for name, value in table.rope_reference(config).items():
            if name.startswith(prefix):
                flat[name[len(prefix) :]] = value
    return flat


def torch_shapes(table: Table, flax_shapes: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, tuple]:
    """Flax (name, shape) pairs -> the PyTorch state-dict shapes they become, RoPE caches left out."""
    out = {}
    for name, shape in flax_shapes:
        kind = table.kind_of(name)
        if kind is not Kind.ROPE_CACHE:
            out[kind.torch_name(name)] = kind.torch_shape(tuple(shape))
    return out
