"""`dfc demo` (`make demo`) as a user runs it: from nothing to a compressed and decompressed clip.

The default demo (the 64x64 `vae-small`, trained for `dfc.demo.TRAIN_STEPS` steps) takes one to three
minutes on 2 cores, so it runs with `make test-slow`; the quick tests build the 32x32 `vae-tiny` without
training, which still goes through every step: jax_ref model, real Orbax checkpoint, `dfc convert`,
`dfc parity`, compress, decompress.
"""

from __future__ import annotations

import re
import time

import pytest
from cli_helpers import dfc, one_line_error, save_weights

from dfc.container import read_container
from dfc.demo import TRAIN_STEPS
from dfc.video import probe


def _summary(stdout: str) -> dict[str, str]:
    """`label  text` lines after the 'dfc demo: summary' header."""
    lines = stdout.split("dfc demo: summary", 1)[1].strip().splitlines()
    return {
        line.split(None, 1)[0]: line.split(None, 1)[1] for line in lines if line and not line[0].isspace()
    }


def _check_outputs(out, summary):
    for label in ("input", "kept", "compressed", "ratios", "decoded", "quality", "rd", "time"):
        assert label in summary, summary
    # "rd vs x264  .dfc 0.123 bpp at PSNR 6.0 dB; x264 0.1-0.4 bpp at 20.1-35.2 dB (CRF 51-18); ..."
    assert re.match(
        r"vs x264\s+\.dfc [\d.]+ bpp at PSNR -?[\d.]+ dB; x264 [\d.]+-[\d.]+ bpp at", summary["rd"]
    )
    info = probe(out / "decoded.mp4")
    assert (info.num_frames, info.width, info.height, info.fps) == (48, 96, 72, 12)
    cv = read_container(out / "compressed.dfc")
    assert cv.num_frames == 48 and cv.kept_frames < 48  # half of each clip is kept by default
    assert (out / "comparison.gif").is_file()


def test_demo_from_nothing_builds_converts_checks_parity_and_round_trips_a_clip(tmp_path):
    out = tmp_path / "demo"
    result = dfc("demo", "--out", out, "--preset", "vae-tiny", "--train-steps", 0, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = _summary(result.stdout)
    assert summary["parity"].startswith("PASS")
    assert (out / "checkpoint" / "checkpoint_step_0" / "_METADATA").is_file()
    assert (out / "weights" / "vae" / "model.safetensors").is_file()
    assert str(out / "weights" / "vae") in summary["converted"]
    _check_outputs(out, summary)


def test_demo_runs_on_weights_the_user_already_has(tmp_path):
    weights = save_weights(tmp_path / "vae", "vae-tiny")
    out = tmp_path / "demo"
    result = dfc("demo", "--out", out, "--weights", weights, "--quiet")
    assert result.returncode == 0, result.stderr
    summary = _summary(result.stdout)
    assert "no conversion or parity" in summary["weights"] and "parity" not in summary
    _check_outputs(out, summary)


def test_demo_with_missing_weights_is_one_line(tmp_path):
    result = dfc("demo", "--out", tmp_path / "demo", "--weights", tmp_path / "nothing-here")
    assert "no such file" in one_line_error(result, "demo")
    assert not (tmp_path / "demo").exists()


def test_a_demo_that_fails_half_way_leaves_nothing_behind(tmp_path):
    # weights whose file is empty: the demo writes its clip, then fails loading them
    weights = save_weights(tmp_path / "damaged", "vae-tiny")
    (weights / "model.safetensors").write_bytes(b"")
    result = dfc("demo", "--out", tmp_path / "demo", "--weights", weights)
    assert "== making the test clip" in result.stdout  # it got past writing input.mp4
    assert "not a readable safetensors file" in one_line_error(result, "demo")
    assert not (tmp_path / "demo").exists()
    # a folder of an earlier demo run keeps only what the user put there
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / ".dfc-demo").write_text("made by dfc demo\n")
    (earlier / "input.mp4").write_bytes(b"an earlier run's clip")
    (earlier / "notes.txt").write_text("mine")
    result = dfc("demo", "--out", earlier, "--weights", weights)
    assert "not a readable safetensors file" in one_line_error(result, "demo")
    assert [p.name for p in earlier.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_the_default_demo_trains_and_finishes_in_under_three_minutes(tmp_path):
    started = time.monotonic()
    result = dfc("demo", "--out", tmp_path / "demo", "--quiet", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    summary = _summary(result.stdout)
    assert f"{TRAIN_STEPS} Adam steps" in summary["checkpoint"] and summary["parity"].startswith("PASS")
    _check_outputs(tmp_path / "demo", summary)
    assert elapsed < 180, f"the demo took {elapsed:.0f} s"
