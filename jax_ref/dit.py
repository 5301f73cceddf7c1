"""The video DiT: velocity of the flow plus the spacing of the generated frames (MODEL_SPEC section 5).

No JAX source of it is public; its parameter names follow from the published PyTorch keys.
Shapes use the one legend of docs/ARCHITECTURE.md (here T counts latent frames, D is residual_dim).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common.config import DiTConfig, resolve_config
from common.precision import NormNumerics
from jax_ref.compat import module_list
from jax_ref.init import linear, zeros
from jax_ref.layers import FactoredAttention


class VideoDiT(nnx.Module):
    """`latent (B, T, P, L), mask (B, T) bool, time (B, 1) -> (velocity (B, T, P, L), gaps (B, T))`."""

    def __init__(
        self,
        config=None,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        norm_numerics=NormNumerics.FLAX_0_10,
        **hyperparameters,
    ):
        cfg = self.config = resolve_config(DiTConfig, config, hyperparameters)
        self.dtype = dtype
        lin = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        # zero-initialised: a fresh model ignores the time until training says otherwise
        self.timestep_proj = linear(1, cfg.residual_dim, kernel_init=zeros, bias_init=zeros, **lin)
        self.up_proj = linear(cfg.compressed_channel_dim, cfg.residual_dim, **lin)
        self.layers = module_list(
            FactoredAttention(**cfg.block_kwargs(), norm_numerics=norm_numerics, **lin)
            for _ in range(cfg.depth)
        )
        self.down_proj = linear(cfg.residual_dim, cfg.compressed_channel_dim, **lin)
        self.spacing_pred1 = linear(cfg.residual_dim, 1, **lin)
        self.spacing_pred2 = linear(cfg.hw, 1, **lin)

    def __call__(self, latent: jax.Array, mask: jax.Array, time: jax.Array) -> tuple[jax.Array, jax.Array]:
        # (B, D) time embedding broadcast over frames and patches
        x = self.up_proj(latent) + self.timestep_proj(time)[:, None, None, :]
        key_mask = jnp.asarray(mask, bool)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_mask)
        gaps = self.spacing_pred2(jnp.squeeze(self.spacing_pred1(x), -1))
        return self.down_proj(x), jnp.squeeze(gaps, -1)
