"""Flax weights in memory, of either kind, as the flat names the tables speak, and back.

- a Linen variables tree `{'params': {...}, 'batch_stats': {...}}`: the `params` collection's paths
  (`mlp.up.kernel`); other collections keep their name first (`batch_stats.norm.mean`);
- an NNX state (`nnx.state(model)`, or its pure dict, or a module itself): its paths, list indices as
  numbers (`layers.0.norm.scale`); an Orbax-style `{'value': array}` leaf counts as the array;
- a flat `{dotted name: array}` dict, as is.

A Linen model and an NNX model of the same architecture give the same names, so one table converts both.
`to_torch` is the whole conversion to a PyTorch state dict; `to_linen` / `to_nnx` go back. Needs numpy
only (a module or an `nnx.State` is read through its own methods).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from common.tables.base import Table
from common.trees import nest_flat
from convert.tables import flax_to_torch, torch_to_flax

PARAMS = "params"


def _leaf(value: Any) -> Any:
    """The array of a leaf: an NNX Variable or VariableState holds it in `.value`."""
    if hasattr(value, "get_value"):
        return value.get_value()
    return value.value if hasattr(value, "value") and not isinstance(value, np.ndarray) else value


def _flatten(tree: Mapping, prefix: str, out: dict[str, Any]) -> None:
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and set(value) == {"value"}:  # Orbax's keeping of an NNX variable
            value = value["value"]
        if isinstance(value, Mapping):
            _flatten(value, name, out)
        else:
            out[name] = _leaf(value)


def _pure(tree: Any) -> Any:
    """An NNX module as its state (a mapping with Variables as leaves); anything else unchanged."""
    if not isinstance(tree, Mapping) and any(c.__module__.startswith("flax.nnx") for c in type(tree).__mro__):
        from flax import nnx

        return nnx.state(tree)
    return tree


def flatten(tree: Any) -> dict[str, Any]:
    """`{dotted name: leaf}` of Linen variables, an NNX state or module, or a flat dict; leaves as they
    are (arrays, or `jax.ShapeDtypeStruct` of an abstract tree)."""
    tree = _pure(tree)
    if not isinstance(tree, Mapping):
        got = type(tree).__name__
        raise TypeError(f"expected Flax variables, an NNX state or a dict of arrays, got {got}")
    out: dict[str, Any] = {}
    if PARAMS in tree and isinstance(tree[PARAMS], Mapping):  # Linen variables
        for collection, subtree in tree.items():
            if not isinstance(subtree, Mapping):
                subtree = {collection: subtree}
            _flatten(subtree, "" if collection == PARAMS else collection, out)
    else:
        _flatten(tree, "", out)
    return out


def flax_leaves(tree: Any) -> dict[str, np.ndarray]:
    """`{dotted name: numpy array}` of Linen variables, an NNX state or module, or a flat dict."""
    return {name: np.asarray(value) for name, value in flatten(tree).items()}


def linen_tree(flat: Mapping[str, Any], collections: tuple[str, ...] = ()) -> dict:
    """The inverse of `flatten` for Linen: names whose first part is one of `collections` go to that
    collection, every other name to `params`."""
    tree: dict = {}
    for name, value in flat.items():
        head, _, rest = name.partition(".")
        collection, path = (head, rest) if head in collections and rest else (PARAMS, name)
        tree.setdefault(collection, {})[path] = value
    return {collection: nest_flat(leaves, leaf_key=None) for collection, leaves in tree.items()}


def to_torch(table: Table, tree: Any, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Flax weights of either kind -> (PyTorch state dict as numpy, {dropped Flax name: reason})."""
    return flax_to_torch(table, flax_leaves(tree), prefix)


def to_linen(table: Table, state: Mapping[str, Any], config: object | None = None) -> dict:
    """A PyTorch state dict (numpy or torch tensors) -> Linen variables `{'params': {...}}`."""
    return linen_tree(torch_to_flax(table, _numpy(state), config))


def to_nnx(table: Table, state: Mapping[str, Any], config: object | None = None) -> dict:
    """A PyTorch state dict -> the pure dict of an NNX state (list indices as strings, as Orbax keeps
    them): `nnx.replace_by_pure_dict(nnx.state(model), tree)` then `nnx.update(model, ...)` loads it."""
    return nest_flat(torch_to_flax(table, _numpy(state), config), leaf_key=None)


def _numpy(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        if hasattr(value, "detach"):  # a torch tensor (bfloat16, which numpy lacks, widens exactly)
            value = value.detach().cpu()
            value = value.float().numpy() if str(value.dtype) == "torch.bfloat16" else value.numpy()
        out[name] = np.asarray(value)
    return out
