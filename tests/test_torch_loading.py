"""Every way of handing weights to load_vae/load_dit, configuration inference and precision policies."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from common.config import PRESETS, config_to_json
from torch_impl import (
    ROPE,
    GroupNorm,
    LayerNorm,
    VideoDiT,
    VideoVAE,
    WeightsError,
    WeightsNotFoundError,
    infer_dit_config,
    infer_vae_config,
    load_dit,
    load_vae,
)

REPO_ID = "floatingtrees2/dynamic-frame-compression"


@pytest.fixture(scope="module")
def tiny_vae() -> VideoVAE:
    torch.manual_seed(0)
    return VideoVAE("vae-tiny").eval()


@pytest.fixture(scope="module")
def tiny_dit() -> VideoDiT:
    torch.manual_seed(1)
    return VideoDiT("dit-tiny").eval()


def _assert_same_weights(loaded: nn.Module, source: nn.Module) -> None:
    got = loaded.state_dict()
    assert got.keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        assert torch.equal(got[key], value), key


def _write_config(directory, name: str) -> None:
    (directory / "config.json").write_text(config_to_json(PRESETS[name]))


def test_safetensors_file_with_explicit_config(tmp_path, tiny_vae):
    path = tmp_path / "weights.safetensors"
    save_file(tiny_vae.state_dict(), path)
    vae = load_vae(path, config="vae-tiny")
    _assert_same_weights(vae, tiny_vae)
    assert not vae.training
    video = torch.rand(1, 3, 32, 32, 3)
    torch.testing.assert_close(
        vae.decompress(vae.compress(video)), tiny_vae.decompress(tiny_vae.compress(video))
    )


def test_directory_with_config_json(tmp_path, tiny_dit):
    save_file(tiny_dit.state_dict(), tmp_path / "model.safetensors")
    _write_config(tmp_path, "dit-tiny")
    dit = load_dit(tmp_path)
    assert dit.config == PRESETS["dit-tiny"]
    _assert_same_weights(dit, tiny_dit)


def test_loading_builds_the_model_without_drawing_weights(tmp_path, tiny_vae, tiny_dit):
    """The model is built on the meta device with no random draws: drawing there pulls in torch._dynamo,
    a second of a cold `dfc compress`."""
    import subprocess
    import sys

    for name, model in (("vae", tiny_vae), ("dit", tiny_dit)):
        save_file(model.state_dict(), tmp_path / f"{name}.safetensors")
    code = (
        "import sys, torch_impl; "
        f"torch_impl.load_vae({str(tmp_path / 'vae.safetensors')!r}, config='vae-tiny'); "
        f"torch_impl.load_dit({str(tmp_path / 'dit.safetensors')!r}, config='dit-tiny'); "
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sharded_directory_with_index(tmp_path, tiny_vae):
    state = tiny_vae.state_dict()
    weight_map = {
        key: (
            "model-00001-of-00002.safetensors"
            if key.startswith("encoder")
            else "model-00002-of-00002.safetensors"
        )
        for key in state
    }
    for shard in set(weight_map.values()):
        save_file({k: v for k, v in state.items() if weight_map[k] == shard}, tmp_path / shard)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    _write_config(tmp_path, "vae-tiny")
    vae = load_vae(tmp_path)
    assert vae.config == PRESETS["vae-tiny"]
    _assert_same_weights(vae, tiny_vae)


def test_config_json_of_the_other_model_is_ignored(tmp_path, tiny_dit):
    save_file(tiny_dit.state_dict(), tmp_path / "dit.safetensors")
    _write_config(tmp_path, "vae-tiny")
    dit = load_dit(tmp_path / "dit.safetensors")
    assert dit.config == dataclasses.replace(PRESETS["dit-tiny"], max_temporal_len=64)


@pytest.mark.parametrize(
    ("name", "infer"),
    [
        ("vae-tiny", infer_vae_config),
        ("vae-small", infer_vae_config),
        ("dit-tiny", infer_dit_config),
        ("dit-small", infer_dit_config),
    ],
)
def test_config_inferred_from_shapes(name, infer):
    cls = VideoVAE if name.startswith("vae") else VideoDiT
    with torch.device("meta"):
        state = cls(name).state_dict()
    # The state dict holds no RoPE caches, so the sequence bound falls back to the published 64.
    assert infer(state) == dataclasses.replace(PRESETS[name], max_temporal_len=64)


def test_inference_on_the_wrong_model_says_which_model_it_is(tiny_dit):
    with pytest.raises(WeightsError, match=r"VAE configuration: this state dict looks like a DiT"):
        infer_vae_config(tiny_dit.state_dict())
    state = {**tiny_dit.state_dict(), "extra.thing": torch.zeros(3)}
    with pytest.raises(WeightsError, match=r"cannot infer the DiT configuration: extra\.thing: no rule"):
        infer_dit_config(state)


def _populate_hub_cache(cache, filename: str, state: dict) -> None:
    """The layout huggingface_hub itself writes: refs/main names a commit, snapshots/<commit>/ the files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    torch.save(state, snapshot / filename)  # legacy-format


