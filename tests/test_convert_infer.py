"""Configurations read off tensor shapes; a given configuration that disagrees names the tensor."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import PRESETS, DiTConfig, VAEConfig
from common.infer import ConfigMismatch, check_config, detect_model_type, flax_shapes, infer_config
from common.tables import TABLES
from convert.tables import torch_shapes
from jax_ref.checkpoints import flax_leaf_shapes


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_read_back_from_its_shapes(preset):
    config = PRESETS[preset]
    inferred = infer_config(config.model_type, flax_leaf_shapes(config))
    assert inferred.config == config
    assert inferred.assumed == {}
    assert detect_model_type(flax_leaf_shapes(config)) == config.model_type


@pytest.mark.parametrize("preset", ["vae-256", "dit-256"])
def test_pytorch_shapes_lack_only_the_rope_length(preset):
    config = PRESETS[preset]
    table = TABLES[config.model_type]
    state = torch_shapes(table, flax_leaf_shapes(config).items())
    inferred = infer_config(config.model_type, flax_shapes(table, state))
    assert inferred.config == config  # the published length is the default
    assert set(inferred.assumed) == {"max_temporal_len"}


vae_configs = st.builds(
    lambda depth, dec, heads, head_dim, mlp, patch, grid, rate, base, levels, frames, kt: VAEConfig(
        height=grid * patch,
        width=grid * patch,
        patch_size=patch,
        encoder_depth=depth,
        decoder_depth=dec,
        mlp_dim=mlp,
        num_heads=heads,
        qkv_features=heads * head_dim,
        max_temporal_len=frames,
        spatial_compression_rate=rate,
        unet_base_features=base,
        unet_num_levels=levels,
        unet_temporal_kernel=kt,
    ),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(1, 4),
    st.sampled_from([2, 4, 8]),
    st.integers(1, 64),
    st.sampled_from([2, 4]),
    st.integers(1, 4),
    st.sampled_from([1, 2, 4]),
    st.integers(1, 8),
    st.integers(1, 3),
    st.integers(1, 16),
    st.sampled_from([1, 3]),
)
dit_configs = st.builds(
    lambda hw, width, channels, depth, mlp, heads, head_dim, frames: DiTConfig(
        hw=hw,
        residual_dim=width,
        compressed_channel_dim=channels,
        depth=depth,
        mlp_dim=mlp,
        num_heads=heads,
        qkv_features=heads * head_dim,
        max_temporal_len=frames,
    ),
    st.integers(1, 64),
    st.integers(1, 64),
    st.integers(1, 32),
    st.integers(0, 3),
    st.integers(1, 64),
    st.integers(1, 4),
    st.sampled_from([2, 4, 8]),
    st.integers(1, 16),
)


@settings(max_examples=40, deadline=None)
@given(st.one_of(vae_configs, dit_configs))
def test_any_configuration_round_trips_through_its_shapes(config):
    shapes = flax_leaf_shapes(config)
    if config.model_type == "vae" and (config.encoder_depth == 0 and config.decoder_depth == 0):
        return  # no attention block: the widths of attention are not in the checkpoint at all
    if config.model_type == "dit" and config.depth == 0:
        return
    assert infer_config(config.model_type, shapes).config == config


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"mlp_dim": 128},
            r"decoder\.layers\.0\.SpatialMLP\.linear1\.kernel has shape \[192, 64\]: axis 1 is 64, "
            r"but the configuration's mlp_dim is 128",
        ),
        (
            {"encoder_depth": 3},
            r"encoder\.layers\.2\.\* is missing, but the configuration's encoder_depth is 3",
        ),
        (
            {"encoder_depth": 1},
            r"encoder\.layers\.1\.\S+ is in the checkpoint, but the configuration's encoder_depth is 1",
        ),
        (
            {"max_temporal_len": 32},
            r"TemporalAttention\.ROPE\.cos_cached has shape \[1, 16, 1, 16\]: axis 1 is 16",
        ),
        (
            {"num_heads": 4},
            r"q_norm\.scale has shape \[16\]: axis 0 is 16, but the configuration's head_dim is 8",
        ),
        (
            {"height": 64, "width": 64},
            r"encoder\.selection_layer2\.kernel has shape \[16, 1\]: axis 0 is 16, "
            r"but the configuration's num_patches is 64",
        ),
        ({"unet_temporal_kernel": 1}, r"decoder\.unet\.patch_mixer\.kernel has shape \[3, 7, 7, 12, 12\]"),
    ],
)
def test_a_contradicting_config_names_the_tensor(change, message):
    config = PRESETS["vae-tiny"]
    with pytest.raises(ConfigMismatch, match=message):
        check_config(dataclasses.replace(config, **change), flax_leaf_shapes(config))


def test_tensors_that_disagree_with_each_other_are_named():
    shapes = flax_leaf_shapes(PRESETS["dit-tiny"])
    shapes["layers.1.TemporalMLP.linear1.kernel"] = (64, 100)
    with pytest.raises(
        ConfigMismatch,
        match=r"layers\.1\.TemporalMLP\.linear1\.kernel has shape \[64, 100\], "
        r"giving mlp_dim = 100, but layers\.0\.SpatialMLP",
    ):
        infer_config("dit", shapes)


def test_missing_tensors_and_gaps_in_lists():
    shapes = flax_leaf_shapes(PRESETS["dit-tiny"])
    del shapes["up_proj.kernel"]
    with pytest.raises(ConfigMismatch, match=r"up_proj\.kernel: no such tensor"):
        infer_config("dit", shapes)
    shapes = {k: v for k, v in flax_leaf_shapes(PRESETS["dit-tiny"]).items() if not k.startswith("layers.0.")}
    with pytest.raises(ConfigMismatch, match=r"layers\.0\.\* is missing, but layers\.1\.\* is there"):
        infer_config("dit", shapes)


def test_non_square_frames_need_a_config():
    config = VAEConfig(
        height=32,
        width=64,
        patch_size=8,
        encoder_depth=1,
        decoder_depth=1,
        mlp_dim=16,
        num_heads=2,
        qkv_features=16,
        max_temporal_len=4,
        unet_base_features=4,
        unet_num_levels=1,
    )
    shapes = flax_leaf_shapes(config)
    inferred = infer_config("vae", shapes, defaults=config)  # 32 patches: not a square grid
    assert {"height", "width"} <= set(inferred.assumed) and inferred.config == config
    check_config(config, shapes)
    with pytest.raises(ConfigMismatch, match="height, width cannot be read from the tensors: pass --config"):
        infer_config("vae", shapes)
