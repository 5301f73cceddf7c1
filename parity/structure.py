"""Walk the nested values that modules take and return (tuples, NamedTuples, dicts, lists) framework-free.

Both capture sides reduce a call's inputs and outputs to an ordered list of leaves, so a JAX call and a
PyTorch call can be paired leaf by leaf without knowing either framework's containers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def named_leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """`(suffix, leaf)` in a stable order: `""` for a bare value, `[0]` for tuple items, `.kept` for
    NamedTuple fields, `[name]` for dict keys. `None` leaves are skipped (an absent mask is no output)."""
    if value is None:
        return
    if is_namedtuple(value):
        for field in value._fields:
            yield from named_leaves(getattr(value, field), f"{prefix}.{field}")
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from named_leaves(item, f"{prefix}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from named_leaves(item, f"{prefix}[{key}]")
    else:
        yield prefix, value


def map_leaves(value: Any, fn: Callable[[Any], Any]) -> Any:
    """The same structure with every non-container, non-None leaf replaced by `fn(leaf)`."""
    if value is None:
        return None
    if is_namedtuple(value):
        return type(value)(*(map_leaves(v, fn) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(map_leaves(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_leaves(v, fn) for k, v in value.items()}
    return fn(value)
