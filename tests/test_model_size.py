"""A configuration's model size, counted before anything is built (issue 12: a config.json whose every
field is within its limit can still describe a model no machine holds; it is refused in one line, at once)."""

from __future__ import annotations

import json
import math

import pytest
from cli_helpers import dfc, one_line_error, save_weights
from videos import make_test_video

from common.config import PRESETS, ConfigError, DiTConfig, VAEConfig
from common.model_size import MAX_STATE_VALUES, ModelSizeError, check_fits_memory, state_values

# Unusual but valid members of each family: odd depths, one UNet level, a long temporal kernel, no blocks.
ODD_CONFIGS = [
    VAEConfig(height=48, width=32, patch_size=8, encoder_depth=1, decoder_depth=3, mlp_dim=40, num_heads=3,
              qkv_features=24, max_temporal_len=5, unet_base_features=4, unet_num_levels=1,
              unet_temporal_kernel=5, unembedding_upsample_rate=2, spatial_compression_rate=4),
    VAEConfig(height=16, width=16, patch_size=4, encoder_depth=0, decoder_depth=0, mlp_dim=8, num_heads=1,
              qkv_features=2, max_temporal_len=1, unet_base_features=2, unet_num_levels=4),
    DiTConfig(hw=9, residual_dim=12, compressed_channel_dim=5, depth=3, mlp_dim=7, num_heads=2,
              qkv_features=8, max_temporal_len=3),
]  # fmt: skip
CONFIGS = [*PRESETS.values(), *ODD_CONFIGS]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.model_type}-{state_values(c)[0]}")
def test_the_count_is_every_value_of_the_torch_model(cfg):
    import torch_impl.loading

    model = torch_impl.loading.build_model(cfg, "meta")
    params = sum(t.numel() for t in model.parameters())
    buffers = sum(t.numel() for t in model.buffers())  # the RoPE caches
    assert state_values(cfg) == (params, buffers)


@pytest.mark.parametrize("cfg", [PRESETS["vae-tiny"], PRESETS["dit-tiny"], *ODD_CONFIGS], ids=str)
def test_the_count_is_every_leaf_of_the_flax_state(cfg):
    import jax
    from flax import nnx

    import jax_ref
    from jax_ref.params import abstract_model

    model = abstract_model(jax_ref.VideoVAE if cfg.model_type == "vae" else jax_ref.VideoDiT, cfg)
    sizes = {
        jax.tree_util.keystr(path): math.prod(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model))
    }
    caches = sum(n for name, n in sizes.items() if "_cached" in name)
    params = sum(sizes.values()) - caches
    assert state_values(cfg) == (params, caches)


def test_a_config_over_the_size_limit_is_refused_whatever_its_fields():
    # every field within its own limit (depth <= 1024, widths <= 65536): 6e11 parameters together
    with pytest.raises(ConfigError, match=r"626,314,858,376 parameters .* more than the limit"):
        VAEConfig(encoder_depth=1024, mlp_dim=65536, qkv_features=65536, num_heads=8)
    # the spatial RoPE caches alone: 8192 x 8192 pixels in 1-pixel patches, 21 blocks of 64-wide heads
    with pytest.raises(ModelSizeError, match="RoPE cache values"):
        VAEConfig(height=8192, width=8192, patch_size=1, channels=8, spatial_compression_rate=1)
    assert max(sum(state_values(c)) for c in PRESETS.values()) < MAX_STATE_VALUES / 30


def test_a_model_this_machine_cannot_hold_is_refused_before_it_is_built(monkeypatch):
    import common.model_size

    cfg = PRESETS["dit-256"]
    needed = state_values(cfg)[0] * 4 * 2
    monkeypatch.setattr(common.model_size, "available_memory", lambda: needed - 1)
    with pytest.raises(ModelSizeError, match=r"needs 3\.8 GiB .*504,208,738 parameters x 2 copies"):
        check_fits_memory(cfg, 4, copies=2)
    monkeypatch.setattr(common.model_size, "available_memory", lambda: needed + 2 * state_values(cfg)[1] * 4)
    check_fits_memory(cfg, 4, copies=2)
    monkeypatch.setenv("DFC_SKIP_MEMORY_CHECK", "1")
    monkeypatch.setattr(common.model_size, "available_memory", lambda: 0)
    check_fits_memory(cfg, 4, copies=2)


def test_compress_with_weights_whose_config_describes_a_giant_is_one_line(tmp_path):
    weights = save_weights(tmp_path / "w", "vae-tiny")
    giant = {**json.loads((weights / "config.json").read_text())}
    giant.update(encoder_depth=1024, decoder_depth=1024, mlp_dim=65536, qkv_features=65536, num_heads=8)
    (weights / "config.json").write_text(json.dumps(giant))
    video = make_test_video(tmp_path / "clip.mp4", 4, 32, 32)
    result = dfc("compress", video, tmp_path / "o.dfc", "--weights", weights, timeout=120)
    line = one_line_error(result, "compress")
    assert "parameters" in line and "more than the limit" in line, line


def test_parity_of_a_model_too_big_for_this_machine_is_one_line(tmp_path):
    # 15.1 G values: under the size limit, but 112 GiB for the two float32 copies parity holds
    config = tmp_path / "big-dit.json"
    big = {"model_type": "dit", "depth": 150, "residual_dim": 2048, "qkv_features": 2048, "mlp_dim": 8192}
    config.write_text(json.dumps({**big, "num_heads": 16}))
    result = dfc("parity", "--config", config, "--report", tmp_path / "report", timeout=120)
    line = one_line_error(result, "parity")
    assert "for its weights alone (15,107,960,162 parameters x 2 copies)" in line, line
    assert "DFC_SKIP_MEMORY_CHECK" in line
    assert not (tmp_path / "report").exists()
