"""Per-layer comparison metrics between an output and its reference (numpy, float64 arithmetic)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from parity.tolerance import ulp_bf16


@dataclass(frozen=True)
class Metrics:
    max_abs: float  # max |x - ref|
    max_ref: float  # max |ref|
    rms_ref: float
    rel_max: float  # max |x - ref| / max |ref|: the fp32 criterion
    err: float  # max |x - ref| / rms(ref): the bf16 criterion
    rel_l2: float  # ||x - ref|| / ||ref||
    cosine: float
    p99_abs: float  # 99th percentile of |x - ref|
    share_over_1ulp: float  # share of elements more than one bf16 ULP (at |ref|) apart

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def compare(x: np.ndarray, ref: np.ndarray) -> Metrics:
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs reference {ref.shape}")
    if x.size == 0:
        return Metrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0)
    diff = np.abs(x - ref)
    if not np.all(np.isfinite(x)):
        diff = np.where(np.isfinite(x), diff, np.inf)
    max_abs = float(diff.max())
    max_ref = float(np.abs(ref).max())
    rms_ref = float(np.sqrt(np.mean(ref**2)))
    norm_ref = float(np.linalg.norm(ref))
    norm_x = float(np.linalg.norm(x)) if np.all(np.isfinite(x)) else np.inf
    tiny = 1e-30
    cosine = float(np.sum(x * ref) / max(norm_x * norm_ref, tiny)) if np.isfinite(norm_x) else float("nan")
    return Metrics(
        max_abs=max_abs,
        max_ref=max_ref,
        rms_ref=rms_ref,
        rel_max=max_abs / max(max_ref, tiny),
        err=max_abs / max(rms_ref, tiny),
        rel_l2=float(np.linalg.norm(np.where(np.isfinite(diff), diff, 0.0)) / max(norm_ref, tiny))
        if np.all(np.isfinite(diff))
        else float("inf"),
        cosine=cosine,
        p99_abs=float(np.percentile(diff, 99)),
        share_over_1ulp=float(np.mean(diff > ulp_bf16(ref))),
    )