def test_hub_repo_id_resolved_offline_from_cache(tmp_path, monkeypatch, tiny_vae, tiny_dit):
    home = tmp_path / "hf"
    _populate_hub_cache(home / "hub", "vae_pytorch.pt", tiny_vae.state_dict())
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_same_weights(load_vae(REPO_ID, config="vae-tiny"), tiny_vae)
    # The DiT file is not cached: the error says how to provide it.
    with pytest.raises(WeightsNotFoundError) as info:
        load_dit(REPO_ID)
    message = str(info.value)
    assert "dit_pytorch.pt" in message and "local path" in message
    assert f"hf download {REPO_ID} dit_pytorch.pt" in message and str(home / "hub") in message


def test_uncached_repo_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="Provide the weights"):
        load_vae()


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        load_vae(tmp_path / "nope.pt")
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        load_vae("weights/vae_pytorch.pt")  # looks like owner/name, but is a missing file
    with pytest.raises(WeightsNotFoundError, match="model.safetensors"):
        load_vae(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"fill_token": "a.safetensors"}}')
    with pytest.raises(WeightsNotFoundError, match="a.safetensors"):
        load_vae(tmp_path)


def _dtypes(model: nn.Module) -> dict[str, set[torch.dtype]]:
    kinds = {"matmul": set(), "norm": set(), "rope": set()}
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv3d | nn.ConvTranspose3d):
            kinds["matmul"] |= {p.dtype for p in module.parameters()}
        elif isinstance(module, LayerNorm | GroupNorm):
            kinds["norm"] |= {p.dtype for p in module.parameters()}
        elif isinstance(module, ROPE):
            kinds["rope"] |= {b.dtype for b in module.buffers()}
    return kinds


F32, BF16 = torch.float32, torch.bfloat16


@pytest.mark.parametrize(
    ("precision", "matmul", "norm", "rope"),
    [("fp32", F32, F32, F32), ("bf16", BF16, BF16, BF16), ("mixed", BF16, F32, F32)],
)
def test_precision_policies(tmp_path, tiny_vae, precision, matmul, norm, rope):
    path = tmp_path / "vae.safetensors"
    save_file(tiny_vae.state_dict(), path)
    vae = load_vae(path, config="vae-tiny", precision=precision)
    assert _dtypes(vae) == {"matmul": {matmul}, "norm": {norm}, "rope": {rope}}
    assert vae.compute_dtype == matmul
    assert vae.fill_token.dtype == (BF16 if precision == "bf16" else F32)
    video = torch.rand(1, 2, 32, 32, 3)
    mean, variance, selection = vae.encoder(video, None)
    assert mean.dtype == variance.dtype == selection.dtype == matmul
    assert vae.decoder(mean, None).dtype == matmul
