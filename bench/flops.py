"""Analytic FLOP counts (2 per multiply-add) of the VAE encode/decode and one DiT step, from the config.

Only matrix products and convolutions are counted; norms, softmax, RoPE, activations and the
element-wise adds are a few FLOPs per value and left out (well under 1% at the published sizes).
"""

from __future__ import annotations

from common.config import DiTConfig, VAEConfig


def factored_block(tokens_t: int, tokens_s: int, batch: int, dim: int, qkv: int, mlp: int) -> int:
    """One FactoredAttention block on `(batch, tokens_t, tokens_s, dim)`: both attentions and both MLPs."""
    n = batch * tokens_t * tokens_s
    projections = 2 * (2 * n * dim * 3 * qkv + 2 * n * qkv * dim)  # qkv and out, both attentions
    scores = 4 * n * qkv * tokens_t + 4 * n * qkv * tokens_s  # QK^T and AV over each sequence length
    mlps = 2 * (2 * n * dim * mlp * 2)  # linear1 + linear2, both MLPs
    return projections + scores + mlps


def dit_step(cfg: DiTConfig, frames: int, batch: int = 1) -> dict[str, int]:
    """One DiT forward (one sampling step) on `frames` latent frames."""
    n = batch * frames * cfg.hw
    block = factored_block(frames, cfg.hw, batch, cfg.residual_dim, cfg.qkv_features, cfg.mlp_dim)
    io = 2 * n * cfg.compressed_channel_dim * cfg.residual_dim * 2 + 2 * n * cfg.residual_dim
    io += 2 * batch * frames * cfg.hw
    return {"block": block, "blocks": block * cfg.depth, "total": block * cfg.depth + io}


def _conv(voxels: int, c_in: int, c_out: int, kernel: int) -> int:
    return 2 * voxels * c_in * c_out * kernel


def unet(cfg: VAEConfig, frames: int, batch: int = 1) -> int:
    """The decoder's 3D UNet (convolutions with 'same' padding, so each output voxel sees the full kernel)."""
    k = cfg.unet_temporal_kernel * 9
    c = cfg.unet_channels
    widths = [cfg.unet_base_features * 2**i for i in range(cfg.unet_num_levels + 1)]
    vox = [batch * frames * (cfg.height >> i) * (cfg.width >> i) for i in range(cfg.unet_num_levels + 1)]
    total = _conv(vox[0], c, c, cfg.unet_temporal_kernel * 49)  # patch_mixer
    c_in = c
    for level in range(cfg.unet_num_levels):
        total += _conv(vox[level], c_in, widths[level], k) + _conv(
            vox[level], widths[level], widths[level], k
        )
        c_in = widths[level]
    bottom = vox[cfg.unet_num_levels]
    total += _conv(bottom, widths[-2], widths[-1], k) + _conv(bottom, widths[-1], widths[-1], k)
    for level in reversed(range(cfg.unet_num_levels)):
        w = widths[level]
        total += _conv(vox[level], widths[level + 1], w, 1)  # ConvTranspose (1,2,2), stride = kernel
        total += _conv(vox[level], 2 * w, w, k) + _conv(vox[level], w, w, k)
    total += _conv(vox[0], widths[0], cfg.channels, 1)
    return total


def vae_encode(cfg: VAEConfig, frames: int, batch: int = 1) -> dict[str, int]:
    n = batch * frames * cfg.num_patches
    d, lat = cfg.patch_dim, cfg.latent_dim
    block = factored_block(frames, cfg.num_patches, batch, d, cfg.qkv_features, cfg.mlp_dim)
    io = 2 * n * d * d + 2 * (2 * n * d * lat) + 2 * n * lat + 2 * batch * frames * cfg.num_patches
    return {"block": block, "blocks": block * cfg.encoder_depth, "total": block * cfg.encoder_depth + io}


def vae_decode(cfg: VAEConfig, frames: int, batch: int = 1) -> dict[str, int]:
    n = batch * frames * cfg.num_patches
    d, lat, u = cfg.patch_dim, cfg.latent_dim, cfg.unembedding_upsample_rate
    block = factored_block(frames, cfg.num_patches, batch, d, cfg.qkv_features, cfg.mlp_dim)
    pixels = batch * frames * cfg.height * cfg.width
    unembed = 2 * n * d * d + 2 * n * d * d * u + 2 * pixels * cfg.channels * u * cfg.channels
    net = unet(cfg, frames, batch)
    total = 2 * n * lat * d + block * cfg.decoder_depth + unembed + net
    return {"block": block, "blocks": block * cfg.decoder_depth, "unet": net, "total": total}
