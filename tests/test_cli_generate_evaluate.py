"""`dfc generate` and `dfc evaluate` as a user runs them, plus the generation API under them.

Models are the random-weight `vae-tiny` / `dit-tiny` pair (they fit: 16 patches x 24 latent channels).
"""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from cli_helpers import dfc, one_line_error, save_weights
from videos import make_test_video

from dfc.video import probe, read_video


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    save_weights(root / "vae", "vae-tiny")
    save_weights(root / "dit", "dit-tiny")
    return root


def _printed_totals(stdout: str) -> dict[int, int]:
    return {int(s): int(n) for s, n in re.findall(r"^seed (\d+): .* -> (\d+) frames", stdout, flags=re.M)}


def test_generate_writes_one_video_per_seed_at_its_predicted_length(weights, tmp_path):
    result = dfc(
        "generate", tmp_path / "sample.mp4", "--weights", weights, "--steps", 2, "--batch", 2, "--seed", 5
    )
    assert result.returncode == 0, result.stderr
    totals = _printed_totals(result.stdout)
    assert set(totals) == {5, 6}
    for seed, total in totals.items():
        info = probe(tmp_path / f"sample_seed{seed}.mp4")
        assert (info.num_frames, info.width, info.height) == (total, 32, 32)
        assert total >= 8  # the default 8 latent frames, each at its own position


def test_generate_grid_labels_every_sample_in_one_video(weights, tmp_path):
    out = tmp_path / "grid.gif"
    result = dfc(
        "generate", out, "--weights", weights, "--steps", 1, "--batch", 3, "--num-latent-frames", 4, "--grid"
    )
    assert result.returncode == 0, result.stderr
    frames, info = read_video(out)
    assert info.num_frames == max(_printed_totals(result.stdout).values())
    assert info.width > 2 * 32 and info.height > 2 * 32  # two columns, two rows of enlarged, captioned tiles


def test_generate_refuses_a_vae_and_dit_that_are_not_a_pair(weights, tmp_path):
    save_weights(tmp_path / "small-vae", "vae-small")
    args = ("--vae-weights", tmp_path / "small-vae", "--dit-weights", weights / "dit", "--steps", 1)
    result = dfc("generate", tmp_path / "x.mp4", *args)
    assert "not a pair" in one_line_error(result, "generate")
    assert not (tmp_path / "x.mp4").exists()


def test_generate_will_not_replace_an_existing_video_unless_asked(weights, tmp_path):
    target = tmp_path / "mine.mp4"
    target.write_bytes(b"the user's video")
    result = dfc("generate", target, "--weights", weights, "--steps", 1)
    assert "--force" in one_line_error(result, "generate")
    assert target.read_bytes() == b"the user's video"


def test_a_seed_generates_the_same_video_whatever_else_is_in_the_batch(weights):
    import torch_impl
    from torch_impl.codec import generate

    vae, dit = torch_impl.load_vae(weights / "vae"), torch_impl.load_dit(weights / "dit")
    alone = generate(dit, vae, num_latent_frames=4, steps=2, seeds=[11])[0]
    together = generate(dit, vae, num_latent_frames=4, steps=2, seeds=[10, 11])[1]
    assert alone.total == together.total and alone.positions.tolist() == together.positions.tolist()
    assert np.abs(alone.frames.astype(int) - together.frames.astype(int)).max() <= 1


def test_positions_longer_than_the_vae_decodes_are_squeezed_and_stay_distinct():
    from torch_impl.codec import squeeze_positions

    squeezed = squeeze_positions(np.array([0, 30, 31, 70, 100]), 64)
    assert squeezed[-1] == 63 and np.all(np.diff(squeezed) >= 1) and squeezed[0] == 0
    assert squeeze_positions(np.array([2, 5]), 64).tolist() == [2, 5]


# ------------------------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def evaluated(weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    videos = root / "videos"
    videos.mkdir()
    make_test_video(videos / "moving.mp4", 20, 41, 33, pattern="moving")
    make_test_video(videos / "still.avi", 1, 32, 32, pattern="static")
    (videos / "README.txt").write_text("not a video, skipped\n")
    out = root / "report"
    args = (
        "--weights",
        weights / "vae",
        "--out",
        out,
        "--clip-frames",
        8,
        "--draws",
        4,
        "--topk",
        "4,1",
        "--quiet",
    )
    result = dfc("evaluate", videos, *args)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_evaluate_writes_a_row_per_clip_with_the_user_table_columns(evaluated):
    out, stdout = evaluated
    rows = list(csv.DictReader((out / "evaluation.csv").open()))
    assert [(r["video"], r["frames"]) for r in rows] == [
        ("moving.mp4", "8"),
        ("moving.mp4", "8"),
        ("moving.mp4", "4"),
        ("still.avi", "1"),
    ]
    for row in rows:
        kept, frames = float(row["kept_mean"]), int(row["frames"])
        assert 1 <= kept <= frames
        assert float(row["temporal"]) == pytest.approx(frames / kept, rel=1e-4)
        assert float(row["combined"]) == pytest.approx(8 * frames / kept, rel=1e-4)  # 8x spatial at vae-tiny
        assert {
            "mse_all",
            "mse_bernoulli_mean",
            "mse_bernoulli_std",
            "psnr_all",
            "ssim_all",
            "mse_top4",
        } <= set(row)
    assert "| Clip | Frames | Kept frames | Keep rate | Compression |" in stdout
    assert "Bernoulli MSE" in stdout and "in bytes" in stdout


def test_evaluate_json_holds_settings_summary_and_keep_probabilities(evaluated):
    document = json.loads((evaluated[0] / "evaluation.json").read_text())
    assert document["settings"]["draws"] == 4 and document["settings"]["topk"] == [4, 1]
    assert document["summary"]["clips"] == 4
    assert len(document["clips"][0]["keep_probability"]) == 8


def test_evaluate_draws_a_comparison_gif_and_a_timeline_per_clip(evaluated):
    out, _ = evaluated
    gifs = sorted(p.name for p in (out / "gifs").iterdir())
    assert gifs == [
        "compare_moving_clip0_8f.gif",
        "compare_moving_clip1_8f.gif",
        "compare_moving_clip2_4f.gif",
        "compare_still_clip0_1f.gif",
    ]
    frames, info = read_video(out / "gifs" / "compare_moving_clip2_4f.gif")
    assert (
        info.num_frames == 4 and info.width == 3 * info.height - 3 * 14
    )  # Original | Top-4 | Top-1, captions
    assert len(list((out / "timelines").glob("keep_*.png"))) == 4


def test_evaluate_of_a_folder_without_videos_is_one_line(weights, tmp_path):
    result = dfc("evaluate", tmp_path, "--weights", weights / "vae", "--out", tmp_path / "r")
    assert "no videos" in one_line_error(result, "evaluate")
    assert not (tmp_path / "r").exists()


def test_evaluate_will_not_write_into_a_folder_that_holds_something(evaluated, weights):
    out, _ = evaluated
    result = dfc("evaluate", out / "gifs", "--weights", weights / "vae", "--out", out)
    assert "not an empty folder" in one_line_error(result, "evaluate")
