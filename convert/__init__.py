"""Checkpoint conversion between the Flax parameter tree and PyTorch state dicts.

`convert.layout` holds the per-layer-kind layout rules, `convert.tables` the declarative table of each
model. Importing this package needs numpy only.
"""

from convert.layout import Kind
from convert.tables import TABLES, Rule, Table, flax_to_torch, torch_to_flax

__all__ = ["TABLES", "Kind", "Rule", "Table", "flax_to_torch", "torch_to_flax"]
