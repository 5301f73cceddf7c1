"""A real converted pair: the Orbax checkpoint (read for jax_ref) and the converted weights (for torch_impl).

Only the model subtree of the checkpoint is read (never the optimizer's copies), through the converter's
own reader; the configuration comes from the checkpoint's shapes (its RoPE caches give the lengths), and
the converted files must load strictly into that configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.precision import Precision
from parity.suite import Subject
from parity.suites.vae_dit.subjects import dit_subject, vae_subject


@dataclass
class RealPair:
    subject: Subject
    flat: dict[str, np.ndarray]  # flax leaves, fp32
    torch_model: Any


def read_orbax_model(path: str | os.PathLike) -> tuple[str, Any, dict[str, np.ndarray]]:
    """(model type, config, flax leaves as fp32 numpy) of the model in an Orbax checkpoint."""
    from common.infer import detect_model_type, infer_config
    from convert.orbax_io import read_model_arrays

    arrays = read_model_arrays(path)
    model_type = detect_model_type(arrays)
    if model_type is None:
        raise ValueError(f"{path}: the checkpoint holds neither a VideoVAE nor a VideoDiT")
    config = infer_config(model_type, {n: a.shape for n, a in arrays.items()}).config
    flat = {n: np.asarray(a, dtype=np.float32) for n, a in arrays.items()}
    return model_type, config, flat


def load_real_pair(
    orbax: str | os.PathLike, weights: str | os.PathLike, precision: Precision, device: str
) -> RealPair:
    import torch_impl

    model_type, config, flat = read_orbax_model(orbax)
    load = torch_impl.load_vae if model_type == "vae" else torch_impl.load_dit
    model = load(weights, config=config, device=device, precision=precision)
    subject = vae_subject(config) if model_type == "vae" else dit_subject(config)
    return RealPair(subject, flat, model)
