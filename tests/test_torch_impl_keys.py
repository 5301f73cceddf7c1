"""torch_impl's state dicts are the published weight files' names and shapes, and loading is strict.

The expected keys come from the ground-truth JSON files, never from torch_impl itself.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from common.config import DiTConfig, VAEConfig
from torch_impl import VideoDiT, VideoVAE, WeightsError, load_dit, load_vae
from torch_impl.loading import check_state_shapes, expected_state_shapes


def _published(reference_dir, name: str) -> tuple[dict, dict[str, tuple[int, ...]]]:
    data = json.loads((reference_dir / f"{name}_published_torch_keys.json").read_text())
    return data["config"], {t["key"]: tuple(t["shape"]) for t in data["tensors"]}


@pytest.fixture(scope="module")
def vae_reference(reference_dir):
    return _published(reference_dir, "vae")


@pytest.fixture(scope="module")
def dit_reference(reference_dir):
    return _published(reference_dir, "dit")


@pytest.mark.parametrize(
    ("name", "model_cls", "config_cls"), [("vae", VideoVAE, VAEConfig), ("dit", VideoDiT, DiTConfig)]
)
def test_published_state_dict_matches_reference(reference_dir, name, model_cls, config_cls):
    config, reference = _published(reference_dir, name)
    with torch.device("meta"):
        model = model_cls(config_cls(**config))
    state = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    assert sorted(set(state) - set(reference)) == []
    assert sorted(set(reference) - set(state)) == []
    assert state == reference
    assert expected_state_shapes(config_cls(**config)) == reference


def test_rope_caches_are_buffers_but_not_state(dit_reference):
    config, _ = dit_reference
    with torch.device("meta"):
        model = VideoDiT(**config)
    buffers = dict(model.named_buffers())
    assert not any("cached" in key for key in model.state_dict())
    cos = buffers["layers.0.TemporalAttention.ROPE.cos_cached"]
    assert cos.shape == (1, config["max_temporal_len"], 1, config["qkv_features"] // config["num_heads"])
    assert cos.dtype == torch.float32
    assert buffers["layers.0.SpatialAttention.ROPE.sin_cached"].shape[1] == config["hw"]


@pytest.fixture(scope="module")
def published_vae_file(vae_reference, tmp_path_factory):
    """The published VAE's format at full size: a plain torch.save of fp32 tensors (about 650 MB)."""
    _, reference = vae_reference
    # Each tensor is a random window of one random pool: random values at the cost of a copy.
    generator = torch.Generator().manual_seed(0)
    pool = torch.randn(1 << 22, generator=generator)
    state = {}
    for key, shape in reference.items():
        size = math.prod(shape)
        start = int(torch.randint(0, pool.numel() - size + 1, (), generator=generator))
        state[key] = pool[start : start + size].reshape(shape).clone()
    path = tmp_path_factory.mktemp("published") / "vae_pytorch.pt"
    torch.save(state, path)  # legacy-format
    probe = "encoder.layers.3.TemporalAttention.qkv_projection.weight"
    return path, probe, state[probe].clone()


def test_published_vae_file_loads_strictly(published_vae_file, vae_reference):
    path, probe, value = published_vae_file
    config, reference = vae_reference
    vae = load_vae(path)  # no config.json: inferred from shapes, max_temporal_len from the defaults
    assert vae.config == VAEConfig(**config)
    state = vae.state_dict()
    assert {k: tuple(t.shape) for k, t in state.items()} == reference
    assert torch.equal(state[probe], value)


def _mutations(reference: dict[str, tuple[int, ...]], key: str):
    dropped = {k: v for k, v in reference.items() if k != key}
    added = {**reference, "encoder.layers.3.TemporalAttention.extra.weight": (4,)}
    reshaped = {**reference, key: reference[key][::-1]}
    return {"dropped": (dropped, key), "added": (added, "extra.weight"), "reshaped": (reshaped, key)}


@pytest.mark.parametrize("how", ["dropped", "added", "reshaped"])
def test_published_shape_check_names_the_offender(vae_reference, how):
    config, reference = vae_reference
    key = "encoder.layers.3.TemporalAttention.qkv_projection.weight"
    shapes, offender = _mutations(reference, key)[how]
    with pytest.raises(WeightsError, match=offender.replace(".", r"\.")) as info:
        check_state_shapes(shapes, expected_state_shapes(VAEConfig(**config)))
    if how == "reshaped":
        assert "(768, 1536)" in str(info.value) and "(1536, 768)" in str(info.value)


@pytest.mark.parametrize("how", ["dropped", "added", "reshaped"])
def test_tiny_dit_file_with_one_bad_tensor_fails(tmp_path, how):
    state = VideoDiT("dit-tiny").state_dict()
    key = "layers.1.SpatialAttention.q_norm.weight"
    if how == "dropped":
        del state[key]
    elif how == "added":
        key = "layers.1.SpatialAttention.q_norm.bias"
        state[key] = torch.zeros(16)
    else:
        state[key] = torch.zeros(17)
    path = tmp_path / "dit_pytorch.pt"
    torch.save(state, path)  # legacy-format
    with pytest.raises(WeightsError, match=key.replace(".", r"\.")) as info:
        load_dit(path, config="dit-tiny")
    assert key in (info.value.missing + info.value.unexpected + info.value.mismatched)
    if how == "reshaped":
        assert "(17,)" in str(info.value) and "(16,)" in str(info.value)


def test_tiny_dit_file_loads_strictly(tmp_path):
    source = VideoDiT("dit-tiny")
    path = tmp_path / "dit_pytorch.pt"
    torch.save(source.state_dict(), path)  # legacy-format
    loaded = load_dit(path, config="dit-tiny")
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
