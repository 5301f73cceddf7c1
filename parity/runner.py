"""Run cases three ways and judge every layer: the JAX fp32 reference, JAX bf16, and PyTorch.

Carried: each side runs the case end to end on its own activations, so errors accumulate as they would
in use. Isolated: every module is run once more on each side, alone, on the reference's captured inputs
(cast to that side's own input dtypes), so a layer's error is its own: a divergence is pinned on the
layer that causes it, not on every layer after it. Sampler cases are the same per Euler step.
"""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from parity.capture import Capture, Recorded, call_key, display_path
from parity.environment import PINNED, Pins
from parity.judge import FP32_JUDGE, Row, judge_row
from parity.results import CaseResult
from parity.suite import BF16, Case, Subject

MODES = ("carried", "isolated")
FP32 = "fp32"
ALL_VARIANTS = ("*",)  # every variant the subjects declare


def _name(value) -> str:
    """A policy or variant as its name (enums of str, such as `common.precision`'s, by value)."""
    return str(getattr(value, "value", value))


@dataclass(frozen=True)
class Settings:
    """How a run is made. `precision` is the torch policy under test (`fp32`, `bf16`, or a policy the
    subjects define); `numerics` are the variants of the JAX bf16 run to measure, each a judge (default:
    every variant the subjects declare, or one plain `bf16` run); `judge` the one the verdict is against
    (default: the variant the subjects name as the policy's natural one, else the first)."""

    precision: Any = FP32
    numerics: tuple = ALL_VARIANTS
    modes: tuple[str, ...] = MODES
    device: str = "cpu"
    seed: int = 0
    pins: Pins = PINNED
    judge: str | None = None
    natural: tuple[tuple[str, str], ...] = ()  # (policy, variant) pairs, from the subjects

    @property
    def is_fp32(self) -> bool:
        return _name(self.precision) == FP32

    @property
    def variants(self) -> list[str]:
        return [_name(n) for n in self.numerics if _name(n) != "*"] or [BF16]

    @property
    def judges(self) -> list[str]:
        return [FP32_JUDGE] if self.is_fp32 else self.variants

    @property
    def verdict_judge(self) -> str:
        if self.is_fp32:
            return FP32_JUDGE
        if self.judge:
            return _name(self.judge)
        natural = dict(self.natural).get(_name(self.precision))
        return natural if natural in self.judges else self.judges[0]

    def for_subjects(self, subjects: Mapping[str, Subject]) -> Settings:
        """These settings with `*` spelled out as the subjects' variants and their natural pairings."""
        declared: list[str] = []
        natural: dict[str, str] = {}
        for subject in subjects.values():
            declared += [v for v in subject.variants if v not in declared]
            natural.update({_name(k): _name(v) for k, v in subject.natural.items()})
        numerics = tuple(
            v for n in self.numerics for v in ((declared or [BF16]) if _name(n) == "*" else [_name(n)])
        )
        return replace(self, numerics=tuple(dict.fromkeys(numerics)), natural=tuple(natural.items()))


@dataclass
class Lineup:
    """Every model of a run, per side, all holding the same fp32 weights."""

    subjects: dict[str, Subject]
    settings: Settings
    weights: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    jax: dict[str, dict[str, Any]] = field(default_factory=dict)  # judge -> {subject: model}
    torch: dict[str, Any] = field(default_factory=dict)
    # captures and replays of the JAX sides, which never change: a lineup with another torch model (a
    # planted mistake) reuses them
    cache: dict[tuple, Any] = field(default_factory=dict)

    def with_torch(self, models: Mapping[str, Any]) -> Lineup:
        """The same lineup (and cache) with other torch models."""
        return replace(self, torch={**self.torch, **models})

    def for_precision(self, precision) -> Lineup:
        """The same JAX runs (and cache) against torch models converted again under another policy."""
        from parity.transfer import torch_model

        settings = replace(self.settings, precision=precision)
        if settings.is_fp32 != self.settings.is_fp32:
            raise ValueError("for_precision switches between bf16 policies; fp32 has no JAX bf16 runs")
        models = {
            name: torch_model(s, self.weights[name], settings.precision, settings.device)
            for name, s in self.subjects.items()
        }
        return replace(self, settings=settings, torch=models)

    def cached(self, key: tuple, compute):
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    @classmethod
    def build(
        cls,
        subjects: Mapping[str, Subject],
        settings: Settings,
        weights: Mapping[str, Mapping[str, np.ndarray]] | None = None,
        torch_models: Mapping[str, Any] | None = None,
        frameworks: tuple[str, ...] = ("jax", "torch"),
    ) -> Lineup:
        """Random weights (seeded) unless `weights` (flax leaves per subject) are given; torch models are
        converted from those weights unless given (e.g. loaded from converted files). `frameworks` says
        which sides to build: a run that saves a trace holds one framework's models at a time."""
        import jax.numpy as jnp

        from parity.transfer import jax_model, reference_weights, torch_model

        settings = settings.for_subjects(subjects)
        lineup = cls(dict(subjects), settings)
        for name, s in subjects.items():
            flat = dict(weights[name]) if weights and name in weights else reference_weights(s, settings.seed)
            lineup.weights[name] = flat
            if "jax" in frameworks:
                lineup.reference[name] = jax_model(s, flat, jnp.float32, None)
            if "jax" in frameworks and not settings.is_fp32:
                for variant in settings.variants:
                    model = jax_model(s, flat, jnp.bfloat16, variant)
                    lineup.jax.setdefault(variant, {})[name] = model
            if "torch" not in frameworks:
                continue
            if torch_models and name in torch_models:
                lineup.torch[name] = torch_models[name]
            else:
                lineup.torch[name] = torch_model(s, flat, settings.precision, settings.device)
        return lineup

    def sides(self, case: Case):
        return self.reference_side(case), self.jax_sides(case), self.torch_side(case)

    def _pick(self, models: Mapping[str, Any], case: Case) -> dict[str, Any]:
        return {name: models[name] for name in case.models}

    def reference_side(self, case: Case):
        from parity.capture_jax import JaxSide

        return JaxSide("reference", self._pick(self.reference, case))

    def jax_sides(self, case: Case) -> dict[str, Any]:
        from parity.capture_jax import JaxSide

        return {judge: JaxSide(f"jax bf16 {judge}", self._pick(m, case)) for judge, m in self.jax.items()}

    def torch_side(self, case: Case):
        from parity.capture_torch import TorchSide

        channels_first = tuple(p for name in case.models for p in _qualified(self.subjects[name], case))
        return TorchSide(
            f"torch {_name(self.settings.precision)}",
            self._pick(self.torch, case),
            self.settings.device,
            channels_first,
            {torch: ref for ref, torch in _paths(self.subjects, case).items() if torch is not None},
        )


