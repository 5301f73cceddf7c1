"""jax_ref's parameter tree is the training code's: names, kinds, shapes, dtypes, inits, flat dicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.config import PRESETS, VAEConfig
from common.tables import DIT_TABLE, VAE_TABLE
from convert.tables import torch_shapes
from jax_ref import VideoDiT, VideoVAE, abstract_model, load_flat, randomize, state_to_flat, variables
from jax_ref.compat import get_value

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def published_vae():
    return abstract_model(VideoVAE, "vae-256")  # shapes and dtypes only, nothing allocated


@pytest.fixture(scope="module")
def published_dit():
    return abstract_model(VideoDiT, "dit-256")


def _flat_state(state) -> list[tuple[tuple, object]]:
    """`nnx.State` leaves as (path, leaf) on every flax: 0.10 returns a dict, later ones a sequence."""
    flat = nnx.to_flat_state(state) if hasattr(nnx, "to_flat_state") else state.flat_state()
    return list(flat.items()) if hasattr(flat, "items") else list(flat)


def _kind(leaf) -> str:
    variable_type = getattr(leaf, "type", None) or type(leaf)  # VariableState (0.10) or Variable (0.11+)
    return variable_type.__name__


def _shape_list(model) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(get_value(var).shape)) for name, var in variables(model)]


def test_published_vae_state_is_the_training_codes_leaf_for_leaf(published_vae, reference_dir):
    truth = json.loads((reference_dir / "vae_flax_state.json").read_text())
    assert VAEConfig(**truth["config"]) == PRESETS["vae-256"]
    expected = {
        tuple(leaf["path"]): (leaf["kind"], tuple(leaf["shape"]), leaf["dtype"]) for leaf in truth["leaves"]
    }
    got = {
        tuple(str(p) for p in path): (_kind(leaf), tuple(get_value(leaf).shape), str(get_value(leaf).dtype))
        for path, leaf in _flat_state(nnx.state(published_vae))
    }
    assert sorted(set(expected) - set(got)) == [], "leaves the training code has and jax_ref lacks"
    assert sorted(set(got) - set(expected)) == [], "leaves jax_ref has and the training code lacks"
    wrong = {path: (got[path], want) for path, want in expected.items() if got[path] != want}
    assert wrong == {}
    assert len(got) == 759


def test_abstract_model_has_the_tree_of_a_real_one():
    real, abstract = VideoVAE("vae-tiny", rngs=nnx.Rngs(0)), abstract_model(VideoVAE, "vae-tiny")
    assert _shape_list(real) == _shape_list(abstract)
    assert isinstance(get_value(abstract.fill_token), jax.ShapeDtypeStruct)


def test_no_rng_state_is_stored_in_the_modules():
    for model in (VideoVAE("vae-tiny", rngs=nnx.Rngs(0)), VideoDiT("dit-tiny", rngs=nnx.Rngs(0))):
        kinds = {_kind(leaf) for _, leaf in _flat_state(nnx.state(model))}
        assert kinds == {"Param", "Variable"}


@pytest.mark.parametrize(
    ("fixture", "table", "keys_file"),
    [
        ("published_vae", VAE_TABLE, "vae_published_torch_keys.json"),
        ("published_dit", DIT_TABLE, "dit_published_torch_keys.json"),
    ],
)
def test_flax_tree_maps_onto_the_published_torch_keys(request, fixture, table, keys_file, reference_dir):
    model = request.getfixturevalue(fixture)
    published = json.loads((reference_dir / keys_file).read_text())["tensors"]
    expected = {t["key"]: tuple(t["shape"]) for t in published}
    got = torch_shapes(table, _shape_list(model))
    assert sorted(set(expected) ^ set(got)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}


def test_published_dit_config_is_the_default(reference_dir):
    truth = json.loads((reference_dir / "dit_published_torch_keys.json").read_text())
    assert PRESETS["dit-256"].to_dict() == {"model_type": "dit", **truth["config"]}


def test_rope_caches_are_the_shared_tables():
    model = VideoVAE("vae-tiny", rngs=nnx.Rngs(0))
    flat = state_to_flat(model)
    expected = VAE_TABLE.rope_reference(model.config)
    assert len(expected) == 4 * (model.config.encoder_depth + model.config.decoder_depth)
    for name, value in expected.items():
        np.testing.assert_array_equal(flat[name], value, err_msg=name)


def test_module_lists_are_nnx_lists_where_flax_has_them():
    model = VideoDiT("dit-tiny", rngs=nnx.Rngs(0))
    if hasattr(nnx, "List"):
        assert isinstance(model.layers, nnx.List)
    assert len(model.layers) == model.config.depth


def test_constructor_takes_a_config_or_keyword_hyperparameters():
    by_name = VideoVAE("vae-tiny", rngs=nnx.Rngs(0))
    by_kw = VideoVAE(
        rngs=nnx.Rngs(0), **{k: v for k, v in by_name.config.to_dict().items() if k != "model_type"}
    )
    override = VideoVAE("vae-tiny", rngs=nnx.Rngs(0), decoder_depth=1)
    assert _shape_list(by_name) == _shape_list(by_kw)
    assert override.config.decoder_depth == 1 and len(override.decoder.layers) == 1


def test_initialisation_follows_the_original():
    vae = VideoVAE("vae-tiny", rngs=nnx.Rngs(0))
    dit = VideoDiT("dit-tiny", rngs=nnx.Rngs(0))
    flat = {**state_to_flat(vae), **{f"dit.{k}": v for k, v in state_to_flat(dit).items()}}
    for zero in (
        "decoder.unet.final_conv.kernel",
        "decoder.unet.final_conv.bias",
        "dit.timestep_proj.kernel",
        "dit.timestep_proj.bias",
    ):
        assert not flat[zero].any(), zero
    assert np.abs(flat["fill_token"]).max() < 0.1
    # residual outputs are variance_scaling(1e-2, fan_in): std about 0.1 / sqrt(fan_in)
    small = flat["dit.layers.0.TemporalAttention.out_projection.kernel"]
    assert 0.05 < small.std() * np.sqrt(small.shape[0]) < 0.15
    assert np.all(flat["encoder.layers.0.SpatialMLP.norm.scale"] == 1)
    assert all(v.dtype == np.float32 for v in flat.values())


def test_param_dtype_is_the_storage_dtype():
    model = VideoDiT("dit-tiny", rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16)
    dtypes = {name: v.dtype for name, v in state_to_flat(model).items()}
    assert {d for n, d in dtypes.items() if "ROPE" not in n} == {jnp.dtype(jnp.bfloat16)}


def test_flat_dict_round_trips_bit_exactly():
    # the target has no arrays at all: loading makes it a real model
    source, target = VideoVAE("vae-tiny", rngs=nnx.Rngs(0)), abstract_model(VideoVAE, "vae-tiny")
    randomize(source, seed=3)
    flat = state_to_flat(source)
    assert "encoder.layers.0.TemporalAttention.qkv_projection.kernel" in flat
    assert "decoder.layers.1.SpatialAttention.ROPE.sin_cached" in flat
    assert not any(name.endswith(".value") for name in flat)
    load_flat(target, flat)
    again = state_to_flat(target)
    assert again.keys() == flat.keys()
    for name in flat:
        np.testing.assert_array_equal(again[name], flat[name], err_msg=name)


@pytest.mark.parametrize("defect", ["missing", "unexpected", "shape"])
def test_load_flat_is_strict_and_names_the_leaf(defect):
    model = VideoDiT("dit-tiny", rngs=nnx.Rngs(0))
    flat = state_to_flat(model)
    before = flat["up_proj.kernel"].copy()
    name = "down_proj.bias"
    if defect == "missing":
        del flat[name]
    elif defect == "unexpected":
        name = "down_proj.extra"
        flat[name] = np.zeros(3, np.float32)
    else:
        flat[name] = np.zeros(flat[name].shape[0] + 1, np.float32)
    flat["up_proj.kernel"] = before + 1
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        load_flat(model, flat)
    np.testing.assert_array_equal(np.asarray(get_value(model.up_proj.kernel)), before)  # nothing half-loaded


def test_randomize_touches_every_param_and_no_cache():
    model = VideoVAE("vae-tiny", rngs=nnx.Rngs(0))
    fresh = state_to_flat(model)
    randomize(model, seed=0)
    shuffled = state_to_flat(model)
    for name in fresh:
        same = np.array_equal(fresh[name], shuffled[name])
        assert same == ("ROPE" in name), name
    twin = VideoVAE("vae-tiny", rngs=nnx.Rngs(7))
    randomize(twin, seed=0)
    for name, value in state_to_flat(twin).items():
        np.testing.assert_array_equal(value, shuffled[name], err_msg=name)  # depends on the seed only


def test_importing_jax_ref_does_not_import_torch():
    code = "import sys, jax_ref; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
