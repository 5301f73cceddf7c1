"""Checks of a conversion: the converter's own (RoPE caches), and the slots for those a caller supplies.

Checks that need an implementation (the converted weights loading strictly into `torch_impl`, the
forward pass against `jax_ref`) cannot live here: `convert` imports neither. The command that offers them
composes them one floor up and hands them in as `Checks`; the pipeline starts the shape check as soon as
the configuration is known, so that whatever it imports overlaps the conversion, and collects its answer
before the output is renamed into place. A pending check answers a dict: `{"ok": True, ...}`,
`{"ok": False, "error": ...}` or `{"skipped": why}`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from common.tables.base import Table
from convert.options import Check, ConvertError, Report

# RoPE caches computed on a TPU differ from numpy's in the last bits (MODEL_SPEC section 6); a wrong
# length, head dim or base changes them by O(1), so an absolute 1e-4 on values in [-1, 1] separates the two.
ROPE_TOLERANCE = 1e-4
# why the implementation checks are skipped for a table given by the caller (`--table`)
NO_IMPLEMENTATION = "a table of the caller's: no implementation to check against"


class Pending(Protocol):
    def result(self) -> dict: ...

    def cancel(self) -> None: ...


class Answered:
    """A check whose answer is already known."""

    def __init__(self, answer: dict):
        self._answer = answer

    def result(self) -> dict:
        return self._answer

    def cancel(self) -> None:
        pass


@dataclass(frozen=True)
class Checks:
    """The checks a caller supplies. Each callable may be None: the check is then reported as skipped.

    - `start_shapes(config)`: the implementation's `{state-dict key: shape}` for `config`, pending;
    - `shapes_here(config)`: the same, computed in this process (for a source that loaded torch anyway),
      None when unavailable;
    - `start_forward(config, reference, reference_format, converted, converted_format, rounded_to)`:
      the forward check of the converted weights against the reference's, pending.
    """

    start_shapes: Callable[[object], Pending] | None = None
    shapes_here: Callable[[object], dict | None] | None = None
    start_forward: Callable[..., Pending] | None = None
    implementation: str = "the implementation"  # named in messages: "torch_impl"
    reference: str = "the reference"  # "jax_ref"

    @property
    def shapes_name(self) -> str:
        return f"{self.implementation} keys and shapes (meta device)"

    @property
    def forward_name(self) -> str:
        return f"forward vs {self.reference}"

    def shape_check(self, config) -> Pending:
        """Pending keys and shapes of the implementation for `config` (None: a caller's own table)."""
        if config is None:
            return Answered({"skipped": NO_IMPLEMENTATION})
        if self.start_shapes is None:
            return Answered({"skipped": "no implementation to check against was given"})
        return self.start_shapes(config)


def compare_shapes(expected: Mapping[str, tuple], found: Mapping[str, tuple], what: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    if missing:
        raise ConvertError(f"{what}: {missing[0]} is missing ({len(missing)} missing in all)")
    if unexpected:
        raise ConvertError(f"{what}: {unexpected[0]} is not a tensor of the model ({len(unexpected)} in all)")
    if mismatched:
        k = mismatched[0]
        raise ConvertError(f"{what}: {k} has shape {list(found[k])}, the model wants {list(expected[k])}")


def finish_shape_check(checks: Checks, pending: Pending, found: Mapping[str, tuple], report: Report) -> None:
    """Finish the strict key/shape check against the implementation (built on the meta device)."""
    result = pending.result()
    if result.get("skipped") == NO_IMPLEMENTATION:  # nothing to say: the summary names the table
        return
    if result.get("skipped"):
        report.checks.append(Check(checks.shapes_name, None, result["skipped"]))
        return
    if not result.get("ok"):
        raise ConvertError(f"{checks.implementation} shape check failed: {result.get('error', 'no answer')}")
    expected = {k: tuple(v) for k, v in result["shapes"].items()}
    compare_shapes(expected, found, f"strict check against {checks.implementation}")
    report.checks.append(
        Check(
            checks.shapes_name,
            True,
            f"{len(expected)} keys, strict, all shapes equal; {result.get('source', 'computed')}",
        )
    )


def forward_check(
    checks: Checks,
    report: Report,
    config,
    reference,
    reference_format,
    converted,
    converted_format,
    rounded_to=None,
) -> None:
    if checks.start_forward is None:
        report.checks.append(Check(checks.forward_name, None, "no forward check was given"))
        return
    pending = checks.start_forward(
        config, Path(reference), reference_format, Path(converted), converted_format, rounded_to
    )
    result = pending.result()
    if result.get("skipped"):
        report.checks.append(Check(checks.forward_name, None, result["skipped"]))
        return
    if not result.get("ok"):
        raise ConvertError(f"forward check failed: {result.get('error') or result.get('detail')}")
    report.checks.append(Check(checks.forward_name, True, result["detail"]))


def check_ropes(table: Table, config, caches: Mapping[str, np.ndarray]) -> str:
    reference = table.rope_reference(config)
    missing = sorted(set(reference) - set(caches))
    if missing:
        raise ConvertError(f"{missing[0]}: RoPE cache missing from the checkpoint")
    extra = sorted(set(caches) - set(reference))
    if extra:
        raise ConvertError(f"{extra[0]}: a RoPE cache the configuration does not have")
    worst, worst_name = 0.0, ""
    for name, value in caches.items():
        if value.shape != reference[name].shape:
            raise ConvertError(
                f"{name} has shape {list(value.shape)}, the configuration gives {list(reference[name].shape)}"
            )
        diff = float(np.max(np.abs(value.astype(np.float64) - reference[name]))) if value.size else 0.0
        if not diff <= ROPE_TOLERANCE:
            raise ConvertError(
                f"{name} differs from the RoPE table of the configuration by {diff:.3g} (> {ROPE_TOLERANCE})"
            )
        if diff >= worst:
            worst, worst_name = diff, name
    return (
        f"{len(caches)} caches within {ROPE_TOLERANCE:g} of the configuration's "
        f"(max {worst:.2g} at {worst_name})"
    )
