"""What the VAE/DiT suite runs, on which inputs: one `Case` per promise of the product.

A case's `run(fw, models, inputs)` is written once for both frameworks against the shared call contract
(docs/ARCHITECTURE.md): `ns(fw)` is `jax_ref` or `torch_impl`, `fw.asarray` / `fw.numpy` move arrays,
`models` maps subject names to built models, `inputs` holds the case's arrays already on the framework.

Inputs are chosen so that porting mistakes can show: at least 3 frames (RoPE and q/k mistakes are
invisible at a single position), a padded last frame in one clip (mask mistakes are invisible without
one), random weights everywhere (zero biases hide conversion bugs).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from parity.suite import Case, Inputs

FRAMES = 4
BATCH = 2
SAMPLER_STEPS = 4
TOPK = 2


def ns(fw) -> ModuleType:
    """The implementation of the call contract on `fw`'s side: `jax_ref` or `torch_impl`."""
    return importlib.import_module({"jax": "jax_ref", "torch": "torch_impl"}[fw.name])


def fill_token(fw, vae):
    """The VAE's learned fill token as an array of `fw` (an NNX Param holds it in `.value`)."""
    if fw.name == "jax":
        from jax_ref.compat import get_value

        return get_value(vae.fill_token)
    return vae.fill_token


@dataclass(frozen=True)
class Shape:
    """How many clips and frames a case feeds (published sizes on a CPU want `Shape(1, 3)`)."""

    batch: int = BATCH
    frames: int = FRAMES


def padded_mask(batch: int, frames: int) -> np.ndarray:
    """All frames valid except the last frame of the last clip: a padded clip next to full ones."""
    mask = np.ones((batch, frames), bool)
    mask[-1, -1] = False
    return mask


def video_inputs(shape: Shape):
    def make(subjects, rng) -> Inputs:
        cfg = subjects["vae"].config
        size = (shape.batch, shape.frames, cfg.height, cfg.width, cfg.channels)
        return {
            "video": rng.uniform(0, 1, size).astype(np.float32),
            "mask": padded_mask(shape.batch, shape.frames),
            "noise": rng.uniform(0, 1, (shape.batch, shape.frames)).astype(np.float32),
        }

    return make


def latent_inputs(shape: Shape):
    def make(subjects, rng) -> Inputs:
        cfg = subjects["vae"].config
        size = (shape.batch, shape.frames, cfg.num_patches, cfg.latent_dim)
        return {
            "latent": rng.standard_normal(size, dtype=np.float32),
            "mask": padded_mask(shape.batch, shape.frames),
        }

    return make


def dit_inputs(shape: Shape):
    def make(subjects, rng) -> Inputs:
        cfg = subjects["dit"].config
        size = (shape.batch, shape.frames, cfg.hw, cfg.compressed_channel_dim)
        return {
            "latent": rng.standard_normal(size, dtype=np.float32),
            "noise": rng.standard_normal(size, dtype=np.float32),
            "mask": padded_mask(shape.batch, shape.frames),
            "time": np.linspace(0.25, 0.75, shape.batch, dtype=np.float32)[:, None],
        }

    return make


def generation_inputs(shape: Shape):
    def make(subjects, rng) -> Inputs:
        cfg = subjects["dit"].config
        size = (1, shape.frames, cfg.hw, cfg.compressed_channel_dim)
        return {
            "noise": rng.standard_normal(size, dtype=np.float32),
            "mask": np.ones((1, shape.frames), bool),
        }

    return make


def block_inputs(name: str, shape: Shape):
    def make(subjects, rng) -> Inputs:
        from parity.suites.vae_dit.subjects import block_width

        cfg = subjects[name].config
        patches = min(64, cfg.num_patches if hasattr(cfg, "num_patches") else cfg.hw)
        x = rng.standard_normal((1, shape.frames, patches, block_width(cfg)), dtype=np.float32)
        return {"x": x, "mask": padded_mask(1, shape.frames)[:, None, None, :]}

    return make


def _decode(fw, models, x):
    return models["vae"].decoder(x["latent"], x["mask"])