def _paths(subjects: Mapping[str, Subject], case: Case) -> dict[str, str | None]:
    """The subjects' `paths` (reference path -> torch path or None), qualified as the case's calls are."""
    several = len(case.models) > 1
    out = {}
    for name in case.models:
        for ref, torch in subjects[name].paths.items():
            key = f"{name}/{ref}" if several else ref
            out[key] = None if torch is None else (f"{name}/{torch}" if several else torch)
    return out


def _qualified(subject: Subject, case: Case) -> tuple[str, ...]:
    if len(case.models) == 1:
        return subject.channels_first
    return tuple(f"{subject.name}/{p}" for p in subject.channels_first)


def _replay_all(side, own: Capture, reference: Capture) -> dict[str, dict[str, Recorded] | str]:
    out: dict[str, dict[str, Recorded] | str] = {}
    for key, ref_call in reference.calls.items():
        call = own.calls.get(key)
        if call is None:
            continue
        try:
            out[key] = side.replay(call, ref_call)
        except Exception as err:  # a module that cannot take the reference's inputs is a finding
            out[key] = f"replay failed: {type(err).__name__}: {err}"
    return out


def _carried(capture: Capture) -> dict[str, dict[str, Recorded] | str]:
    return {key: call.outputs for key, call in capture.calls.items()}


def _step_state(call) -> Recorded | None:
    """The state a sampler step hands the model: the first array argument of the step call."""
    arrays = call.input_arrays() if call is not None else []
    return arrays[0] if arrays and arrays[0].value is not None else None


def _rows(
    case: Case,
    mode: str,
    reference: Capture,
    torch_out: dict[str, Any],
    jax_out: dict[str, dict[str, Any]],
    torch_cap: Capture,
    jax_caps: dict[str, Capture],
    judges: list[str],
) -> list[Row]:
    rows = []

    def add(key, label, call_path, kind, suffix, step, ref, torch_value, jax_values, note=""):
        row = Row(key + suffix, label + suffix, call_path, kind, suffix, step, suffix in case.discrete)
        rows.append(judge_row(row, ref, torch_value, jax_values, judges))
        if note:
            row.note = note
            row.passed = dict.fromkeys(row.passed, False)

    for key, call in reference.calls.items():
        label = call_key(display_path(call.path, call.kind), call.step, call.repeat)
        if call.path == case.step_path and mode == "carried":
            jax_states = {j: _step_state(c.calls.get(key)) for j, c in jax_caps.items()}
            add(
                key,
                label,
                call.path,
                call.kind,
                "<in>",
                call.step,
                _step_state(call),
                _step_state(torch_cap.calls.get(key)),
                jax_states,
            )
        torch_outputs = torch_out.get(key)
        for suffix, ref in call.outputs.items():
            note = ""
            if torch_outputs is None:
                note = "not called by torch"
            elif isinstance(torch_outputs, str):
                note = torch_outputs
            torch_value = torch_outputs.get(suffix) if isinstance(torch_outputs, dict) else None
            jax_values = {}
            for judge, outs in jax_out.items():
                got = outs.get(key)
                jax_values[judge] = got.get(suffix) if isinstance(got, dict) else None
            add(key, label, call.path, call.kind, suffix, call.step, ref, torch_value, jax_values, note)
    if mode == "carried":
        for suffix, ref in reference.output.items():
            jax_values = {j: c.output.get(suffix) for j, c in jax_caps.items()}
            add(
                "(output)",
                "(output)",
                "(output)",
                "case",
                suffix,
                None,
                ref,
                torch_cap.output.get(suffix),
                jax_values,
            )
    return rows


