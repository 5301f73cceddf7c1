"""What a parity run found: rows per case and mode, the first divergent layer, which pairing matches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.judge import FP32_JUDGE, Row


@dataclass
class CaseResult:
    case: str
    covers: str
    mode: str  # carried | isolated
    judges: list[str]
    rows: list[Row] = field(default_factory=list)
    only_torch: list[str] = field(default_factory=list)  # calls torch made that JAX did not (informative)
    error: str | None = None  # the case could not run at all
    step_path: str | None = None

    def first_divergent(self, judge: str) -> Row | None:
        return next((row for row in self.rows if not row.passed.get(judge, False)), None)

    def passed(self, judge: str) -> bool:
        return self.error is None and self.first_divergent(judge) is None

    def steps(self) -> list[dict[str, Any]]:
        """Per sampler step: the state handed to the model, its velocity and gaps, each side's error."""
        if self.step_path is None:
            return []
        by_step: dict[int, dict[str, Any]] = {}
        for row in self.rows:
            if row.path != self.step_path or row.step is None:
                continue
            entry = by_step.setdefault(row.step, {"step": row.step})
            name = {"<in>": "state", "[0]": "velocity", "[1]": "gaps"}.get(row.output)
            if name and row.torch is not None:
                entry[name] = {
                    "torch_err": row.torch.err,
                    "torch_rel_max": row.torch.rel_max,
                    "jax_err": {j: m.err for j, m in row.jax.items()},
                    "allowance": dict(row.allowance),
                    "passed": dict(row.passed),
                }
        return [by_step[i] for i in sorted(by_step)]


def pairing_summary(results: list[CaseResult]) -> dict[str, dict[str, Any]]:
    """Per judge: how many layer outputs pass, and how close torch is to that JAX run.

    Closeness is measured on isolated rows where there are any (carried ones mix in every earlier layer):
    `identical` is the mean share of elements where torch and that JAX run agree bit for bit,
    `median_distance` the median over layers of `max|torch - jax| / rms(ref)`. The pairing with the most
    identical elements is the JAX numerics the torch policy reproduces most closely.
    """
    judges = sorted({j for r in results for j in r.judges})
    out = {}
    for judge in judges:
        rows = [row for r in results for row in r.rows if judge in row.passed]
        isolated = [row for r in results if r.mode == "isolated" for row in r.rows if judge in row.passed]
        closeness = isolated or rows
        distances = [
            row.torch_vs_jax[judge] for row in closeness if judge in row.torch_vs_jax and not row.discrete
        ]
        identical = [row.identical[judge] for row in closeness if judge in row.identical and not row.discrete]
        ratios = [
            row.torch.err / row.jax[judge].err
            for row in rows
            if judge in row.jax and row.torch is not None and row.jax[judge].err > 0 and not row.discrete
        ]
        out[judge] = {
            "rows": len(rows),
            "passed": sum(row.passed[judge] for row in rows),
            "cases_passed": sum(r.passed(judge) for r in results if judge in r.judges),
            "cases": sum(judge in r.judges for r in results),
            "median_distance": float(np.median(distances)) if distances else None,
            "identical": float(np.mean(identical)) if identical else None,
            "max_err_ratio": float(np.max(ratios)) if ratios else None,
            "median_err_ratio": float(np.median(ratios)) if ratios else None,
        }
    return out


def best_pairing(summary: dict[str, dict[str, Any]]) -> str | None:
    """The judge torch matches best: most layers passing, then most identical elements."""
    candidates = [j for j in summary if j != FP32_JUDGE]
    if not candidates:
        return None
    return min(candidates, key=lambda j: (-summary[j]["passed"], -(summary[j]["identical"] or 0.0)))


@dataclass
class RunResult:
    """Everything a report says: settings, environment, the tolerance model, every case and mode."""

    title: str
    settings: dict[str, Any]
    environment: dict[str, Any]
    tolerance: dict[str, Any]
    verdict_judge: str
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(case.passed(self.verdict_judge) for case in self.cases)

    def first_divergent(self) -> tuple[CaseResult, Row | None] | None:
        """The first failing case, isolated mode first (it names the cause), and its first bad row."""
        names = list(dict.fromkeys(c.case for c in self.cases))
        for name in names:
            modes = sorted((c for c in self.cases if c.case == name), key=lambda c: c.mode != "isolated")
            for case in modes:
                if not case.passed(self.verdict_judge):
                    return case, case.first_divergent(self.verdict_judge)
        return None

    def summary(self) -> dict[str, dict[str, Any]]:
        return pairing_summary(self.cases)