def _encode(fw, models, x):
    return models["vae"].encoder(x["video"], x["mask"])


def _round_trip(mode: str):
    def run(fw, models, x):
        vae = models["vae"]
        noise = x["noise"] if mode == "bernoulli" else None
        compressed = vae.compress(
            x["video"], x["mask"], mode=mode, k=TOPK if mode == "topk" else None, noise=noise
        )
        return {"compressed": compressed, "video": vae.decompress(compressed)}

    return run


def _sample(steps: int):
    def run(fw, models, x):
        latents, gaps = ns(fw).sample(models["dit"], x["noise"], x["mask"], steps)
        positions, frames = ns(fw).gaps_to_positions(gaps, x["mask"])
        return {"latents": latents, "gaps": gaps, "positions": positions, "frames": frames}

    return run


def _generate(steps: int):
    """DiT sampling, gaps -> frame positions, latents placed among fill tokens, VAE decode (one clip)."""

    def run(fw, models, x):
        sampled = _sample(steps)(fw, models, x)
        vae = models["vae"]
        positions = fw.numpy(sampled["positions"])[0]
        frames = int(fw.numpy(sampled["frames"])[0])
        if frames > vae.config.max_temporal_len:
            raise ValueError(f"generated {frames} frames, more than the VAE's {vae.config.max_temporal_len}")
        gaps = np.diff(positions, prepend=0).astype(np.int32)[None]  # gaps[0] = first position
        latent = ns(fw).place_kept(
            sampled["latents"], fw.asarray(gaps), x["mask"], frames, fill_token(fw, vae)
        )
        video = vae.decoder(latent, fw.asarray(np.ones((1, frames), bool)))
        return {**sampled, "video": video}

    return run


def _block(fw, models, x):
    (block,) = models.values()
    return block(x["x"], x["mask"])


_DISCRETE_COMPRESSED = ("[compressed].gaps", "[compressed].kept_valid", "[compressed].num_frames")
_DISCRETE_SAMPLED = ("[positions]", "[frames]")


def vae_cases(shape: Shape = Shape()) -> list[Case]:
    cases = [
        Case(
            "vae.encode",
            ("vae",),
            video_inputs(shape),
            _encode,
            covers="PatchEmbedding, Encoder, attention with a padded frame",
        ),
        Case(
            "vae.decode",
            ("vae",),
            latent_inputs(shape),
            _decode,
            covers="Decoder, PatchUnEmbedding, UNet (Conv3d, GroupNorm, ConvTranspose3d) on a padded clip",
        ),
    ]
    for mode in ("threshold", "bernoulli", "topk"):
        cases.append(
            Case(
                f"vae.compress.{mode}",
                ("vae",),
                video_inputs(shape),
                _round_trip(mode),
                covers=f"compress + decompress, {mode} selection",
                discrete=_DISCRETE_COMPRESSED,
            )
        )
    return cases


def dit_cases(steps: int = SAMPLER_STEPS, shape: Shape = Shape()) -> list[Case]:
    return [
        Case(
            "dit.forward",
            ("dit",),
            dit_inputs(shape),
            lambda fw, m, x: m["dit"](x["latent"], x["mask"], x["time"]),
            covers="DiT forward with a padded frame",
        ),
        Case(
            "dit.sample",
            ("dit",),
            dit_inputs(shape),
            _sample(steps),
            step_path="",
            covers=f"Euler sampling, {steps} steps: trajectory, final latents, gaps, positions, length",
            discrete=_DISCRETE_SAMPLED,
        ),
    ]


def generation_case(steps: int = SAMPLER_STEPS, shape: Shape = Shape()) -> Case:
    return Case(
        "generate",
        ("dit", "vae"),
        generation_inputs(shape),
        _generate(steps),
        step_path="dit/",
        covers="DiT sampling -> positions -> VAE decode",
        discrete=_DISCRETE_SAMPLED,
    )


def block_case(name: str, shape: Shape = Shape()) -> Case:
    return Case(
        f"{name}.factored_attention",
        (name,),
        block_inputs(name, shape),
        _block,
        covers="one FactoredAttention block, temporal attention with a padded frame",
    )
