"""`convert.pipeline`: real Orbax checkpoints in every layout -> safetensors -> Orbax, bit for bit; bad input
gives one line and leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from common.config import PRESETS, config_to_json
from common.tables import ROPE_DROP_REASON, TABLES
from convert import bits
from convert.bits import bf16_bits_nearest_even
from convert.checks import ROPE_TOLERANCE
from convert.options import ConvertError, Options
from convert.orbax_io import read_model_arrays
from convert.safetensors_io import INDEX_FILE, SafetensorsReader
from convert.tables import flax_to_torch
from dfc.convert_checks import convert
from jax_ref.checkpoints import (
    is_rope_cache,
    random_model,
    save_orbax,
    training_tree,
    write_manager_root,
    write_training_checkpoint,
)

VAE = PRESETS["vae-tiny"]
DIT = PRESETS["dit-tiny"]
BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.fixture(scope="module")
def vae_model():
    return random_model(VAE, seed=11)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, vae_model):
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        layout: write_training_checkpoint(root / layout, vae_model, layout)
        for layout in ("flax-0.10", "flax-0.12", "model-only")
    }


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".dfc-tmp" in p.name or ".dfc-old" in p.name)


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("layout", ["flax-0.10", "flax-0.12", "model-only"])
def test_orbax_to_safetensors_to_orbax_is_bit_exact(tmp_path, checkpoints, vae_model, layout):
    report = convert(checkpoints[layout], tmp_path / "st")
    expected, dropped = flax_to_torch(TABLES["vae"], vae_model)
    reader = SafetensorsReader(tmp_path / "st")
    assert set(reader.tensors) == set(expected)
    for key, value in expected.items():
        assert _same_bits(reader.tensor(key), value), key
    # every model leaf is accounted for; the optimizer is never read
    assert set(report.converted) | set(report.dropped) == set(vae_model)
    assert set(report.dropped) == set(dropped) and set(report.dropped.values()) == {ROPE_DROP_REASON}
    assert set(report.not_read) == ({"optimizer"} if layout != "model-only" else set())
    assert report.verified and report.config == VAE and report.dtype == "float32"
    assert reader.metadata["source_layout"] == report.layout and reader.metadata["model_type"] == "vae"
    assert json.loads((tmp_path / "st" / "config.json").read_text()) == VAE.to_dict()

    back = convert(tmp_path / "st", tmp_path / "back")
    assert back.destination_format == "orbax" and back.verified
    restored = read_model_arrays(tmp_path / "back")
    assert set(restored) == set(vae_model)
    for name, value in vae_model.items():
        if is_rope_cache(name):  # regenerated from the configuration: within the tolerance, not copied
            assert np.max(np.abs(restored[name] - value)) <= ROPE_TOLERANCE
        else:
            assert _same_bits(restored[name], value), name


def test_orbax_itself_restores_our_orbax_output(tmp_path, checkpoints, vae_model):
    import orbax.checkpoint as ocp

    convert(checkpoints["model-only"], tmp_path / "st")
    convert(tmp_path / "st", tmp_path / "back")
    restored = ocp.StandardCheckpointer().restore((tmp_path / "back").absolute())
    kernel = restored["model"]["encoder"]["layers"]["0"]["TemporalAttention"]["qkv_projection"]["kernel"][
        "value"
    ]
    assert _same_bits(
        np.asarray(kernel), vae_model["encoder.layers.0.TemporalAttention.qkv_projection.kernel"]
    )


def test_single_file_destination(tmp_path, checkpoints):
    report = convert(checkpoints["flax-0.12"], tmp_path / "vae.safetensors")
    assert report.files == [tmp_path / "vae.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.safetensors"]
    metadata = SafetensorsReader(tmp_path / "vae.safetensors").metadata
    assert json.loads(metadata["config"]) == VAE.to_dict()
    assert (
        metadata["format"] == "pt" and metadata["dtype"] == "float32" and metadata["tool"].startswith("dfc ")
    )
    back = convert(tmp_path / "vae.safetensors", tmp_path / "back")  # config from __metadata__
    assert back.config == VAE and back.config_source == "stored with the weights"


def test_bfloat16_rounds_once_to_nearest_even(tmp_path, checkpoints, vae_model):
    report = convert(checkpoints["flax-0.10"], tmp_path / "st", Options(dtype="bfloat16"))
    assert report.dtype == "bfloat16"
    expected, _ = flax_to_torch(TABLES["vae"], vae_model)
    reader = SafetensorsReader(tmp_path / "st")
    assert reader.metadata["dtype"] == "bfloat16"
    for key, value in expected.items():
        assert _same_bits(reader.tensor(key), value.astype(BF16)), key
    # and back: bf16 kept as is, or widened exactly
    back = read_model_arrays(convert(tmp_path / "st", tmp_path / "back").destination)
    wide = read_model_arrays(
        convert(tmp_path / "st", tmp_path / "wide", Options(dtype="float32")).destination
    )
    name = "decoder.unet.decoders.0.upsample.kernel"
    assert back[name].dtype == BF16 and _same_bits(back[name], vae_model[name].astype(BF16))
    assert _same_bits(wide[name], vae_model[name].astype(BF16).astype(np.float32))


def test_bf16_rounding_reference_agrees_with_ml_dtypes():
    special = np.array(
        [
            0.0,
            -0.0,
            1.0,
            1 + 2**-8,
            1 + 3 * 2**-8,
            1 + 2**-8 + 2**-20,
            -(1 + 2**-8),
            np.inf,
            -np.inf,
            np.finfo(np.float32).max,
            np.finfo(np.float32).tiny,
            1e-45,
            3.3895314e38,
        ],
        dtype=np.float32,
    )
    values = np.concatenate(
        [special, np.random.default_rng(0).standard_normal(100_000, dtype=np.float32) * 1e3]
    )
    assert np.array_equal(bf16_bits_nearest_even(values), values.astype(BF16).view(np.uint16))


def test_manager_root_latest_or_step(tmp_path):
    models = {10: random_model(DIT, seed=1), 20: random_model(DIT, seed=2)}
    root = write_manager_root(tmp_path / "run", models, layout="flax-0.12")
    latest = convert(root, tmp_path / "latest")
    chosen = convert(root, tmp_path / "ten", Options(step=10))
    assert latest.step == 20 and chosen.step == 10
    assert SafetensorsReader(tmp_path / "ten").metadata["source_step"] == "10"
    expected, _ = flax_to_torch(TABLES["dit"], models[10])
    reader = SafetensorsReader(tmp_path / "ten")
    assert all(_same_bits(reader.tensor(k), v) for k, v in expected.items())
    with pytest.raises(ConvertError, match=r"no step 15 \(steps: 10, 20\)"):
        convert(root, tmp_path / "none", Options(step=15))


def test_bare_model_state_at_the_top_level(tmp_path):
    model = random_model(DIT, seed=4)
    path = save_orbax(tmp_path / "bare", training_tree(model, "model-only")["model"])
    report = convert(path, tmp_path / "st")
    assert (
        report.layout == "bare-model" and report.model_type == "dit" and len(report.converted) == 2 * 28 + 10
    )


def test_shards_above_the_size_limit(tmp_path, checkpoints, vae_model):
    report = convert(checkpoints["flax-0.10"], tmp_path / "st", Options(max_shard_bytes=400_000))
    names = sorted(p.name for p in (tmp_path / "st").iterdir())
    assert INDEX_FILE in names and "config.json" in names and len(names) > 4
    index = json.loads((tmp_path / "st" / INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(report.converted.values())
    torch_impl = pytest.importorskip("torch_impl")
    model = torch_impl.load_vae(tmp_path / "st")  # strict
    kernel = model.state_dict()["encoder.layers.1.SpatialMLP.linear2.weight"].numpy()
    assert _same_bits(kernel, np.ascontiguousarray(vae_model["encoder.layers.1.SpatialMLP.linear2.kernel"].T))


def test_published_pt_to_safetensors(tmp_path, vae_model):
    torch = pytest.importorskip("torch")
    state, _ = flax_to_torch(TABLES["vae"], vae_model)
    # a published-style .pt, written only to test the reader
    published = {k: torch.from_numpy(v) for k, v in state.items()}
    torch.save(published, tmp_path / "vae_pytorch.pt")  # legacy-format
    report = convert(tmp_path / "vae_pytorch.pt", tmp_path / "st")
    assert report.source_format == "pt" and set(report.assumed) == {"max_temporal_len"}
    assert report.config.max_temporal_len == 64  # a .pt has no RoPE caches: the published default
    reader = SafetensorsReader(tmp_path / "st")
    assert all(_same_bits(reader.tensor(k), v) for k, v in state.items())
    given = convert(tmp_path / "vae_pytorch.pt", tmp_path / "given", Options(config="vae-tiny"))
    assert given.config == VAE and given.assumed == {}
    legacy = tmp_path / "legacy.pt"
    torch.save(  # legacy-format
        {k: torch.from_numpy(v) for k, v in state.items()}, legacy, _use_new_zipfile_serialization=False
    )
    assert convert(legacy, tmp_path / "legacy", Options(config="vae-tiny")).verified


def test_config_json_given(tmp_path, checkpoints):
    (tmp_path / "config.json").write_text(config_to_json(VAE))
    report = convert(checkpoints["flax-0.12"], tmp_path / "st", Options(config=str(tmp_path / "config.json")))
    assert report.config_source.startswith("--config")


def test_replacing_needs_force(tmp_path, checkpoints):
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "keep").write_text("mine")
    with pytest.raises(ConvertError, match="already exists \\(pass --force to replace it\\)"):
        convert(checkpoints["model-only"], tmp_path / "st")
    assert (tmp_path / "st" / "keep").read_text() == "mine"
    convert(checkpoints["model-only"], tmp_path / "st", Options(force=True))
    assert not (tmp_path / "st" / "keep").exists() and (tmp_path / "st" / "model.safetensors").is_file()
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- bad input


def _fails(tmp_path, src, match, options=None):
    """The conversion fails with one line matching `match`, and leaves no output behind."""
    dst = tmp_path / "out"
    with pytest.raises(ConvertError, match=match) as caught:
        convert(src, dst, options)
    assert "\n" not in str(caught.value)
    assert not dst.exists()
    assert _leftovers(tmp_path) == []
    return str(caught.value)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _fails(tmp_path, tmp_path / "notes.txt", "not a checkpoint")
    (tmp_path / "empty").mkdir()
    _fails(tmp_path, tmp_path / "empty", "not an Orbax checkpoint")
    _fails(tmp_path, tmp_path / "missing", "no such file or directory")
    (tmp_path / "fake.pt").write_bytes(b"PK\x03\x04 not really a zip")
    _fails(tmp_path, tmp_path / "fake.pt", "not a readable PyTorch file")


def _damaged_copy(tmp_path, checkpoints, damage):
    ck = tmp_path / "damaged"
    shutil.copytree(checkpoints["model-only"], ck)
    data_files = sorted((ck / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)
    biggest = data_files[-1]
    biggest.write_bytes(damage(biggest.read_bytes()))
    return ck


def test_truncated_array_file(tmp_path, checkpoints):
    ck = _damaged_copy(tmp_path, checkpoints, lambda b: b[: len(b) // 2])
    message = _fails(tmp_path, ck, r"^model\.\S+\.value: cannot read the array data")
    assert "Traceback" not in message


def _break_third_zstd_frame(data: bytes) -> bytes:
    magic = b"\x28\xb5\x2f\xfd"
    at = -1
    for _ in range(3):
        at = data.index(magic, at + 1)
    return data[:at] + b"\0" * 16 + data[at + 16 :]


def test_corrupted_array_file(tmp_path, checkpoints):
    # A damaged zstd frame is noticed. (Orbax stores no checksums, so flipped bits inside an incompressible
    # block, which zstd stores raw, cannot be noticed by any reader.)
    ck = _damaged_copy(tmp_path, checkpoints, _break_third_zstd_frame)
    _fails(tmp_path, ck, r"^model\.\S+\.value: cannot read the array data \(FAILED_PRECONDITION")


def test_unknown_layouts(tmp_path, vae_model):
    opt_only = save_orbax(tmp_path / "opt", {"optimizer": {"step": {"value": np.array(1)}}})
    _fails(tmp_path, opt_only, "unknown checkpoint layout")
    linen = save_orbax(tmp_path / "linen", {"params": {"Dense_0": {"kernel": np.ones((2, 2), np.float32)}}})
    _fails(tmp_path, linen, "cannot tell whether this is a VAE or a DiT")
    _fails(tmp_path, linen, r"--model dit, but the checkpoint has no up_proj\.kernel", Options(model="dit"))


def test_missing_tensor_is_named(tmp_path, vae_model):
    model = {k: v for k, v in vae_model.items() if k != "decoder.unet.bottleneck2.norm.scale"}
    ck = write_training_checkpoint(tmp_path / "ck", model, "model-only")
    _fails(tmp_path, ck, r"decoder\.unet\.bottleneck2\.norm\.weight is missing")


def test_contradicting_config_names_the_tensor(tmp_path, checkpoints):
    (tmp_path / "c.json").write_text(config_to_json(PRESETS["vae-small"]))
    _fails(
        tmp_path,
        checkpoints["flax-0.12"],
        r"checkpoint contradicts --config: \S+ has shape",
        Options(config=str(tmp_path / "c.json")),
    )
    _fails(tmp_path, checkpoints["flax-0.12"], "--model dit, but", Options(model="dit"))


def test_wrong_rope_cache_is_named(tmp_path, vae_model):
    model = dict(vae_model)
    name = "encoder.layers.1.SpatialAttention.ROPE.sin_cached"
    model[name] = model[name] * np.float32(1.01)
    ck = write_training_checkpoint(tmp_path / "ck", model, "model-only")
    _fails(tmp_path, ck, rf"{name} differs from the RoPE table of the configuration by")


def test_full_disk_leaves_nothing(tmp_path, checkpoints, monkeypatch):
    from convert import safetensors_io

    real = safetensors_io._write_all
    calls = []

    def full_after_header(fd, view, offset):
        calls.append(offset)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, view, offset)

    monkeypatch.setattr(safetensors_io, "_write_all", full_after_header)
    _fails(tmp_path, checkpoints["flax-0.10"], "no space left on device while writing")


def test_a_disk_error_while_writing_back_leaves_nothing(tmp_path, checkpoints, monkeypatch):
    from convert import safetensors_io

    def failing(fd, offset, nbytes, flags):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(safetensors_io, "_sync_file_range", failing)
    monkeypatch.setattr(safetensors_io._WriteThrough, "CHUNK", 1 << 10)
    _fails(tmp_path, checkpoints["flax-0.10"], "Input/output error")


def test_interrupt_leaves_nothing(tmp_path, checkpoints, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bits, "matches_source", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(checkpoints["flax-0.10"], tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_verification_catches_a_file_that_differs(tmp_path, checkpoints, monkeypatch):
    from convert import safetensors_io

    real = safetensors_io.ShardedWriter.re_read

    def flipped(self, name):
        back = real(self, name).copy()
        back.reshape(-1)[:1] += 1
        return back

    monkeypatch.setattr(safetensors_io.ShardedWriter, "re_read", flipped)
    _fails(tmp_path, checkpoints["model-only"], "does not match the source")


def test_the_pipeline_starts_a_given_shape_check_before_writing_and_holds_the_output_to_it(
    tmp_path, checkpoints
):
    """`convert` itself knows no implementation: the caller's check starts as soon as the configuration
    is known (before any tensor is written, so that its imports overlap the conversion), and a wrong
    answer stops the conversion with nothing written."""
    from convert.checks import Answered, Checks
    from convert.pipeline import convert as bare_convert

    written, started = [0], []

    def progress(total):
        return lambda n: written.__setitem__(0, written[0] + n)

    def start_shapes(config):
        started.append((config, written[0]))
        return Answered({"ok": True, "shapes": {"up_proj.weight": [1, 2]}})

    with pytest.raises(ConvertError, match="strict check against the implementation"):
        bare_convert(
            checkpoints["model-only"], tmp_path / "out", progress=progress, checks=Checks(start_shapes)
        )
    assert [(config.model_type, before) for config, before in started] == [("vae", 0)] and written[0] > 0
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []

    report = bare_convert(checkpoints["model-only"], tmp_path / "plain")  # no checks given: said so
    shape_check = next(c for c in report.checks if "keys and shapes" in c.name)
    assert shape_check.ok is None and "no implementation" in shape_check.detail


def test_torch_check_is_computed_in_a_child_then_cached(tmp_path, checkpoints, monkeypatch):
    pytest.importorskip("torch_impl")
    monkeypatch.setenv("DFC_CACHE_DIR", str(tmp_path / "cache"))
    first = convert(checkpoints["model-only"], tmp_path / "a")
    second = convert(checkpoints["model-only"], tmp_path / "b")
    checks = [next(c for c in r.checks if c.name.startswith("torch_impl")) for r in (first, second)]
    assert checks[0].ok and "child process" in checks[0].detail
    assert checks[1].ok and "cached" in checks[1].detail
    assert len(list((tmp_path / "cache" / "torch-shapes").iterdir())) == 1


def _fsynced_paths(monkeypatch) -> list[str]:
    """Every path fsynced from now on (os.fsync still runs)."""
    paths, real_fsync = [], os.fsync

    def recording_fsync(fd):
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return paths


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsynced files through /proc")
def test_sync_puts_the_weights_and_the_rename_on_disk(tmp_path, checkpoints, monkeypatch):
    synced = _fsynced_paths(monkeypatch)
    convert(checkpoints["model-only"], tmp_path / "plain.safetensors")
    assert synced == []  # without --sync the kernel writes back when it likes
    convert(checkpoints["model-only"], tmp_path / "out", Options(sync=True))
    assert any(".out.dfc-tmp-" in p and p.endswith("model.safetensors") for p in synced)
    assert any(p.endswith("config.json") for p in synced)
    assert str(tmp_path / "out") in synced and str(tmp_path) in synced  # the entries and the rename


def test_sync_and_where_the_output_may_go(tmp_path, checkpoints):
    assert convert(checkpoints["model-only"], tmp_path / "synced.safetensors", Options(sync=True)).verified
    source = checkpoints["model-only"]
    with pytest.raises(ConvertError, match="may not go inside the source"):
        convert(source, source / "out")
    with pytest.raises(ConvertError, match="would replace the source"):
        convert(source, source.parent, Options(force=True))
    with pytest.raises(ConvertError, match="converts to an Orbax directory"):
        convert(tmp_path / "synced.safetensors", tmp_path / "again.safetensors")
    with pytest.raises(ConvertError, match="unknown --dtype"):
        convert(source, tmp_path / "x", Options(dtype="float16"))
