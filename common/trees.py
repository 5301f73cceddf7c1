"""Flat dotted names <-> the nested dicts that Orbax stores. Framework-free."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def nest_flat(flat: Mapping[str, np.ndarray], leaf_key: str | None = "value") -> dict:
    """Dotted names -> the nested dict the training code hands to Orbax: each array under `leaf_key`,
    as nnx keeps a variable's array under `value`, list indices as string keys."""
    root: dict = {}
    for name, array in flat.items():
        node = root
        *parents, last = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{name}: a leaf and a subtree share the path {part}")
        node[last] = {leaf_key: array} if leaf_key else array
    return root
