"""`dfc convert` and `dfc inspect` as a person uses them: a summary on success, one line on failure."""

from __future__ import annotations

import argparse

import pytest

from common.config import PRESETS
from dfc.cli import main
from dfc.commands.convert import parse_size
from jax_ref.checkpoints import random_model, write_training_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_training_checkpoint(
        tmp_path_factory.mktemp("cli") / "checkpoint_step_1200",
        random_model(PRESETS["dit-tiny"]),
        "flax-0.10",
    )


def test_convert_prints_a_summary(tmp_path, checkpoint, capsys):
    assert main(["convert", str(checkpoint), str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert f"-> {tmp_path / 'out'}" in out
    assert "step 1200" in out and "flax 0.10" in out
    assert "66 converted, 8 dropped" in out and "dropped 8: RoPE cache" in out
    assert "not read: optimizer" in out
    assert "exact round-to-nearest-even" in out and "FAIL" not in out
    # Orbax stores no checksum of array bytes: the report says its comparison is with what was read
    assert "source bytes: not verifiable: Orbax/OCDBT stores no checksum" in out
    assert str(tmp_path / "out" / "config.json") in out


def test_errors_are_one_line_with_a_non_zero_exit(tmp_path, checkpoint, capsys):
    (tmp_path / "out").mkdir()
    assert main(["convert", str(checkpoint), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dfc convert: error: ") and "--force" in err
    assert main(["convert", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["convert", str(checkpoint), str(tmp_path / "y"), "--config", "vae-tiny"]) == 2
    assert "--config vae-tiny: expected a DiTConfig" in capsys.readouterr().err


def test_inspect_every_kind(tmp_path, checkpoint, capsys):
    assert main(["inspect", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "model + optimizer holding a copy of the model" in out
    assert "model:   model: 74 leaves" in out and "(dit;" in out
    assert "optimizer" in out and "1 more entry like 0" in out
    main(["convert", str(checkpoint), str(tmp_path / "st"), "--quiet"])
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "st"), "--all"]) == 0
    out = capsys.readouterr().out
    assert "layers.0.SpatialAttention.qkv_projection.weight\t[192, 64]\tfloat32\t49152\tmodel" in out
    assert "source_step: 1200" in out
    torch = pytest.importorskip("torch")
    torch.save(  # legacy-format: the published .pt layout
        {"up_proj.weight": torch.zeros(64, 24), "spacing_pred2.weight": torch.zeros(1, 16)}, tmp_path / "w.pt"
    )
    assert main(["inspect", str(tmp_path / "w.pt")]) == 0
    assert "up_proj" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("dfc inspect: error:")


def test_sizes():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("1000") == 1000
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")


def _declare_shape(checkpoint, tmp_path, leaf: str, shape: list[int]):
    """A copy of `checkpoint` whose array `leaf` declares `shape` in its header (its data unchanged)."""
    import json
    import shutil

    import tensorstore as ts

    copy = tmp_path / checkpoint.name
    shutil.copytree(checkpoint, copy)
    store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{copy}/"}).result()
    key = f"{leaf}/.zarray"
    header = json.loads(store.read(key).result().value)
    header.update(shape=shape, chunks=shape)
    store.write(key, json.dumps(header).encode()).result()
    return copy


@pytest.mark.parametrize(
    "shape, said",
    [
        ([10**6, 10**6], "declares [1000000, 1000000] float32 (4,000.0 GB), more than the"),
        ([6000, 6000], "strict check against torch_impl: "),
    ],
    ids=["more-than-memory", "wrong-shape"],
)
def test_an_array_declaring_a_wrong_size_is_refused_before_it_is_read(
    tmp_path, checkpoint, capsys, shape, said
):
    hostile = _declare_shape(checkpoint, tmp_path, "model.up_proj.kernel.value", shape)
    assert main(["convert", str(hostile), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and said in err, err
    assert not (tmp_path / "out").exists()
