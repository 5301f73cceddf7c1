"""Which model a checkpoint is, with which configuration, and what each tensor becomes: resolved from the
tensors' names and shapes through the model tables (`common.tables`), before any array is read."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from common.config import load_config
from common.infer import ConfigMismatch, check_config, detect_model_type, flax_shapes, infer_config
from common.kinds import Kind
from common.tables import INFERENCE, TABLES, Table, which_models
from convert import safetensors_io as st
from convert.options import DTYPES, ConvertError, Report


def model_type(requested: str | None, names: Iterable[str]) -> str:
    """The model of these Flax names: `requested`, checked, or detected."""
    names = set(names)
    detected = detect_model_type(names)
    if requested is None:
        if detected is None:
            models, flags = which_models()
            raise ConvertError(f"cannot tell whether this is {models} checkpoint; pass --model {flags}")
        return detected
    if detected != requested:
        marker = INFERENCE[requested].marker
        raise ConvertError(
            f"--model {requested}, but the checkpoint has no {marker} (is it a {TABLES[requested].name}?)"
        )
    return requested


def torch_named_model(requested: str | None, shapes: Mapping[str, tuple]) -> tuple[str, dict[str, tuple]]:
    """Model type and Flax-named shapes of a PyTorch state dict (names and layouts through the table)."""
    candidates = [requested] if requested else list(TABLES)
    for candidate in candidates:
        try:
            flax = flax_shapes(TABLES[candidate], shapes)
        except (KeyError, AssertionError):
            continue
        if detect_model_type(flax) == candidate:
            return candidate, flax
    if requested:
        raise ConvertError(
            f"--model {requested}, but the tensors do not form a {TABLES[requested].name} "
            f"(no {INFERENCE[requested].marker} in PyTorch naming, or a name no rule matches)"
        )
    models, flags = which_models()
    raise ConvertError(f"cannot tell whether these tensors are {models}; pass --model {flags}")


NO_CONFIG = "no configuration: a table given by --table"


def given_table(options, report: Report, names: Iterable[str], torch_names: bool = False) -> Table:
    """The caller's table (`--table`): every name must match one of its rules."""
    table = options.table
    for name in names:
        try:
            table.kind_of_torch(name) if torch_names else table.kind_of(name)
        except KeyError as err:
            hint = "dfc inspect --table lists every leaf no rule matches"
            raise ConvertError(f"{err.args[0]} ({hint})") from None
    report.model_type, report.config, report.config_source = table.model_type, None, NO_CONFIG
    return table


def resolve_config(kind: str, shapes: Mapping[str, tuple], given: str | None, report: Report):
    """The given config checked against the shapes, or the inferred one."""
    if given is not None:
        try:
            config = load_config(given, INFERENCE[kind].config_class)
        except (OSError, ValueError, TypeError) as err:
            raise ConvertError(f"--config {given}: {err}") from None
        try:
            check_config(config, shapes)
        except ConfigMismatch as err:
            raise ConvertError(f"checkpoint contradicts --config: {err}") from None
        report.config, report.config_source = config, f"--config {given}"
        return config
    inferred = infer_config(kind, shapes)
    report.config, report.config_source, report.assumed = (
        inferred.config,
        "inferred from shapes",
        inferred.assumed,
    )
    return inferred.config


def stored_config(src: Path, kind: str, flax: Mapping[str, tuple], report: Report):
    """The configuration saved with the weights (config.json or `__metadata__`), checked against them."""
    text = st.read_config_text(src)
    if text is None:
        return None
    try:
        config = load_config(json.loads(text))
    except (ValueError, TypeError) as err:
        raise ConvertError(f"{src}: the stored configuration is not valid ({err})") from None
    if config.model_type != kind:
        raise ConvertError(
            f"{src}: the stored configuration is for a {config.model_type}, the tensors are a {kind}"
        )
    try:
        check_config(config, flax)
    except ConfigMismatch as err:
        raise ConvertError(f"the weights contradict their stored configuration: {err}") from None
    report.config, report.config_source = config, "stored with the weights"
    return config


def kinds(table: Table, shapes: Mapping[str, tuple]) -> dict[str, Kind]:
    """The layer kind of every Flax name; a name no rule matches, or a wrong rank, is an error."""
    out = {}
    for name, shape in shapes.items():
        try:
            kind = table.kind_of(name)
        except KeyError:
            raise ConvertError(
                f"{name}: not a {table.model_type.upper()} tensor (no rule of the table matches it)"
            ) from None
        if kind.ndim is not None and len(shape) != kind.ndim:
            raise ConvertError(
                f"{name}: a {kind.name.lower()} tensor must have {kind.ndim} dims, got {list(shape)}"
            )
        out[name] = kind
    return out


def output_dtype(source: np.dtype, requested: str | None) -> np.dtype:
    """`--dtype` applies to floating tensors only (numpy does not count ml_dtypes' bfloat16 as one)."""
    floating = np.issubdtype(source, np.floating) or source == np.dtype("bfloat16")
    return DTYPES[requested] if requested is not None and floating else np.dtype(source)


def is_floating(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or np.dtype(dtype) == np.dtype("bfloat16")


def check_floating(dtypes: Mapping[str, np.dtype], where: str) -> None:
    """Every weight of both models holds floating-point values: an integer or boolean tensor where one
    belongs is an error naming the first few, in either direction, never a silent cast."""
    wrong = sorted(name for name, dtype in dtypes.items() if not is_floating(np.dtype(dtype)))
    if wrong:
        shown = ", ".join(f"{n} ({np.dtype(dtypes[n]).name})" for n in wrong[:5])
        more = f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""
        raise ConvertError(
            f"{where}: {len(wrong)} tensor(s) are not floating-point where the model has float weights: "
            f"{shown}{more}"
        )


def dtype_label(dtypes: Iterable[np.dtype]) -> str:
    names = sorted({np.dtype(d).name for d in dtypes})
    return names[0] if len(names) == 1 else "+".join(names)


def account(report: Report, names: Iterable[str]) -> None:
    """Every model leaf is converted or dropped with a reason; anything else is a bug, not a warning."""
    names = set(names)
    accounted = set(report.converted) | set(report.dropped)
    if accounted != names or set(report.converted) & set(report.dropped):
        odd = sorted(names ^ accounted) or sorted(set(report.converted) & set(report.dropped))
        raise ConvertError(f"{odd[0]}: leaf not accounted for (neither converted nor dropped)")
