"""One row per layer output: metrics of every side against the reference, and the verdict of each judge.

A judge is the run a torch layer is held to: `fp32` (torch fp32 against the reference alone), or one
flax-era norm numerics in bf16 (torch against the JAX bf16 run with those numerics).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from parity import tolerance
from parity.capture import Recorded
from parity.metrics import Metrics, compare

FP32_JUDGE = "fp32"


@dataclass
class Row:
    key: str  # call key + output suffix: "encoder.layers.0.TemporalAttention.ROPE#1", "decoder[0]"
    label: str  # for people: the root module shown by class
    path: str
    kind: str
    output: str
    step: int | None
    discrete: bool
    torch: Metrics | None = None
    jax: dict[str, Metrics] = field(default_factory=dict)  # judge -> JAX bf16 against the reference
    torch_vs_jax: dict[str, float] = field(default_factory=dict)  # judge -> max|torch - jax| / rms(ref)
    identical: dict[str, float] = field(default_factory=dict)  # judge -> share of elements torch == jax
    allowance: dict[str, float] = field(default_factory=dict)
    passed: dict[str, bool] = field(default_factory=dict)
    mismatches: dict[str, int] = field(default_factory=dict)  # discrete outputs: differing elements
    note: str = ""

    def as_dict(self) -> dict:
        """Everything about torch; of each JAX run only what the verdict used (reports stay small)."""
        out = {k: v for k, v in asdict(self).items() if v not in (None, "", {}, [])}
        out["torch"] = None if self.torch is None else self.torch.as_dict()
        out["jax"] = {k: {"err": v.err, "rel_max": v.rel_max} for k, v in self.jax.items()}
        return out


def _mismatches(x: Recorded, ref: Recorded) -> int:
    return int(np.sum(np.asarray(x.value) != np.asarray(ref.value)))


def _shape_problem(x: Recorded | None, ref: Recorded, who: str) -> str | None:
    if x is None:
        return f"{who}: no such output"
    if x.shape != ref.shape:
        return f"{who}: shape {x.shape} vs reference {ref.shape}"
    return None


def judge_row(
    row: Row, ref: Recorded, torch: Recorded | None, jax: dict[str, Recorded | None], judges: list[str]
) -> Row:
    """Fill `row` from the reference, the torch output and the JAX bf16 outputs (empty dict in fp32)."""
    problem = _shape_problem(torch, ref, "torch")
    if problem is None:
        row.torch = compare(torch.value, ref.value)
    for judge in judges:
        if judge == FP32_JUDGE:
            if problem:
                row.passed[judge] = False
            elif row.discrete:
                row.mismatches["torch"] = _mismatches(torch, ref)
                row.passed[judge] = tolerance.passes_discrete(row.mismatches["torch"], None)
            else:
                row.passed[judge] = tolerance.passes_fp32(row.torch.rel_max)
            continue
        jax_out = jax.get(judge)
        jax_problem = _shape_problem(jax_out, ref, f"jax {judge}")
        if jax_problem is None:
            row.jax[judge] = compare(jax_out.value, ref.value)
        if problem or jax_problem:
            row.passed[judge] = False
            row.note = "; ".join(p for p in (problem, jax_problem) if p)
            continue
        rms = row.torch.rms_ref
        difference = np.abs(np.asarray(torch.value, np.float64) - np.asarray(jax_out.value, np.float64))
        row.torch_vs_jax[judge] = float(np.max(difference, initial=0.0)) / max(rms, 1e-30)
        row.identical[judge] = float(np.mean(difference == 0)) if difference.size else 1.0
        if row.discrete:
            row.mismatches["torch"] = _mismatches(torch, ref)
            row.mismatches[judge] = _mismatches(jax_out, ref)
            row.passed[judge] = tolerance.passes_discrete(row.mismatches["torch"], row.mismatches[judge])
        else:
            row.allowance[judge] = tolerance.bf16_allowance(
                row.jax[judge].err if np.isfinite(row.jax[judge].err) else 0.0, rms
            )
            row.passed[judge] = tolerance.passes_bf16(row.torch.err, row.jax[judge].err, rms)
    if problem:
        row.note = problem if not row.note else row.note
    return row
