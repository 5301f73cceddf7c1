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
    from dfc.codec import generate

    vae, dit = torch_impl.load_vae(weights / "vae"), torch_impl.load_dit(weights / "dit")
    alone = generate(dit, vae, num_latent_frames=4, steps=2, seeds=[11])[0]
    together = generate(dit, vae, num_latent_frames=4, steps=2, seeds=[10, 11])[1]
    assert alone.total == together.total and alone.positions.tolist() == together.positions.tolist()
    assert np.abs(alone.frames.astype(int) - together.frames.astype(int)).max() <= 1


def test_positions_longer_than_the_vae_decodes_are_squeezed_and_stay_distinct():
    from dfc.codec import squeeze_positions

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
        "--rd",
        "--baseline",
        "x264,x265",
        "--crf",
        "30,51",
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


def test_evaluate_will_not_write_into_a_folder_that_holds_something_else(evaluated, weights, tmp_path):
    out, _ = evaluated
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's notes")
    result = dfc("evaluate", out.parent / "videos", "--weights", weights / "vae", "--out", mine)
    assert "not an empty folder" in one_line_error(result, "evaluate")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_evaluate_will_not_resume_a_run_made_with_other_settings(evaluated, weights):
    out, _ = evaluated
    before = (out / "dfc-ledger.jsonl").read_bytes()
    result = dfc("evaluate", out.parent / "videos", "--weights", weights / "vae", "--out", out)
    assert "other settings (clip_frames 8 then, None now" in one_line_error(result, "evaluate")
    assert (out / "dfc-ledger.jsonl").read_bytes() == before


# ---------------------------------------------------------------------------------- evaluate --rd


def _rd_rows(out):
    return list(csv.DictReader((out / "rd" / "rd.csv").open()))


def test_evaluate_rd_measures_every_dfc_setting_and_both_baselines_per_clip_and_for_the_mean(evaluated):
    out, _ = evaluated
    rows = _rd_rows(out)
    clips = ["moving_clip0_8f", "moving_clip1_8f", "moving_clip2_4f", "still_clip0_1f"]
    for clip in [*clips, "mean"]:
        mine = [r for r in rows if r["clip"] == clip]
        dfc_settings = {r["setting"] for r in mine if r["codec"] == "dfc"}
        assert dfc_settings == {
            f"top-{k} {d} {c}" for k in (4, 1) for d in ("bf16", "f32", "u8") for c in ("none", "zstd")
        }
        assert sorted(r["setting"] for r in mine if r["codec"] == "x264") == ["crf 30", "crf 51"]
        assert sorted(r["setting"] for r in mine if r["codec"] == "x265") == ["crf 30", "crf 51"]
    for row in rows:
        if row["clip"] != "mean":  # bits per pixel of the whole file, at the model's 32x32
            assert float(row["bpp"]) == pytest.approx(
                8 * float(row["bytes"]) / (int(row["frames"]) * 32 * 32), rel=1e-4
            )
    clip0 = {(r["codec"], r["setting"]): r for r in rows if r["clip"] == "moving_clip0_8f"}
    assert float(clip0[("x264", "crf 30")]["psnr"]) > float(clip0[("x264", "crf 51")]["psnr"])
    assert float(clip0[("x264", "crf 30")]["bytes"]) > float(clip0[("x264", "crf 51")]["bytes"])
    # entropy coding is lossless: the same quality, fewer bytes for bf16 latents
    plain, coded = clip0[("dfc", "top-4 bf16 none")], clip0[("dfc", "top-4 bf16 zstd")]
    assert plain["psnr"] == coded["psnr"] and float(coded["bytes"]) < float(plain["bytes"])


def test_a_dfc_point_counts_the_bytes_of_the_file_compress_writes(evaluated, weights, tmp_path):
    out, _ = evaluated
    point = next(
        r for r in _rd_rows(out) if r["clip"] == "still_clip0_1f" and r["setting"] == "top-1 u8 zstd"
    )
    target = tmp_path / "still.dfc"
    args = ("--weights", weights / "vae", "--keep", 1, "--latent-dtype", "u8", "--quiet")
    assert dfc("compress", out.parent / "videos" / "still.avi", target, *args).returncode == 0
    # the same file but for the source name and the weights path that compress records in it
    assert abs(target.stat().st_size - float(point["bytes"])) < 400


def test_evaluate_rd_writes_bd_rates_curves_and_a_summary_naming_ffmpeg(evaluated):
    out, stdout = evaluated
    document = json.loads((out / "rd" / "rd.json").read_text())
    assert document["settings"]["ffmpeg"].startswith("ffmpeg version")
    assert document["settings"]["baselines"]["x264"][:4] == ["-c:v", "libx264", "-preset", "medium"]
    assert document["settings"]["crfs"] == [30, 51]
    # random weights decode to noise: nowhere near x264's quality, so no BD-rate, and it says why
    assert (
        document["bd_rate_percent"]["mean"]["dfc bf16 zstd"]["x264 psnr"]
        == "n/a: the quality ranges do not overlap"
    )
    assert document["coding_gain"]["bf16 zstd"] > 0
    summary = (out / "rd" / "rd.md").read_text()
    assert "ffmpeg version" in summary and "-preset medium -crf <CRF>" in summary
    assert "MS-SSIM at 2 scales (frames under 176 px" in summary
    assert "| mean | dfc bf16 zstd | n/a: the quality ranges do not overlap" in summary
    assert "rd       dfc bf16 zstd: BD-rate x264 PSNR n/a" in stdout and "entropy coding saves" in stdout
    curves = sorted(p.name for p in (out / "rd" / "curves").iterdir())
    assert curves == ["rd_mean.png"] + [
        f"rd_{c}.png" for c in ("moving_clip0_8f", "moving_clip1_8f", "moving_clip2_4f", "still_clip0_1f")
    ]


def test_evaluate_rd_refuses_an_unknown_baseline_in_one_line(weights, tmp_path):
    (tmp_path / "v").mkdir()
    make_test_video(tmp_path / "v" / "a.mp4", 2, 32, 32)
    result = dfc(
        "evaluate",
        tmp_path / "v",
        "--weights",
        weights / "vae",
        "--out",
        tmp_path / "r",
        "--rd",
        "--baseline",
        "vp9",
    )
    assert "--baseline takes x264, x265 or none" in one_line_error(result, "evaluate")
    assert not (tmp_path / "r").exists()
