"""Test-wide settings: CPU JAX, HIGHEST matmul precision for fp32 references, the shared ground truth."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DFC_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"


def pytest_configure(config):
    try:
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    except ImportError:
        pass


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"ground truth not found at {REFERENCE} (set DFC_SHARED to the shared/ folder)")
    return REFERENCE
