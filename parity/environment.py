"""What decides the numbers of a parity run: pinned to stated values for the run, recorded in every report.

The pins (`PINNED`) are the reference's needs: JAX matmuls at HIGHEST so the fp32 reference is true fp32
(TPU/GPU defaults would otherwise use bf16 passes or TF32); torch's fp32 precision `ieee` everywhere (no
TF32 in cuBLAS or cuDNN, no bf16 passes in oneDNN) and no reduced-precision bf16 reductions, for the
same reason; one stated SDPA backend, because torch's backends round bf16
attention differently; eager execution on both sides, because capture needs concrete values and XLA may
fuse away bf16 roundings under jit.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from typing import Any

SDPA_BACKENDS = ("math", "flash", "efficient", "cudnn", "default")
_SDPA_ENUM = {
    "math": "MATH",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}


@dataclass(frozen=True)
class Pins:
    jax_default_matmul_precision: str = "highest"
    torch_fp32_precision: str = "ieee"  # no TF32 (cuda matmul, cuDNN) and no bf16 passes (oneDNN matmul)
    torch_allow_bf16_reduced_precision_reduction: bool = False
    sdpa_backend: str = "math"
    execution: str = "eager"  # neither jax.jit nor torch.compile

    def with_sdpa(self, backend: str) -> Pins:
        if backend not in SDPA_BACKENDS:
            raise ValueError(f"unknown SDPA backend {backend!r}; choose one of {', '.join(SDPA_BACKENDS)}")
        return replace(self, sdpa_backend=backend)


PINNED = Pins()


def _fp32_switches():
    """torch's per-backend fp32 precision switches (torch >= 2.9); None on older torch."""
    import torch

    backends = torch.backends
    if not hasattr(backends.cuda.matmul, "fp32_precision"):
        return None
    return {
        "cuda_matmul": backends.cuda.matmul,
        "cudnn_conv": backends.cudnn.conv,
        "mkldnn_matmul": backends.mkldnn.matmul,
    }


def _torch_fp32_state() -> dict[str, Any]:
    import torch

    switches = _fp32_switches()
    if switches is not None:  # never mix in the legacy getters: torch refuses once the new API was used
        return {name: obj.fp32_precision for name, obj in switches.items()}
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def _set_torch_fp32_state(state: dict[str, Any]) -> None:
    import torch

    switches = _fp32_switches()
    if switches is not None:
        for name, obj in switches.items():
            obj.fp32_precision = state[name]
        return
    torch.set_float32_matmul_precision(state["float32_matmul_precision"])
    torch.backends.cuda.matmul.allow_tf32 = state["cuda_matmul_allow_tf32"]
    torch.backends.cudnn.allow_tf32 = state["cudnn_allow_tf32"]


def _pinned_torch_fp32_state(pins: Pins) -> dict[str, Any]:
    if _fp32_switches() is not None:
        return dict.fromkeys(("cuda_matmul", "cudnn_conv", "mkldnn_matmul"), pins.torch_fp32_precision)
    exact = pins.torch_fp32_precision == "ieee"
    return {
        "float32_matmul_precision": "highest" if exact else "high",
        "cuda_matmul_allow_tf32": not exact,
        "cudnn_allow_tf32": not exact,
    }


@contextmanager
def pinned(pins: Pins = PINNED, torch_device: str = "cpu") -> Iterator[dict[str, Any]]:
    """Apply `pins` for the duration of the block (restoring the previous settings after); yields the
    record of the environment as it is inside the block."""
    import jax
    import torch

    previous_jax = jax.config.jax_default_matmul_precision
    previous_torch = _torch_fp32_state()
    previous_reduction = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    jax.config.update("jax_default_matmul_precision", pins.jax_default_matmul_precision)
    _set_torch_fp32_state(_pinned_torch_fp32_state(pins))
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = (
        pins.torch_allow_bf16_reduced_precision_reduction
    )
    try:
        with ExitStack() as stack:
            if pins.sdpa_backend != "default":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel([getattr(SDPBackend, _SDPA_ENUM[pins.sdpa_backend])]))
            yield record(pins, torch_device)
    finally:
        jax.config.update("jax_default_matmul_precision", previous_jax)
        _set_torch_fp32_state(previous_torch)
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = previous_reduction


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def record(pins: Pins = PINNED, torch_device: str | None = None) -> dict[str, Any]:
    """Everything that decides numerics, as it is now."""
    import jax
    import torch

    cuda = torch.cuda.is_available()
    return {
        "pins": asdict(pins),
        "versions": {
            "python": sys.version.split()[0],
            **{p: _version(p) for p in ("numpy", "jax", "jaxlib", "flax", "torch", "orbax-checkpoint")},
        },
        "platform": platform.platform(),
        "jax": {
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "default_matmul_precision": jax.config.jax_default_matmul_precision,
            "enable_x64": bool(jax.config.jax_enable_x64),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "execution": "eager",
        },
        "torch": {
            "device": torch_device or ("cuda" if cuda else "cpu"),
            "cuda_device": torch.cuda.get_device_name() if cuda else None,
            "num_threads": torch.get_num_threads(),
            "fp32_precision": _torch_fp32_state(),
            "allow_bf16_reduced_precision_reduction": (
                torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
            ),
            "sdpa_backend": pins.sdpa_backend,
            "execution": "eager",
        },
    }