def carried(capture: Capture) -> dict[str, dict[str, Recorded] | str]:
    return _carried(capture)


def rows(
    case: Case, mode: str, reference: Capture, torch_out, jax_out, torch_cap, jax_caps, judges
) -> list[Row]:
    """The judged rows of one case in one mode (see `_rows`); traces are judged through here too."""
    return _rows(case, mode, reference, torch_out, jax_out, torch_cap, jax_caps, judges)


def input_digest(inputs: Mapping[str, np.ndarray]) -> str:
    return _digest(inputs)


def name_of(value) -> str:
    return _name(value)


def run_case(case: Case, lineup: Lineup, inputs: Mapping[str, np.ndarray] | None = None) -> list[CaseResult]:
    """One CaseResult per mode of the lineup's settings."""
    settings = lineup.settings
    subjects = {name: lineup.subjects[name] for name in case.models}
    if inputs is None:
        inputs = case.make_inputs(subjects, np.random.default_rng(settings.seed))
    judges = settings.judges
    results = [
        CaseResult(case.name, case.covers, mode, judges, step_path=case.step_path) for mode in settings.modes
    ]
    reference_side, jax_sides, torch_side = lineup.sides(case)
    keep = (lambda path: path == case.step_path) if case.step_path is not None else False
    tag = (case.name, _digest(inputs))
    try:
        reference = lineup.cached((*tag, "reference"), lambda: reference_side.capture(case, inputs))
        jax_caps = {
            judge: lineup.cached((*tag, judge), lambda side=side: side.capture(case, inputs, keep))
            for judge, side in jax_sides.items()
        }
        torch_cap = torch_side.capture(case, inputs, keep)
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
        for result in results:
            result.error = message + "\n" + traceback.format_exc(limit=4)
        return results
    for result in results:
        if result.mode == "carried":
            torch_out = _carried(torch_cap)
            jax_out = {j: _carried(c) for j, c in jax_caps.items()}
        else:
            torch_out = _replay_all(torch_side, torch_cap, reference)
            jax_out = {
                j: lineup.cached(
                    (*tag, j, "isolated"), lambda j=j: _replay_all(jax_sides[j], jax_caps[j], reference)
                )
                for j in jax_caps
            }
        result.rows = _rows(case, result.mode, reference, torch_out, jax_out, torch_cap, jax_caps, judges)
        unpaired = {ref for ref, torch in _paths(lineup.subjects, case).items() if torch is None}
        result.rows = [row for row in result.rows if row.path not in unpaired]
        result.only_torch = [k for k in torch_cap.calls if k not in reference.calls]
    return results


def _digest(inputs: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha1()
    for name in sorted(inputs):
        array = np.ascontiguousarray(inputs[name])
        h.update(f"{name}{array.dtype}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def run(
    subjects: Mapping[str, Subject],
    cases: list[Case],
    settings: Settings,
    *,
    title: str = "parity",
    weights: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    torch_models: Mapping[str, Any] | None = None,
    describe: Mapping[str, Any] | None = None,
    progress=None,
):
    """Build the lineup and run every case under the pinned environment; a `RunResult` for the report."""
    from parity import tolerance
    from parity.environment import pinned
    from parity.results import RunResult

    with pinned(settings.pins, settings.device) as environment:
        lineup = Lineup.build(subjects, settings, weights, torch_models)
        settings = lineup.settings
        result = RunResult(
            title=title,
            settings={
                "precision": _name(settings.precision),
                "numerics": [] if settings.is_fp32 else settings.variants,
                "modes": list(settings.modes),
                "device": settings.device,
                "seed": settings.seed,
                "verdict_judge": settings.verdict_judge,
                "subjects": {name: describe_subject(s) for name, s in subjects.items()},
                **dict(describe or {}),
            },
            environment=environment,
            tolerance=tolerance.describe(),
            verdict_judge=settings.verdict_judge,
        )
        for case in cases:
            if progress:
                progress(case.name)
            result.cases.extend(run_case(case, lineup))
            # No later case of this run reuses a case's captures; at the published size they are
            # gigabytes, and holding every case's made a CPU run outgrow 24 GB.
            lineup.cache.clear()
    return result


def describe_subject(subject: Subject) -> dict[str, Any]:
    cfg = subject.config
    return {
        "config": cfg.to_dict() if hasattr(cfg, "to_dict") else repr(cfg),
        "table": getattr(subject.table, "model_type", getattr(subject.table, "name", repr(subject.table))),
        "prefix": subject.prefix,
    }
