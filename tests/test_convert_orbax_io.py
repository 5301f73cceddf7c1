"""Orbax reading without the model: the test checkpoints are the real thing; the reader finds the model."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil

import numpy as np
import pytest

from common.config import PRESETS, VAEConfig
from common.kinds import Kind
from common.tables import DIT_TABLE, VAE_TABLE
from convert import layout
from convert.orbax_io import (
    ArrayStore,
    CheckpointError,
    find_model_subtree,
    read_tree_paths,
    resolve_checkpoint,
)
from convert.tables import torch_shapes
from jax_ref.checkpoints import (
    flax_leaf_shapes,
    random_model,
    save_orbax,
    training_tree,
    write_manager_root,
    write_training_checkpoint,
)

# The reference `_METADATA` files are of a 48-px VAE sample: one encoder and one decoder block, a 3-level
# UNet (their tree has no shapes, so any widths give the same paths; small ones keep the test fast).
SAMPLE_48PX = VAEConfig(
    height=48,
    width=48,
    patch_size=16,
    encoder_depth=1,
    decoder_depth=1,
    mlp_dim=32,
    num_heads=2,
    qkv_features=16,
    max_temporal_len=4,
    unet_base_features=4,
    unet_num_levels=3,
)
REFERENCES = {
    "flax-0.10": "orbax_METADATA_flax-0.10.4_vae-48px-sample.json",
    "flax-0.12": "orbax_METADATA_flax-0.12.4_vae-48px-sample.json",
}


def _reference_tree(reference_dir, name):
    return json.loads((reference_dir / name).read_text())["tree_metadata"]


# ------------------------------------------------------------------ the test checkpoints are the real thing


def test_model_tree_oracle_matches_the_published_state(reference_dir):
    ref = json.loads((reference_dir / "vae_flax_state.json").read_text())
    expected = {".".join(leaf["path"]): tuple(leaf["shape"]) for leaf in ref["leaves"]}
    assert flax_leaf_shapes(VAEConfig()) == expected


def test_dit_tree_oracle_matches_the_published_keys(reference_dir):
    ref = json.loads((reference_dir / "dit_published_torch_keys.json").read_text())
    expected = {t["key"]: tuple(t["shape"]) for t in ref["tensors"]}
    assert torch_shapes(DIT_TABLE, flax_leaf_shapes(PRESETS["dit-256"]).items()) == expected


@pytest.mark.parametrize("layout", sorted(REFERENCES))
def test_written_checkpoints_have_the_reference_tree(tmp_path, reference_dir, layout):
    path = write_training_checkpoint(tmp_path / "ck", random_model(SAMPLE_48PX), layout)
    written = json.loads((path / "_METADATA").read_text())
    reference = json.loads((reference_dir / REFERENCES[layout]).read_text())
    assert set(written["tree_metadata"]) == set(reference["tree_metadata"])
    for key, entry in reference["tree_metadata"].items():
        assert written["tree_metadata"][key] == entry, key
    assert written["use_zarr3"] is False and reference["use_zarr3"] is False


def test_jax_ref_state_has_the_oracle_tree():
    pytest.importorskip("flax")
    jax_ref = pytest.importorskip("jax_ref")
    from flax import nnx

    for preset in ("vae-tiny", "dit-tiny"):
        config = PRESETS[preset]
        cls = jax_ref.VideoVAE if config.model_type == "vae" else jax_ref.VideoDiT
        model = nnx.eval_shape(lambda cls=cls, config=config: cls(config, rngs=nnx.Rngs(0)))
        shapes = {name: tuple(var.get_value().shape) for name, var in jax_ref.variables(model)}
        assert shapes == flax_leaf_shapes(config), preset


# ------------------------------------------------------------------------------------------ the tree


@pytest.mark.parametrize(
    "layout, expected, not_read",
    [("flax-0.10", "flax-0.10", {"optimizer": 439}), ("flax-0.12", "flax-0.11+", {"optimizer": 288})],
)
def test_model_subtree_of_the_reference_trees(tmp_path, reference_dir, layout, expected, not_read):
    shutil.copy(reference_dir / REFERENCES[layout], tmp_path / "_METADATA")
    subtree = find_model_subtree(read_tree_paths(tmp_path))
    assert subtree.layout == expected
    assert subtree.prefix == ("model",)
    assert len(subtree.leaves) == 151
    assert subtree.not_read == not_read
    assert "encoder.layers.0.TemporalAttention.qkv_projection.kernel" in subtree.leaves
    assert all(path[-1] == "value" and path[0] == "model" for path in subtree.leaves.values())


def test_tree_keys_from_stringified_tuples_when_key_metadata_is_absent(tmp_path, reference_dir):
    tree = _reference_tree(reference_dir, REFERENCES["flax-0.12"])
    stripped = {key: {"value_metadata": entry["value_metadata"]} for key, entry in tree.items()}
    (tmp_path / "_METADATA").write_text(json.dumps({"tree_metadata": stripped}))
    assert read_tree_paths(tmp_path) == sorted(ast.literal_eval(k) for k in tree)


def test_model_only_and_bare_layouts():
    paths = [("model", "up_proj", "kernel", "value"), ("model", "up_proj", "bias", "value")]
    assert find_model_subtree(paths).layout == "model-only"
    bare = find_model_subtree([p[1:] for p in paths])
    assert bare.layout == "bare-model" and set(bare.leaves) == {"up_proj.kernel", "up_proj.bias"}
    with pytest.raises(CheckpointError, match="no 'model' subtree"):
        find_model_subtree([("optimizer", "step", "value")])
    with pytest.raises(CheckpointError, match="does not end in 'value'"):
        find_model_subtree([("model", "a", "value"), ("model", "b", "kernel")])


# -------------------------------------------------------------------------------- locating the step


def test_step_directory_and_manager_root(tmp_path):
    small = PRESETS["dit-tiny"]
    models = {10: random_model(small, seed=10), 20: random_model(small, seed=20)}
    root = write_manager_root(tmp_path / "run", models)
    latest = resolve_checkpoint(root)
    assert latest.step == 20 and latest.step_dir == root / "20" / "default"
    assert resolve_checkpoint(root, step=10).step_dir == root / "10" / "default"
    assert resolve_checkpoint(root / "10").step == 10
    with pytest.raises(CheckpointError, match=r"no step 30 \(steps: 10, 20\)"):
        resolve_checkpoint(root, step=30)
    named = save_orbax(tmp_path / "checkpoint_step_250000_master", training_tree(models[10], "model-only"))
    assert resolve_checkpoint(named).step == 250000
    with pytest.raises(CheckpointError, match="not of --step 5"):
        resolve_checkpoint(named, step=5)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an Orbax checkpoint"):
        resolve_checkpoint(tmp_path / "empty")


# ------------------------------------------------------------------------------------------ the arrays


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    model = random_model(PRESETS["vae-tiny"], seed=3)
    path = write_training_checkpoint(tmp_path_factory.mktemp("orbax") / "ck", model, "flax-0.10")
    return path, model


def test_headers_give_shapes_without_data_and_reads_are_bit_exact(tiny_checkpoint):
    path, model = tiny_checkpoint
    subtree = find_model_subtree(read_tree_paths(path))
    store = ArrayStore(path)
    names = sorted(subtree.leaves)
    infos = store.infos([subtree.leaves[n] for n in names])
    assert {n: i.shape for n, i in zip(names, infos)} == {n: model[n].shape for n in names}
    seen = []
    for batch in store.read_batches(infos, batch_bytes=50_000):
        assert sum(info.nbytes for info, _ in batch) <= 50_000 or len(batch) == 1
        for info, array in batch:
            name = names[infos.index(info)]
            assert array.dtype == np.float32
            assert np.array_equal(array.view(np.uint32), model[name].view(np.uint32)), name
            seen.append(name)
    assert seen == names


def test_reads_laid_out_by_the_table_equal_numpy_layouts(tiny_checkpoint):
    path, model = tiny_checkpoint
    subtree = find_model_subtree(read_tree_paths(path))
    store = ArrayStore(path)
    names = sorted(n for n in subtree.leaves if VAE_TABLE.kind_of(n) is not Kind.ROPE_CACHE)
    infos = store.infos([subtree.leaves[n] for n in names])
    layouts = {info.key: VAE_TABLE.kind_of(n).torch_axes for n, info in zip(names, infos)}
    kinds_seen = set()
    for batch in store.read_batches(infos, layouts=layouts):
        for info, array in batch:
            name = names[infos.index(info)]
            kind = VAE_TABLE.kind_of(name)
            kinds_seen.add(kind)
            assert array.flags.c_contiguous
            assert np.array_equal(array, layout.to_torch(kind, model[name])), name
    assert {Kind.LINEAR, Kind.CONV, Kind.CONV_TRANSPOSE, Kind.NORM_SCALE, Kind.BIAS, Kind.PARAM} <= kinds_seen


def test_a_missing_array_is_named(tmp_path):
    model = random_model(PRESETS["dit-tiny"])
    path = write_training_checkpoint(tmp_path / "ck", model, "model-only")
    meta = json.loads((path / "_METADATA").read_text())
    key = "('model', 'up_proj', 'kernel', 'value')"
    entry = meta["tree_metadata"][key]
    ghost = {**entry, "key_metadata": [*entry["key_metadata"][:-1], {"key": "ghost", "key_type": 2}]}
    meta["tree_metadata"]["('model', 'up_proj', 'ghost')"] = ghost
    (path / "_METADATA").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model\.up_proj\.ghost: listed in the checkpoint metadata"):
        ArrayStore(path).infos([("model", "up_proj", "ghost")])


def test_without_ocdbt_or_without_metadata(tmp_path):
    import orbax.checkpoint as ocp

    model = random_model(PRESETS["dit-tiny"], seed=2)
    path = (tmp_path / "per-array").absolute()
    per_array = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False))
    per_array.save(path, training_tree(model, "model-only"))
    assert not ArrayStore(path).ocdbt
    bare = write_training_checkpoint(tmp_path / "ocdbt", model, "model-only")
    (bare / "_METADATA").unlink()  # very old checkpoints: the tree comes from the stored arrays
    for step_dir in (path, bare):
        subtree = find_model_subtree(read_tree_paths(step_dir))
        store = ArrayStore(step_dir)
        infos = store.infos([subtree.leaves["up_proj.kernel"]])
        assert np.array_equal(store.read(infos)["model.up_proj.kernel.value"], model["up_proj.kernel"])


def test_bfloat16_and_scalar_leaves(tmp_path):
    import ml_dtypes

    tree = {
        "model": {
            "w": {"value": np.arange(6, dtype=ml_dtypes.bfloat16).reshape(2, 3)},
            "s": {"value": np.float32(2)},
        }
    }
    path = save_orbax(tmp_path / "ck", tree)
    store = ArrayStore(path)
    infos = store.infos([("model", "s", "value"), ("model", "w", "value")])
    assert [(i.shape, i.dtype.name) for i in infos] == [((), "float32"), ((2, 3), "bfloat16")]
    arrays = store.read(infos)
    assert arrays["model.w.value"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert float(arrays["model.s.value"]) == 2.0


def test_infos_are_dataclasses_with_bytes():
    from convert.orbax_io import ArrayInfo

    info = ArrayInfo(("model", "k", "value"), (3, 4), np.dtype(np.float32))
    assert info.key == "model.k.value" and info.nbytes == 48
    assert dataclasses.replace(info, shape=()).nbytes == 4
