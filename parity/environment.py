"""What decides the numbers of a parity run: pinned to stated values for the run, recorded in every report.

The pins (`PINNED`) are the reference's needs: JAX matmuls at HIGHEST so the fp32 reference is true fp32
(TPU/GPU defaults would otherwise use bf16 passes or TF32); no TF32 and no reduced-precision bf16
reductions in torch, for the same reason; one stated SDPA backend, because torch's backends round bf16
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
_SDPA_ENUM = {"math": "MATH", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION"}


@dataclass(frozen=True)
class Pins:
    jax_default_matmul_precision: str = "highest"
    torch_float32_matmul_precision: str = "highest"
    torch_allow_tf32: bool = False  # cuda matmul and cudnn
    torch_allow_bf16_reduced_precision_reduction: bool = False
    sdpa_backend: str = "math"
    execution: str = "eager"  # neither jax.jit nor torch.compile

    def with_sdpa(self, backend: str) -> Pins:
        if backend not in SDPA_BACKENDS:
            raise ValueError(f"unknown SDPA backend {backend!r}; choose one of {', '.join(SDPA_BACKENDS)}")
        return replace(self, sdpa_backend=backend)


PINNED = Pins()


@contextmanager
def pinned(pins: Pins = PINNED, torch_device: str = "cpu") -> Iterator[dict[str, Any]]:
    """Apply `pins` for the duration of the block (restoring the previous settings after); yields the
    record of the environment as it is inside the block."""
    import jax
    import torch

    previous = {
        "jax": jax.config.jax_default_matmul_precision,
        "f32": torch.get_float32_matmul_precision(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "bf16_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
    }
    jax.config.update("jax_default_matmul_precision", pins.jax_default_matmul_precision)
    torch.set_float32_matmul_precision(pins.torch_float32_matmul_precision)
    torch.backends.cuda.matmul.allow_tf32 = pins.torch_allow_tf32
    torch.backends.cudnn.allow_tf32 = pins.torch_allow_tf32
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
        jax.config.update("jax_default_matmul_precision", previous["jax"])
        torch.set_float32_matmul_precision(previous["f32"])
        torch.backends.cuda.matmul.allow_tf32 = previous["tf32_matmul"]
        torch.backends.cudnn.allow_tf32 = previous["tf32_cudnn"]
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = previous["bf16_reduction"]


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
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "allow_bf16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
            "sdpa_backend": pins.sdpa_backend,
            "execution": "eager",
        },
    }
