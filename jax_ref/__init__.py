"""Flax NNX reference implementation of the video VAE and DiT; `nnx.state` paths are the training code's.

Imports jax and flax only (never torch, `convert` or `dfc`). Shapes use the one legend of
docs/ARCHITECTURE.md (B batch, T frames, P patches per frame, ...).
"""

from jax_ref.dit import VideoDiT
from jax_ref.layers import (
    MLP,
    ROPE,
    Attention,
    FactoredAttention,
    GumbelSigmoidSTE,
    PatchEmbedding,
    PatchUnEmbedding,
    RotaryEmbedding,
)
from jax_ref.norms import GroupNorm, LayerNorm
from jax_ref.params import abstract_model, load_flat, randomize, state_to_flat, variables
from jax_ref.sampling import gaps_to_positions, sample
from jax_ref.selection import Compressed, pack_kept, place_kept, select_frames
from jax_ref.unet import ConvBlock3D, DownBlock3D, UNet, UpBlock3D
from jax_ref.vae import Decoder, Encoder, VideoVAE

__all__ = [
    "MLP",
    "ROPE",
    "Attention",
    "Compressed",
    "ConvBlock3D",
    "Decoder",
    "DownBlock3D",
    "Encoder",
    "FactoredAttention",
    "GroupNorm",
    "GumbelSigmoidSTE",
    "LayerNorm",
    "PatchEmbedding",
    "PatchUnEmbedding",
    "RotaryEmbedding",
    "UNet",
    "UpBlock3D",
    "VideoDiT",
    "VideoVAE",
    "abstract_model",
    "gaps_to_positions",
    "load_flat",
    "pack_kept",
    "place_kept",
    "randomize",
    "sample",
    "select_frames",
    "state_to_flat",
    "variables",
]
