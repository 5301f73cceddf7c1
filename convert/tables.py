"""The model-agnostic walk over a model's table (`common.tables`): Flax leaves <-> PyTorch state dicts.

The table says which layer kind each name is; `convert.layout` lays each array out for the other side.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from common.kinds import Kind
from common.tables.base import ROPE_DROP_REASON, Rule, Table
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


@dataclass(frozen=True)
class Match:
    """Which rule of a table a leaf name matched (`rule` None: none did) and what the leaf becomes."""

    name: str
    rule: Rule | None
    becomes: str = ""  # the other framework's name, or why the leaf is dropped


def match_rules(table: Table, names: Iterable[str], torch_names: bool = False) -> list[Match]:
    """For each Flax name (or PyTorch name), the first rule that matches it, in the order given."""
    out = []
    for name in names:
        rule = next((r for r in table.rules if _matches(r, name, torch_names)), None)
        if rule is None:
            out.append(Match(name, None))
        elif rule.kind is Kind.ROPE_CACHE:
            out.append(Match(name, rule, "(dropped: " + ROPE_DROP_REASON.split(":")[0] + ")"))
        else:
            kind = rule.kind
            out.append(Match(name, rule, kind.flax_name(name) if torch_names else kind.torch_name(name)))
    return out


def _matches(rule: Rule, name: str, torch_names: bool) -> bool:
    if torch_names:
        return rule.kind is not Kind.ROPE_CACHE and fnmatch.fnmatchcase(name, rule.torch_pattern())
    return fnmatch.fnmatchcase(name, rule.pattern)
