"""Stage 1: versions, imports, the devices both frameworks see, free GPU memory; nothing is computed.

Everything missing is named on ONE line, with how to carry it, before any stage computes anything.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from importlib import metadata

from bench.gpu_check.output import StageResult

# third-party modules the GPU path imports (imageio-ffmpeg is not among them: it is absent on the image)
MODULES = (
    "numpy",
    "torch",
    "jax",
    "jaxlib",
    "flax",
    "einops",
    "safetensors",
    "ml_dtypes",
    "matplotlib",
    "tqdm",
)
# the project's own packages, in floor order: the first that fails names what it needs
PROJECT = (
    "common",
    "jax_ref",
    "torch_impl",
    "convert.tables",
    "parity.runner",
    "parity.report",
    "bench.flops",
)
VERSIONS = (
    "numpy",
    "torch",
    "jax",
    "jaxlib",
    "jax-cuda13-plugin",
    "jax-cuda12-plugin",
    "flax",
    "orbax-checkpoint",
    "safetensors",
    "einops",
    "ml-dtypes",
    "tensorstore",
    "matplotlib",
)
DISTRIBUTIONS = {"ml_dtypes": "ml-dtypes", "PIL": "pillow", "orbax": "orbax-checkpoint", "yaml": "pyyaml"}
MIN_FREE_GPU_GIB = 24.0


def distribution(module: str) -> str:
    return DISTRIBUTIONS.get(module, module.replace("_", "-"))


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _try_imports(names) -> tuple[dict[str, str], list[str]]:
    """{module: "ok" | why it failed}, and the distributions found missing."""
    status, missing = {}, []
    for name in names:
        try:
            importlib.import_module(name)
            status[name] = "ok"
        except ModuleNotFoundError as err:
            top = (err.name or name).split(".")[0]
            status[name] = f"missing module {top}"
            if distribution(top) not in missing:
                missing.append(distribution(top))
        except Exception as err:  # an installed package that cannot load (a CUDA library, say)
            status[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return status, missing


def _devices(device: str) -> tuple[dict, list[str]]:
    info: dict = {"JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS")}
    problems: list[str] = []
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["torch_cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            info["gpu"] = torch.cuda.get_device_name()
            info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
            info["gpu_free_gib"] = round(free / 2**30, 1)
            info["gpu_total_gib"] = round(total / 2**30, 1)
            if device == "cuda" and free / 2**30 < MIN_FREE_GPU_GIB:
                problems.append(f"only {free / 2**30:.1f} GiB free on the GPU (need {MIN_FREE_GPU_GIB:.0f})")
        elif device == "cuda":
            problems.append("torch sees no CUDA device (torch.cuda.is_available() is False)")
    except ImportError:
        pass  # named by the import check
    try:
        import jax

        info["jax_backend"] = jax.default_backend()
        info["jax_devices"] = [str(d) for d in jax.devices()]
        want = "gpu" if device == "cuda" else "cpu"
        if info["jax_backend"] != want:
            hint = (
                f"JAX_PLATFORMS={info['JAX_PLATFORMS']} leaked in: unset it"
                if info["JAX_PLATFORMS"]
                else "is jax-cuda13-plugin installed?"
            )
            problems.append(f"JAX runs on {info['jax_backend']}, not {want} ({hint})")
    except Exception as err:  # jax imports, but its backend does not start
        if not isinstance(err, ImportError):
            problems.append(f"JAX cannot start: {type(err).__name__}: {str(err).splitlines()[0]}")
    return info, problems


def one_line(missing: list[str], problems: list[str]) -> str:
    parts = []
    if missing:
        parts.append(
            f"missing {', '.join(missing)}: carry as wheels (`python -m bench.gpu_check --dry-run --fetch "
            f"{' '.join(missing)}` packs them under .whl and prints the command and carry)"
        )
    parts += problems
    return "gpu-check: preflight: " + "; ".join(parts)


def run(plan) -> tuple[StageResult, str | None]:
    """The stage's result, and the one line to print when the run cannot go on (None when it can)."""
    modules, missing = _try_imports(MODULES)
    project, missing_project = _try_imports(PROJECT)
    missing += [m for m in missing_project if m not in missing]
    problems = [
        f"cannot import {k}: {v}"
        for k, v in {**modules, **project}.items()
        if v != "ok" and not v.startswith("missing module")
    ]
    devices, device_problems = _devices(plan.device) if "torch" not in missing else ({}, [])
    problems += device_problems
    versions = {"python": sys.version.split()[0], **{d: v for d in VERSIONS if (v := _version(d))}}
    data = {
        "versions": versions,
        "platform": platform.platform(),
        "imports": {**modules, **project},
        "devices": devices,
        "missing": missing,
        "problems": problems,
        "plan": plan.as_dict(),
    }
    line = one_line(missing, problems) if missing or problems else None
    verdict = line or (
        f"ok: torch {versions.get('torch')} / jax {versions.get('jax')} on "
        f"{devices.get('gpu') or 'cpu'}; JAX backend {devices.get('jax_backend')}"
        + (f", {devices['gpu_free_gib']} GiB GPU memory free" if "gpu_free_gib" in devices else "")
    )
    md = [
        "# Preflight",
        "",
        verdict,
        "",
        "| package | version |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in versions.items()),
        "",
        f"Devices: {devices}",
    ]
    return StageResult("preflight", "ran", data=data, markdown="\n".join(md) + "\n", verdict=verdict), line
