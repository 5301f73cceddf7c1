"""PyTorch implementation of the VideoVAE and VideoDiT; state-dict keys are the published file's names.

Channels last at every public surface: a video is `(B, T, H, W, C)`, a latent `(B, T, hw, L)`.
Importing this package needs torch, einops and numpy; never jax, never `dfc` or `convert`.
Shape letters as in docs/ARCHITECTURE.md (B batch, T frames, P patches per frame, ...).

Whole videos (files in, `.dfc` files out, generated videos) are the command line's job: `dfc.codec`.
"""

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
    WeightFiles,
    WeightsError,
    WeightsFileError,
    WeightsNotFoundError,
    check_state_shapes,
    expected_state_shapes,
    file_identity,
    infer_dit_config,
    infer_vae_config,
    load_dit,
    load_vae,
    locate_weights,
    weights_identity,
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
    "DownBlock3D",
    "Encoder",
    "FactoredAttention",
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
    "WeightFiles",
    "WeightsError",
    "WeightsFileError",
    "WeightsNotFoundError",
    "apply_precision",
    "check_state_shapes",
    "expected_state_shapes",
    "file_identity",
    "gaps_to_positions",
    "infer_dit_config",
    "infer_vae_config",
    "load_dit",
    "load_vae",
    "locate_weights",
    "pack_kept",
    "place_kept",
    "sample",
    "select_frames",
    "weights_identity",
]
