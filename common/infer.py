"""The configuration a checkpoint was trained with, read off its tensor shapes; and the check of a given one.

Each model has a table of facts (`common.tables`, `InferenceTable`): "this axis of every tensor matching
this pattern is that quantity" (a config field such as `mlp_dim`, or a config property such as
`head_dim`), "the number of blocks under this list is that depth", and config fields derived from facts.
Inference reads every fact from the tensors and derives the config; checking a given config compares each
fact with the config's value, tensor by tensor, so a disagreement names the tensor. Names are dotted Flax
names, so a PyTorch state dict is first mapped through the model's table (`flax_shapes`). Framework-free.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import DiTConfig, VAEConfig
from common.tables import INFERENCE
from common.tables.base import Axis, Count, InferenceTable, Table


class ConfigMismatch(ValueError):
    """The tensors contradict the configuration (or each other); the message names the tensor."""


@dataclass(frozen=True)
class Inferred:
    config: VAEConfig | DiTConfig
    sources: dict[str, str]
    """Config field -> where it came from (a tensor name, a count, a derivation)."""
    assumed: dict[str, str]
    """Config field -> why the default was taken (the tensors do not determine it)."""


def flax_shapes(table: Table, torch_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """PyTorch state-dict shapes -> the Flax names and shapes they come from (RoPE caches are absent)."""
    out = {}
    for key, shape in torch_shapes.items():
        kind = table.kind_of_torch(key)
        out[kind.flax_name(key)] = kind.flax_shape(tuple(shape))
    return out


def detect_model_type(names) -> str | None:
    found = [t.model_type for t in INFERENCE.values() if t.marker in names]
    return found[0] if len(found) == 1 else None


def _matches(pattern: str, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    if "*" not in pattern:
        return [pattern] if pattern in shapes else []
    return sorted(name for name in shapes if fnmatch.fnmatchcase(name, pattern))


def _axis_value(rule: Axis, name: str, shape: tuple[int, ...]) -> int:
    if len(shape) <= rule.axis:
        raise ConfigMismatch(f"{name} has shape {list(shape)}: expected at least {rule.axis + 1} dims")
    value, rest = divmod(shape[rule.axis], rule.divide_by)
    if rest:
        raise ConfigMismatch(
            f"{name} has shape {list(shape)}: axis {rule.axis} must divide by {rule.divide_by}"
        )
    return value


def _indices(prefix: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[int, str]:
    """List index -> one tensor name under it."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found: dict[int, str] = {}
    for name in sorted(shapes):
        m = pattern.match(name)
        if m:
            found.setdefault(int(m.group(1)), name)
    return found


def _count(rule: Count, shapes: Mapping[str, tuple[int, ...]]) -> int:
    indices = _indices(rule.prefix, shapes)
    n = max(indices) + 1 if indices else 0
    missing = [i for i in range(n) if i not in indices]
    if missing:
        raise ConfigMismatch(f"{rule.prefix}.{missing[0]}.* is missing, but {rule.prefix}.{n - 1}.* is there")
    return n


def read_facts(table: InferenceTable, shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, int], dict]:
    """Every fact the tensors state, checked for consistency between tensors, and where each came from."""
    facts: dict[str, int] = {}
    source: dict[str, str] = {}
    for rule in table.facts:
        if isinstance(rule, Count):
            facts[rule.quantity] = _count(rule, shapes)
            source[rule.quantity] = f"count of {rule.prefix}.<i>"
            continue
        names = _matches(rule.pattern, shapes)
        if not names:
            if rule.required:
                raise ConfigMismatch(
                    f"{rule.pattern}: no such tensor (is this a {table.model_type.upper()}?)"
                )
            continue
        for name in names:
            value = _axis_value(rule, name, shapes[name])
            if rule.quantity not in facts:
                facts[rule.quantity], source[rule.quantity] = value, name
            elif facts[rule.quantity] != value:
                raise ConfigMismatch(
                    f"{name} has shape {list(shapes[name])}, giving {rule.quantity} = {value}, but "
                    f"{source[rule.quantity]} gives {facts[rule.quantity]}"
                )
    return facts, source


def infer_config(
    model_type: str, shapes: Mapping[str, tuple[int, ...]], defaults: VAEConfig | DiTConfig | None = None
) -> Inferred:
    """The configuration these Flax-named shapes were built with.

    Fields the tensors do not determine (`max_temporal_len` without RoPE caches; height and width of
    non-square frames) come from `defaults` (the published configuration if None) and are listed in
    `Inferred.assumed`.
    """
    table = INFERENCE[model_type]
    defaults = defaults or table.config_class()
    facts, sources = read_facts(table, shapes)
    for rule in table.derived:
        value = rule.compute(facts)
        if value is not None:
            facts[rule.quantity] = value
            sources[rule.quantity] = rule.why
    fields = {}
    assumed = {}
    for field in dataclasses.fields(table.config_class):
        if field.name in facts:
            fields[field.name] = facts[field.name]
        else:
            fields[field.name] = getattr(defaults, field.name)
            assumed[field.name] = "not stored in the tensors"
    hint = f"; {', '.join(assumed)} cannot be read from the tensors: pass --config" if assumed else ""
    try:
        config = table.config_class(**fields)
        check_config(config, shapes)
    except (ValueError, ConfigMismatch) as err:
        raise ConfigMismatch(f"the tensor shapes give no valid configuration: {err}{hint}") from None
    return Inferred(config, {k: v for k, v in sources.items() if k in fields}, assumed)


def check_config(config: VAEConfig | DiTConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise ConfigMismatch naming the first tensor whose shape contradicts `config`."""
    table = INFERENCE[config.model_type]
    for rule in table.facts:
        expected = getattr(config, rule.quantity)
        if isinstance(rule, Count):
            indices = _indices(rule.prefix, shapes)
            extra = sorted(i for i in indices if i >= expected)
            if extra:
                raise ConfigMismatch(
                    f"{indices[extra[0]]} is in the checkpoint, but the configuration's "
                    f"{rule.quantity} is {expected} (blocks {rule.prefix}.0..{expected - 1})"
                )
            missing = [i for i in range(expected) if i not in indices]
            if missing:
                raise ConfigMismatch(
                    f"{rule.prefix}.{missing[0]}.* is missing, but the configuration's {rule.quantity} "
                    f"is {expected} (the checkpoint has {len(indices)})"
                )
            continue
        for name in _matches(rule.pattern, shapes):
            value = _axis_value(rule, name, shapes[name])
            if value != expected:
                scaled = f" / {rule.divide_by}" if rule.divide_by != 1 else ""
                raise ConfigMismatch(
                    f"{name} has shape {list(shapes[name])}: axis {rule.axis}{scaled} is {value}, but the "
                    f"configuration's {rule.quantity} is {expected}"
                )
