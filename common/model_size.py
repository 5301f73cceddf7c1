"""How big a model a configuration describes, counted from the configuration alone (no framework).

A configuration whose every field is within its limit (`common.config.MAX_DEPTH` and friends) can still
describe an absurd model: depth 1024 at width 65536 is 5e13 parameters. `check_model_size` refuses such a
configuration before any model is built, and `check_fits_memory` refuses to initialise a model this machine
cannot hold, instead of letting the kernel kill the process half-way through.

The count is exact: it is the number of values in the model's state - its parameters and its RoPE caches
(`cos_cached`, `sin_cached`), which Flax keeps as state and torch computes at construction - and
tests/test_model_size.py checks it against the torch models' own tensors.
"""

from __future__ import annotations

import os
from typing import Any

from common.config import ConfigError

# The published models hold 171 M (VAE) and 505 M (DiT) values; 2**34 (17.2 G values, 64 GiB in float32)
# leaves room for far larger members of the family and refuses configurations no machine can build.
MAX_STATE_VALUES = 2**34


class ModelSizeError(ConfigError):
    """A model too large to build: one line with its size and the limit it is over."""


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _attention(width: int, qkv: int, heads: int, max_len: int) -> tuple[int, int]:
    """(parameters, RoPE cache values) of one `Attention`."""
    head_dim = qkv // heads
    params = 2 * width + _linear(width, 3 * qkv) + _linear(qkv, width) + 2 * head_dim  # q_norm, k_norm: scale
    return params, 2 * max_len * head_dim


def _mlp(width: int, mlp_dim: int) -> int:
    return 2 * width + _linear(width, mlp_dim) + _linear(mlp_dim, width)


def _factored_attention(kwargs: dict[str, int]) -> tuple[int, int]:
    width, qkv, heads = kwargs["in_features"], kwargs["qkv_features"], kwargs["num_heads"]
    temporal = _attention(width, qkv, heads, kwargs["max_temporal_len"])
    spatial = _attention(width, qkv, heads, kwargs["max_spatial_len"])
    params = temporal[0] + spatial[0] + 2 * _mlp(width, kwargs["mlp_dim"])
    return params, temporal[1] + spatial[1]


def _conv(n_in: int, n_out: int, kernel_volume: int) -> int:
    return n_in * n_out * kernel_volume + n_out


def _conv_block(n_in: int, n_out: int, temporal_kernel: int) -> int:
    return _conv(n_in, n_out, temporal_kernel * 9) + 2 * n_out  # conv (kt, 3, 3), GroupNorm scale and bias


def _unet(n_in: int, n_out: int, base: int, levels: int, kt: int) -> int:
    widths = [base * 2**i for i in range(levels + 1)]
    total = _conv(n_in, n_in, kt * 49)  # patch_mixer (kt, 7, 7)
    for c_in, c_out in zip([n_in, *widths[:-2]], widths[:-1]):
        total += _conv_block(c_in, c_out, kt) + _conv_block(c_out, c_out, kt)  # encoders
    total += _conv_block(widths[-2], widths[-1], kt) + _conv_block(widths[-1], widths[-1], kt)  # bottleneck
    for i in range(levels):  # decoders: upsample (1, 2, 2), conv1 over [upsampled, skip], conv2
        total += _conv(widths[i + 1], widths[i], 4) + _conv_block(2 * widths[i], widths[i], kt)
        total += _conv_block(widths[i], widths[i], kt)
    return total + _conv(base, n_out, 1)  # final_conv


def _vae(cfg: Any) -> tuple[int, int]:
    d, latent, patches = cfg.patch_dim, cfg.latent_dim, cfg.num_patches
    block_params, block_rope = _factored_attention(cfg.block_kwargs())
    blocks = cfg.encoder_depth + cfg.decoder_depth
    encoder = 2 * d + _linear(d, d) + 2 * _linear(d, latent) + _linear(latent, 1) + _linear(patches, 1)
    unembed = _linear(d, d) + _linear(d, d * cfg.unembedding_upsample_rate)
    unembed += _linear(cfg.unet_channels, cfg.channels)
    unet = _unet(
        cfg.unet_channels, cfg.channels, cfg.unet_base_features, cfg.unet_num_levels, cfg.unet_temporal_kernel
    )
    decoder = _linear(latent, d) + unembed + unet
    return latent + encoder + decoder + blocks * block_params, blocks * block_rope  # latent: fill_token


def _dit(cfg: Any) -> tuple[int, int]:
    width, channels = cfg.residual_dim, cfg.compressed_channel_dim
    block_params, block_rope = _factored_attention(cfg.block_kwargs())
    heads = _linear(1, width) + _linear(channels, width) + _linear(width, channels)
    heads += _linear(width, 1) + _linear(cfg.hw, 1)  # spacing_pred1, spacing_pred2
    return heads + cfg.depth * block_params, cfg.depth * block_rope


def state_values(cfg: Any) -> tuple[int, int]:
    """(parameters, RoPE cache values) of the model `cfg` describes (a `VAEConfig` or `DiTConfig`)."""
    return {"vae": _vae, "dit": _dit}[cfg.model_type](cfg)


def _gib(values: int, bytes_per_value: int = 4) -> str:
    return f"{values * bytes_per_value / 2**30:,.1f} GiB"


def check_model_size(cfg: Any) -> None:
    """Refuse a configuration whose model holds more than `MAX_STATE_VALUES` values."""
    params, rope = state_values(cfg)
    if params + rope > MAX_STATE_VALUES:
        raise ModelSizeError(
            f"{type(cfg).__name__} describes a model of {params:,} parameters and {rope:,} RoPE cache values "
            f"({_gib(params + rope)} in float32), more than the limit of {MAX_STATE_VALUES:,} values"
        )


def available_memory() -> int | None:
    """Bytes this machine can still give without swapping (Linux `MemAvailable`), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits_memory(cfg: Any, bytes_per_value: int, copies: int = 1, what: str = "the model") -> None:
    """Refuse to initialise `copies` models of `cfg` at `bytes_per_value` when their state alone would not
    fit in the memory this machine has available (set DFC_SKIP_MEMORY_CHECK=1 to try anyway)."""
    if os.environ.get("DFC_SKIP_MEMORY_CHECK") == "1":
        return
    available = available_memory()
    params, rope = state_values(cfg)
    needed = (params * bytes_per_value + rope * 4) * copies
    if available is not None and needed > available:
        raise ModelSizeError(
            f"{what} needs {needed / 2**30:,.1f} GiB for its weights alone ({params:,} parameters"
            f"{f' x {copies} copies' if copies > 1 else ''}), this machine has {available / 2**30:,.1f} GiB "
            "available (set DFC_SKIP_MEMORY_CHECK=1 to try anyway)"
        )
