"""Framework-free facts shared by `jax_ref`, `torch_impl`, `convert` and `parity`.

Importable with neither torch nor jax installed.
"""

from common.config import (
    DIT_PRESETS,
    PRESETS,
    VAE_PRESETS,
    DiTConfig,
    VAEConfig,
    config_from_json,
    load_config,
    resolve_config,
)
from common.precision import NormNumerics, Precision

__all__ = [
    "DIT_PRESETS",
    "PRESETS",
    "VAE_PRESETS",
    "DiTConfig",
    "NormNumerics",
    "Precision",
    "VAEConfig",
    "config_from_json",
    "load_config",
    "resolve_config",
]
