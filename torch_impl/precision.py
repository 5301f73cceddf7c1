"""The three numerical policies of the PyTorch models (`common.precision.Precision`).

The models read their compute dtype off their Linear weights and cast inputs to it; norms always do
their arithmetic in float32 (torch_impl.norms). So a policy is only a choice of storage dtypes:

- FP32: every parameter and buffer float32.
- BF16: every parameter and buffer bfloat16, RoPE caches and norm affine included (`model.to(bf16)`,
  what the published port did).
- MIXED: Linear/Conv/ConvTranspose weights and biases bfloat16, cast once here; norm weights, RoPE
  caches and `fill_token` stay float32 (flax <= 0.12.0 with `dtype=bf16, param_dtype=fp32`).

With bf16 weights, Linear/Conv layers round the product to bf16 and then add the bias in bf16, as flax
does (two roundings; a fused addmm would round once), see `bf16_product`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from common.precision import Precision

_MATMUL_LAYERS = (nn.Linear, nn.Conv3d, nn.ConvTranspose3d)


def apply_precision(model: nn.Module, precision: Precision | str) -> nn.Module:
    """Cast `model` in place to the storage dtypes of `precision`; returns the model."""
    precision = Precision.parse(precision)
    if precision is Precision.BF16:
        return model.to(torch.bfloat16)
    model.float()
    if precision is Precision.MIXED:
        for module in model.modules():
            if isinstance(module, _MATMUL_LAYERS):
                module.to(torch.bfloat16)
    return model


@functools.cache
def _cpu_has_native_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_product(op: Callable[..., torch.Tensor], x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`op(x, weight)` (a bias-free linear or convolution) on bfloat16 values, result in bfloat16.

    Accumulation is float32 either way. On CPUs without native bf16 GEMM (no AVX512-BF16/AMX), torch's
    bf16 kernels are 10-100x slower than fp32, so there the exact bf16 values are upcast and multiplied
    in fp32: a product of two bf16 numbers is exact in fp32, so the numbers are those of a bf16 GEMM.
    """
    x = x.to(torch.bfloat16)
    if x.device.type == "cpu" and not _cpu_has_native_bf16():
        return op(x.float(), weight.float()).to(torch.bfloat16)
    return op(x, weight)
