"""The tolerance model of the parity suite: every number that decides pass or fail, named, in one place.

fp32: the PyTorch layer must match the JAX fp32 reference (matmul precision HIGHEST) to
`max|torch - ref| / max|ref| <= FP32_REL_MAX`.

bf16: a flat tolerance is too loose for small activations and too tight for large ones, so a layer is
judged against what bf16 itself forces. Its error is `err(x) = max|x - ref| / rms(ref)`, ref being JAX
fp32; the PyTorch layer passes when
    err(torch) <= BF16_JAX_FACTOR * err(jax_bf16) + BF16_ULP_FACTOR * ulp_bf16(rms(ref)) / rms(ref),
i.e. no worse than twice what JAX's own bf16 run does, plus a few bf16 ULPs of the layer's scale.

Discrete outputs (kept-frame gaps and masks, frame positions, output lengths) are compared exactly: in
fp32 they must equal the reference; in bf16, torch may miss the reference in no more places than JAX's
own bf16 run does (a probability at 0.4999 may round either way, in either framework).
"""

from __future__ import annotations

import numpy as np

FP32_REL_MAX = 1e-5
BF16_JAX_FACTOR = 2.0
BF16_ULP_FACTOR = 4.0
BF16_MANTISSA_BITS = 7  # explicit bits; spacing of bf16 numbers in [1, 2) is 2**-7


def ulp_bf16(x: float | np.ndarray) -> np.ndarray:
    """Spacing of bf16 numbers at |x| (the gap to the next representable value)."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    exponent = np.floor(np.log2(np.maximum(x, np.finfo(np.float32).tiny)))
    return np.exp2(exponent - BF16_MANTISSA_BITS)


def bf16_allowance(err_jax: float, rms_ref: float) -> float:
    """The largest `err(torch)` a bf16 layer may have."""
    return BF16_JAX_FACTOR * err_jax + BF16_ULP_FACTOR * float(ulp_bf16(rms_ref)) / max(rms_ref, 1e-30)


def passes_fp32(rel_max: float) -> bool:
    return bool(rel_max <= FP32_REL_MAX)


def passes_bf16(err_torch: float, err_jax: float, rms_ref: float) -> bool:
    """A JAX run that is not finite grants no allowance beyond the ULP term."""
    err_jax = err_jax if np.isfinite(err_jax) else 0.0
    return bool(err_torch <= bf16_allowance(err_jax, rms_ref))


def passes_discrete(mismatches_torch: int, mismatches_jax: int | None) -> bool:
    """`mismatches_jax` is None in fp32, where no difference is allowed."""
    return mismatches_torch == 0 if mismatches_jax is None else mismatches_torch <= mismatches_jax


def describe() -> dict[str, float | str]:
    """The tolerance model as reports print it."""
    return {
        "fp32_rule": "max|torch - ref| / max|ref| <= fp32_rel_max",
        "fp32_rel_max": FP32_REL_MAX,
        "bf16_rule": (
            "err(torch) <= bf16_jax_factor * err(jax) + bf16_ulp_factor * ulp_bf16(rms(ref)) / rms(ref)"
        ),
        "bf16_error": "err(x) = max|x - ref| / rms(ref), ref = JAX fp32 at matmul precision HIGHEST",
        "bf16_jax_factor": BF16_JAX_FACTOR,
        "bf16_ulp_factor": BF16_ULP_FACTOR,
        "discrete_rule": "exact in fp32; in bf16 mismatches(torch) <= mismatches(jax bf16)",
    }
