"""Checkpoint conversion between the Flax parameter tree and PyTorch state dicts.

The models' tables are facts in `common.tables`; `convert.layout` lays arrays out per layer kind and
`convert.tables` walks a table over a state. Importing this package needs numpy only; it imports neither
`torch_impl` nor `jax_ref` (checks that need them are composed by `dfc`).
"""

from convert.tables import flax_to_torch, torch_to_flax

__all__ = ["flax_to_torch", "torch_to_flax"]
