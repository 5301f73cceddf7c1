"""VideoDiT: flow-matching transformer over latent frames that also predicts frame spacing (MODEL_SPEC 5).

Shapes use the one legend of docs/ARCHITECTURE.md (here T counts latent frames, D is residual_dim).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from common.config import DiTConfig, resolve_config
from torch_impl.layers import FactoredAttention, linear


class VideoDiT(nn.Module):
    """`(latent (B,T,P,L), mask (B,T) bool, time (B,1)) -> (velocity (B,T,P,L), gaps (B,T))`.

    Inputs are cast to the compute dtype (that of the Linear weights); outputs stay in it.
    """

    def __init__(self, config: DiTConfig | Any = None, **hyperparameters: Any) -> None:
        super().__init__()
        cfg = self.config = resolve_config(DiTConfig, config, hyperparameters)
        self.timestep_proj = linear(1, cfg.residual_dim)
        # Zero-initialised: the model starts out ignoring the time.
        nn.init.zeros_(self.timestep_proj.weight)
        self.up_proj = linear(cfg.compressed_channel_dim, cfg.residual_dim)
        self.layers = nn.ModuleList(FactoredAttention(**cfg.block_kwargs()) for _ in range(cfg.depth))
        self.down_proj = linear(cfg.residual_dim, cfg.compressed_channel_dim)
        self.spacing_pred1 = linear(cfg.residual_dim, 1)
        self.spacing_pred2 = linear(cfg.hw, 1)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.up_proj.weight.dtype

    def forward(
        self, latent: torch.Tensor, mask: torch.Tensor | None, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.compute_dtype
        time = time.to(dtype).reshape(-1, 1)
        x = self.up_proj(latent.to(dtype)) + self.timestep_proj(time)[:, None, None, :]  # (B,T,P,D)
        key_mask = None if mask is None else mask.to(torch.bool)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_mask)
        velocity = self.down_proj(x)
        gaps = self.spacing_pred2(self.spacing_pred1(x).squeeze(-1)).squeeze(-1)  # (B,T,P) -> (B,T)
        return velocity, gaps
