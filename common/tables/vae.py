"""The VideoVAE's name/layout table and the configuration facts its tensor shapes carry."""

from __future__ import annotations

import math

from common.config import VAEConfig
from common.kinds import Kind
from common.tables.base import (
    ATTENTION_FACTS,
    ATTENTION_RULES,
    GENERIC_RULES,
    HEADS,
    Axis,
    Count,
    Derived,
    InferenceTable,
    Rule,
    Table,
    factored_ropes,
)


def _ropes(cfg: VAEConfig) -> dict[str, tuple[int, int]]:
    args = (cfg.max_temporal_len, cfg.num_patches, cfg.head_dim)
    return {
        **factored_ropes("decoder.", cfg.decoder_depth, *args),
        **factored_ropes("encoder.", cfg.encoder_depth, *args),
    }


VAE_TABLE = Table(
    model_type="vae",
    rules=(
        *ATTENTION_RULES,
        Rule("*unet.decoders.*.upsample.kernel", Kind.CONV_TRANSPOSE),
        Rule("*unet.*.kernel", Kind.CONV),
        *GENERIC_RULES,
        Rule("fill_token", Kind.PARAM),
    ),
    rope_caches=_ropes,
)


def _exact_root(value: int) -> int | None:
    root = math.isqrt(value)
    return root if root * root == value else None


def _patch_size(f: dict[str, int]) -> int | None:
    per_channel, rest = divmod(f["patch_dim"], f["channels"])
    return None if rest else _exact_root(per_channel)


def _side(f: dict[str, int]) -> int | None:
    # Only the patch count is stored (hw = (H/p)(W/p)); square frames are the published and only
    # trained case, so a non-square count needs --config.
    grid = _exact_root(f["num_patches"])
    patch = _patch_size(f)
    return None if grid is None or patch is None else grid * patch


VAE_INFERENCE = InferenceTable(
    model_type="vae",
    config_class=VAEConfig,
    marker="fill_token",
    facts=(
        Count("encoder_depth", "encoder.layers"),
        Count("decoder_depth", "decoder.layers"),
        Count("unet_num_levels", "decoder.unet.encoders"),
        Axis("patch_dim", "encoder.patch_embedding.norm.scale", 0),
        Axis("patch_dim", "*layers.*.input_norm.scale", 0),
        Axis("latent_dim", "fill_token", 3),
        Axis("latent_dim", "encoder.spatial_compression.kernel", 1),
        Axis("num_patches", "encoder.selection_layer2.kernel", 0),
        Axis("num_patches", "*SpatialAttention.ROPE.cos_cached", 1, required=False),
        Axis("channels", "decoder.unet.final_conv.kernel", 4),
        Axis("unet_channels", "decoder.unet.patch_mixer.kernel", 3),
        Axis("unet_base_features", "decoder.unet.encoders.0.conv1.conv.kernel", 4),
        Axis("unet_temporal_kernel", "decoder.unet.patch_mixer.kernel", 0),
        Axis("unet_temporal_kernel", "decoder.unet.*.conv.kernel", 0),
        *ATTENTION_FACTS,
    ),
    derived=(
        HEADS,
        Derived("patch_size", _patch_size, "sqrt(patch_dim / channels)"),
        Derived("height", _side, "sqrt(patches per frame) * patch_size (square frames)"),
        Derived("width", _side, "sqrt(patches per frame) * patch_size (square frames)"),
        Derived(
            "spatial_compression_rate", lambda f: f["patch_dim"] // f["latent_dim"], "patch_dim / latent_dim"
        ),
        Derived(
            "unembedding_upsample_rate",
            lambda f: f["unet_channels"] // f["channels"],
            "unet channels / channels",
        ),
    ),
)
