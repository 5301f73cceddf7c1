"""What a parity run builds in both frameworks: a model or a lone block, with its place in the table.

A subject knows how to build itself in JAX (`build_jax(dtype, numerics)`) and in torch (`build_torch()`),
which conversion table and prefix turn its flax leaves into torch ones, and which of its torch modules hold
5-D activations channels-first. Porting a further model means writing one of these (docs/PORTING.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.config import DiTConfig, VAEConfig
from common.tables import DIT_TABLE, VAE_TABLE, Table

# torch_impl's UNet runs its convolutions on (B, C, T, H, W); its own input and output are channels last.
VAE_CHANNELS_FIRST = ("*unet.*",)


@dataclass(frozen=True)
class Subject:
    name: str
    config: Any
    table: Table
    prefix: str  # where the subject sits in the table's model: "" for a whole model
    build_jax: Callable[..., Any]  # (dtype, numerics) -> nnx.Module with fp32 params
    build_torch: Callable[[], Any]  # () -> torch.nn.Module
    channels_first: tuple[str, ...] = ()


def _jax_kwargs(dtype, numerics) -> dict:
    import jax.numpy as jnp
    from flax import nnx

    return dict(rngs=nnx.Rngs(0), dtype=dtype, param_dtype=jnp.float32, norm_numerics=numerics)


def vae_subject(cfg: VAEConfig) -> Subject:
    def build_jax(dtype, numerics):
        import jax_ref

        return jax_ref.VideoVAE(cfg, **_jax_kwargs(dtype, numerics))

    def build_torch():
        import torch_impl

        return torch_impl.VideoVAE(cfg)

    return Subject("vae", cfg, VAE_TABLE, "", build_jax, build_torch, VAE_CHANNELS_FIRST)


def dit_subject(cfg: DiTConfig) -> Subject:
    def build_jax(dtype, numerics):
        import jax_ref

        return jax_ref.VideoDiT(cfg, **_jax_kwargs(dtype, numerics))

    def build_torch():
        import torch_impl

        return torch_impl.VideoDiT(cfg)

    return Subject("dit", cfg, DIT_TABLE, "", build_jax, build_torch)


def block_subject(cfg: VAEConfig | DiTConfig) -> Subject:
    """One FactoredAttention block at the width of `cfg`, converted as the model's first block."""
    kwargs = cfg.block_kwargs()
    is_vae = isinstance(cfg, VAEConfig)

    def build_jax(dtype, numerics):
        import jax_ref

        return jax_ref.FactoredAttention(**kwargs, **_jax_kwargs(dtype, numerics))

    def build_torch():
        import torch_impl

        return torch_impl.FactoredAttention(**kwargs)

    table, prefix = (VAE_TABLE, "encoder.layers.0.") if is_vae else (DIT_TABLE, "layers.0.")
    return Subject(f"{'vae' if is_vae else 'dit'}-block", cfg, table, prefix, build_jax, build_torch)


def block_width(cfg: VAEConfig | DiTConfig) -> int:
    return cfg.block_kwargs()["in_features"]
