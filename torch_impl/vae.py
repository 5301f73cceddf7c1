"""VideoVAE: a factored-attention encoder/decoder with learned frame selection (MODEL_SPEC section 3).

Shapes use the one legend of docs/ARCHITECTURE.md: B batch, T frames, H/W pixels,
C colour channels, P patches per frame, D patch dim, L latent channels (D / spatial_compression_rate).
A frame mask is `(B,T)` bool or, as the original port's Encoder/Decoder/VideoVAE take it, `(B,1,1,T)`.
Outputs are in the model's compute dtype (`compute_dtype`, the dtype of its Linear weights).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from common.config import VAEConfig, resolve_config
from common.masks import frame_mask_is_key_layout
from torch_impl.layers import FactoredAttention, GumbelSigmoidSTE, PatchEmbedding, PatchUnEmbedding, linear
from torch_impl.selection import Compressed, pack_kept, place_kept, select_frames
from torch_impl.unet import UNet


def frame_mask(mask: torch.Tensor | None, batch: int, frames: int) -> torch.Tensor | None:
    """The frame mask as `(B,T)` bool (True = a real frame). Given as `(B,T)`, or as `(B,1,1,T)`, the
    key-mask layout the original port's Encoder, Decoder and VideoVAE take (MODEL_SPEC section 2); both
    forms mean the same. Any other shape is a `ValueError` that names both accepted ones."""
    if mask is None:
        return None
    if frame_mask_is_key_layout(mask.shape, batch, frames):
        mask = mask[:, 0, 0, :]
    return mask.to(torch.bool)


def _key_mask(mask: torch.Tensor | None, batch: int, frames: int) -> torch.Tensor | None:
    """Either mask form -> `(B,1,1,T)` bool, the key-mask layout of FactoredAttention."""
    mask = frame_mask(mask, batch, frames)
    return None if mask is None else mask[:, None, None, :]


def _factored_stack(cfg: VAEConfig, depth: int) -> nn.ModuleList:
    return nn.ModuleList(FactoredAttention(**cfg.block_kwargs()) for _ in range(depth))


class Encoder(nn.Module):
    """`(video (B,T,H,W,C), mask (B,T) or (B,1,1,T)) -> (mean, variance (B,T,P,L), selection (B,T,1))`.

    `variance = softplus(variance_estimator(x))` as in the Flax original, computed in the compute dtype
    with nothing added; the published PyTorch port instead computed it in fp32 and added 1e-6.
    `selection` is the per-frame keep probability `sigmoid(selection_layer2(...) + 1)`.
    """

    def __init__(self, config: VAEConfig | Any = None, **hyperparameters: Any) -> None:
        super().__init__()
        cfg = self.config = resolve_config(VAEConfig, config, hyperparameters)
        self.patch_embedding = PatchEmbedding(cfg.patch_size, cfg.channels)
        self.spatial_compression = linear(cfg.patch_dim, cfg.latent_dim)
        self.variance_estimator = linear(cfg.patch_dim, cfg.latent_dim)
        self.selection_layer1 = linear(cfg.latent_dim, 1)
        self.selection_layer2 = linear(cfg.num_patches, 1)
        self.layers = _factored_stack(cfg, cfg.encoder_depth)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.patch_embedding.linear.weight.dtype

    def forward(
        self, video: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key_mask = _key_mask(mask, *video.shape[:2])
        x = self.patch_embedding(video)  # (B,T,P,D), cast to the compute dtype inside
        for layer in self.layers:
            x = layer(x, key_mask)
        mean = self.spatial_compression(x)
        variance = F.softplus(self.variance_estimator(x))
        per_patch = self.selection_layer1(mean).squeeze(-1)  # (B,T,P)
        selection = torch.sigmoid(self.selection_layer2(per_patch) + 1)  # (B,T,1)
        return mean, variance, selection


class Decoder(nn.Module):
    """`(latent (B,T,P,L), mask (B,T) or (B,1,1,T)) -> video (B,T,H,W,C)`: patch-unembedded video + UNet
    refinement."""

    def __init__(self, config: VAEConfig | Any = None, **hyperparameters: Any) -> None:
        super().__init__()
        cfg = self.config = resolve_config(VAEConfig, config, hyperparameters)
        self.spatial_decompression = linear(cfg.latent_dim, cfg.patch_dim)
        self.layers = _factored_stack(cfg, cfg.decoder_depth)
        self.patch_unembedding = PatchUnEmbedding(
            cfg.height, cfg.width, cfg.patch_size, cfg.channels, cfg.unembedding_upsample_rate
        )
        self.unet = UNet(
            cfg.unet_channels,
            cfg.channels,
            cfg.unet_base_features,
            cfg.unet_num_levels,
            cfg.unet_temporal_kernel,
        )

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.spatial_decompression.weight.dtype

    def forward(self, latent: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        key_mask = _key_mask(mask, *latent.shape[:2])
        x = self.spatial_decompression(latent.to(self.compute_dtype))  # (B,T,P,D)
        for layer in self.layers:
            x = layer(x, key_mask)
        features, video = self.patch_unembedding(x)  # (B,T,H,W,C*u), (B,T,H,W,C)
        return video + self.unet(features)


class VAEOutput(NamedTuple):
    """Result of the training forward (the fields of jax_ref's dict; `._asdict()` gives it)."""

    reconstruction: torch.Tensor  # (B,T,H,W,C)
    mean: torch.Tensor  # (B,T,P,L)
    variance: torch.Tensor  # (B,T,P,L)
    latent: torch.Tensor  # (B,T,P,L) sampled, before frames are dropped
    selection: torch.Tensor  # (B,T,1) keep probability
    keep: torch.Tensor  # (B,T,1) hard 0/1, straight-through gradient to `selection`


class VideoVAE(nn.Module):
    """Encoder, decoder and the learned `fill_token` `(1,1,1,L)` that stands in for dropped frames."""

    def __init__(self, config: VAEConfig | Any = None, **hyperparameters: Any) -> None:
        super().__init__()
        cfg = self.config = resolve_config(VAEConfig, config, hyperparameters)
        fill_token = torch.empty(1, 1, 1, cfg.latent_dim)
        if not fill_token.is_meta:  # see layers.lecun_normal_
            nn.init.normal_(fill_token, std=0.02)
        self.fill_token = nn.Parameter(fill_token)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.gumbel = GumbelSigmoidSTE()  # no parameters, so no state-dict keys

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.encoder.compute_dtype

    def forward(
        self,
        video: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> VAEOutput:
        """Training forward (reference only, stochastic in any mode, like jax_ref's); `mask` `(B,T)` or
        `(B,1,1,T)` bool, None = all frames real. The latent is
        `mean + sqrt(variance) * noise`, each frame is kept with probability `selection` (Gumbel-sigmoid
        with a straight-through gradient), and dropped frames become `fill_token`.
        """
        mean, variance, selection = self.encoder(video, mask)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device).to(mean.dtype)
        latent = mean + torch.sqrt(variance) * noise
        logits = torch.logit(selection.float(), eps=1e-6)
        keep = self.gumbel(logits, generator=generator, stochastic=True)  # (B,T,1)
        kept = keep[..., None].to(latent.dtype)  # (B,T,1,1) against (B,T,P,L)
        dropped = kept * latent + (1 - kept) * self.fill_token.to(latent.dtype)
        reconstruction = self.decoder(dropped, mask)
        return VAEOutput(reconstruction, mean, variance, latent, selection, keep)

    @torch.inference_mode()
    def compress(
        self,
        video: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        mode: str = "threshold",
        k: int | torch.Tensor | None = None,
        noise: torch.Tensor | torch.Generator | None = None,
    ) -> Compressed:
        """Encode `video (B,T,H,W,C)` and keep the selected latent (mean) frames; see `select_frames`.
        `mask` `(B,T)` or `(B,1,1,T)` bool marks real frames (None: all).

        `num_frames` is T: a batch decodes to T frames. Since GroupNorm mixes all frames of a clip,
        compress clips of different lengths separately rather than padded into one batch.
        """
        batch, frames = video.shape[:2]
        mask = frame_mask(mask, batch, frames)
        if mask is None:
            mask = torch.ones(batch, frames, dtype=torch.bool, device=video.device)
        mean, _, selection = self.encoder(video, mask)
        keep = select_frames(selection[..., 0], mask, mode, k=k, noise=noise)
        kept, gaps, kept_valid = pack_kept(mean, keep)
        return Compressed(kept, gaps, kept_valid, int(frames))

    @torch.inference_mode()
    def decompress(self, compressed: Compressed) -> torch.Tensor:
        """`Compressed` -> video `(B, num_frames, H, W, C)`, decoded with an all-True mask."""
        kept = compressed.kept.to(device=self.fill_token.device)
        latent = place_kept(
            kept, compressed.gaps, compressed.kept_valid, compressed.num_frames, self.fill_token
        )
        mask = torch.ones(latent.shape[:2], dtype=torch.bool, device=latent.device)
        return self.decoder(latent, mask)
