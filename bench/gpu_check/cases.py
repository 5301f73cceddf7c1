"""The GPU check's cases beyond the VAE/DiT suite's: the UNet alone (`unet_subject`), a
FactoredAttention block without a mask (flash attention takes none), and single DiT steps on the
reference's sampler states. All are plain `parity.suite.Case` values, judged by the parity runner.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from parity.suites.vae_dit import cases as C


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
