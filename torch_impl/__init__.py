"""PyTorch implementation of the VideoVAE and VideoDiT; state-dict keys are the published file's names.

Channels last at every public surface: a video is `(B, T, H, W, C)`, a latent `(B, T, hw, L)`.
Importing this package needs torch, einops and numpy; never jax.

Whole videos: `compress_video` / `decompress_video` (files or frames <-> `dfc.container.CompressedVideo`,
saved with `dfc.container.write_container`) and `generate` (DiT samples decoded by the VAE), from
`torch_impl.codec`; `dfc compress`, `dfc decompress` and `dfc generate` are these calls.
"""

from torch_impl.codec import (
    Decompressed,
    GeneratedVideo,
    check_model_fits,
    check_pair,
    compress_frames,
    compress_video,
    decode_clips,
    decompress_video,
    generate,
)
from torch_impl.dit import VideoDiT
from torch_impl.layers import (
    MLP,
    ROPE,
    Attention,
    FactoredAttention,
    GumbelSigmoidSTE,
    Linear,
    PatchEmbedding,
    PatchUnEmbedding,
)
from torch_impl.loading import (
    DEFAULT_REPO,
    WeightsError,
    WeightsNotFoundError,
    check_state_shapes,
    expected_state_shapes,
    infer_dit_config,
    infer_vae_config,
    load_dit,
    load_vae,
)
from torch_impl.norms import GroupNorm, LayerNorm
from torch_impl.precision import apply_precision
from torch_impl.sampling import gaps_to_positions, sample
from torch_impl.selection import Compressed, pack_kept, place_kept, select_frames
from torch_impl.unet import Conv3d, ConvBlock3D, ConvTranspose3d, DownBlock3D, UNet, UpBlock3D
from torch_impl.vae import Decoder, Encoder, VAEOutput, VideoVAE

__all__ = [
    "DEFAULT_REPO",
    "MLP",
    "ROPE",
    "Attention",
    "Compressed",
    "Conv3d",
    "ConvTranspose3d",
    "ConvBlock3D",
    "Decoder",
    "Decompressed",
    "DownBlock3D",
    "Encoder",
    "FactoredAttention",
    "GeneratedVideo",
    "GroupNorm",
    "GumbelSigmoidSTE",
    "LayerNorm",
    "Linear",
    "PatchEmbedding",
    "PatchUnEmbedding",
    "UNet",
    "UpBlock3D",
    "VAEOutput",
    "VideoDiT",
    "VideoVAE",
    "WeightsError",
    "WeightsNotFoundError",
    "apply_precision",
    "check_model_fits",
    "check_pair",
    "check_state_shapes",
    "compress_frames",
    "compress_video",
    "decode_clips",
    "decompress_video",
    "expected_state_shapes",
    "gaps_to_positions",
    "generate",
    "infer_dit_config",
    "infer_vae_config",
    "load_dit",
    "load_vae",
    "pack_kept",
    "place_kept",
    "sample",
    "select_frames",
]
