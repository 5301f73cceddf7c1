"""Numerical policies, one enum each, used by the Python API and every `--precision` flag.

`Precision` is how the PyTorch implementation runs; `NormNumerics` is which flax-era norm arithmetic
`jax_ref` reproduces (MODEL_SPEC section 7). Storage dtypes of files are a separate matter (`--dtype`).
"""

from __future__ import annotations

import enum


class Precision(str, enum.Enum):
    FP32 = "fp32"
    """Everything in float32."""
    BF16 = "bf16"
    """Every parameter and buffer cast to bfloat16, as the published port did (`model.to(bfloat16)`)."""
    MIXED = "mixed"
    """Linear/conv weights in bfloat16 (cast once at load); norms, their affine and softmax in float32.
    The arithmetic of flax up to 0.12.0 with `dtype=bfloat16, param_dtype=float32`."""

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unknown precision {value!r}; choose one of {', '.join(p.value for p in cls)}"
            ) from None

    @property
    def compute_dtype_name(self) -> str:
        return "float32" if self is Precision.FP32 else "bfloat16"


class NormNumerics(str, enum.Enum):
    """LayerNorm/GroupNorm arithmetic of the flax version a checkpoint was evaluated with."""

    FLAX_0_10 = "flax0.10"
    """flax <= 0.12.0: input promoted to float32, scale and bias used in float32, result cast to dtype."""
    FLAX_0_12_1 = "flax0.12.1"
    """flax >= 0.12.1: input, scale and bias first cast to dtype (bfloat16), then computed in float32."""

    @classmethod
    def parse(cls, value: str | NormNumerics) -> NormNumerics:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unknown norm numerics {value!r}; choose one of {', '.join(n.value for n in cls)}"
            ) from None


# Epsilon of every LayerNorm and GroupNorm of the original (the flax default).
NORM_EPSILON = 1e-6
# GroupNorm groups of ConvBlock3D: min(MAX_GROUPS, channels).
MAX_GROUPS = 8
