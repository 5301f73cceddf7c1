"""The few places where supported flax versions (0.10.4 .. 0.12.x) disagree, in one file."""

from __future__ import annotations

from flax import nnx


def module_list(modules):
    """`nnx.List` where flax has it (>= 0.11 requires it for lists of modules), a plain list before."""
    return nnx.List(modules) if hasattr(nnx, "List") else list(modules)


def get_value(variable: nnx.Variable):
    """The array of a Variable (`.value` is deprecated from flax 0.12 on, `get_value` absent before)."""
    return variable.get_value() if hasattr(variable, "get_value") else variable.value


def set_value(variable: nnx.Variable, value) -> None:
    if hasattr(variable, "set_value"):
        variable.set_value(value)
    else:
        variable.value = value
