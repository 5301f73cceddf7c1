"""The GPU check's subjects and cases beyond `parity.cases`: the UNet alone, a FactoredAttention block
without a mask (flash attention takes none), and single DiT steps on the reference's sampler states.

All are plain `parity.subjects.Subject` / `parity.cases.Case` values, judged by the parity runner.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common.config import VAEConfig
from convert.tables import VAE_TABLE
from parity import cases as C
from parity.subjects import Subject, _jax_kwargs


def unet_subject(cfg: VAEConfig) -> Subject:
    """The VAE decoder's 3D UNet on its own, converted as `decoder.unet.` of the VAE table."""
    args = (cfg.unet_channels, cfg.channels, cfg.unet_base_features, cfg.unet_num_levels)
    args += (cfg.unet_temporal_kernel,)

    def build_jax(dtype, numerics):
        import jax_ref

        return jax_ref.UNet(*args, **_jax_kwargs(dtype, numerics))

    def build_torch():
        import torch_impl

        return torch_impl.UNet(*args)

    # every submodule holds (B, C, T, H, W); the UNet's own input and output are channels last
    return Subject("unet", cfg, VAE_TABLE, "decoder.unet.", build_jax, build_torch, ("?*",))


def unet_case(shape: C.Shape) -> C.Case:
    def make(subjects, rng):
        cfg = subjects["unet"].config
        size = (shape.batch, shape.frames, cfg.height, cfg.width, cfg.unet_channels)
        return {"x": rng.standard_normal(size, dtype=np.float32)}

    return C.Case(
        "vae.unet",
        ("unet",),
        make,
        lambda fw, models, x: models["unet"](x["x"]),
        covers="the decoder's 3D UNet alone (Conv3d, GroupNorm, ConvTranspose3d, skips)",
    )


def unmasked_block_case(name: str, shape: C.Shape) -> C.Case:
    """One FactoredAttention block with no key mask at all: what every SDPA backend can take."""
    base = C.block_case(name, shape)
    return C.Case(
        f"{base.name}.unmasked",
        base.models,
        base.make_inputs,
        lambda fw, models, x: next(iter(models.values()))(x["x"], None),
        covers="one FactoredAttention block, no mask",
    )


def step_case(step: int, steps: int, inputs: Mapping[str, np.ndarray]) -> C.Case:
    """Sampler step `step` of `steps`, every layer captured: the DiT on the fp32 reference's state."""
    fixed = {k: np.asarray(v) for k, v in inputs.items()}
    return C.Case(
        f"dit.sample.step{step}",
        ("dit",),
        lambda subjects, rng: dict(fixed),
        lambda fw, models, x: models["dit"](x["latent"], x["mask"], x["time"]),
        covers=f"Euler step {step} of {steps}, layer by layer, on the reference trajectory's state",
    )
