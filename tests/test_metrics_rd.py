"""Quality metrics (torchmetrics) against values known in closed form; BD-rate on curves of known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dfc.metrics import ms_ssim, ms_ssim_note, ms_ssim_scales, mse, psnr, ssim
from dfc.rd import RDPoint
from dfc.rd_report import NO_OVERLAP, TOO_FEW, bd_rate, bd_rates, coding_gain, efficient, mean_points


def test_a_video_against_itself_scores_perfectly():
    video = np.random.default_rng(0).random((3, 40, 48, 3))
    assert mse(video, video) == 0 and psnr(video, video) == math.inf
    assert ssim(video, video) == pytest.approx(1) and ms_ssim(video, video) == pytest.approx(1)
    frames = (video * 255).astype(np.uint8)
    assert psnr(frames, frames) == math.inf and ssim(frames, frames) == pytest.approx(1)


def test_psnr_of_known_noise_levels():
    video = np.random.default_rng(0).random((4, 32, 32, 3))
    assert psnr(video, video + 0.1) == pytest.approx(20.0, abs=1e-5)  # MSE 0.01
    noisy = video + np.random.default_rng(1).normal(0, 0.05, video.shape)  # sigma 0.05: MSE ~0.0025, ~26 dB
    assert psnr(video, noisy) == pytest.approx(10 * math.log10(1 / mse(video, noisy)), abs=1e-5)
    assert psnr(video, noisy) == pytest.approx(26.02, abs=0.1)


def test_ssim_of_flat_frames_is_the_luminance_term():
    # no variance anywhere: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = 0.01^2
    a, b = np.full((2, 24, 24, 3), 0.5), np.full((2, 24, 24, 3), 0.6)
    expected = (2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-5)
    unrelated = np.random.default_rng(1).random((3, 32, 32, 3))
    assert abs(ssim(np.random.default_rng(0).random((3, 32, 32, 3)), unrelated)) < 0.05


def test_ms_ssim_uses_fewer_scales_on_small_frames_and_says_so():
    assert [ms_ssim_scales(s, s) for s in (256, 176, 175, 64, 32, 11, 10)] == [5, 5, 4, 3, 2, 2, 0]
    assert ms_ssim_note(256, 256) == "at 5 scales"
    assert "3 scales" in ms_ssim_note(64, 64) and "n/a" in ms_ssim_note(8, 8)
    assert math.isnan(ms_ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3))))
    video = np.random.default_rng(0).random((2, 64, 64, 3))
    noisy = np.clip(video + np.random.default_rng(1).normal(0, 0.1, video.shape), 0, 1)
    assert 0.5 < ms_ssim(video, noisy) < 1


# ------------------------------------------------------------------------------------------------ BD-rate

RATES = np.array([1000.0, 2000.0, 4000.0, 8000.0])
PSNR = 10 * np.log10(RATES)  # quality linear in log-rate: interpolation is exact


def test_bd_rate_of_a_curve_needing_20_percent_fewer_bytes_is_minus_20():
    assert bd_rate((RATES, PSNR), (0.8 * RATES, PSNR)) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate((RATES, PSNR), (1.5 * RATES, PSNR)) == pytest.approx(50.0, abs=1e-9)
    # shifted by 3 dB at equal rate: 10^(-3/10) of the bytes at equal quality
    assert bd_rate((RATES, PSNR), (RATES, PSNR + 3)) == pytest.approx(100 * (10**-0.3 - 1), abs=1e-6)


def test_bd_rate_is_not_given_where_the_curves_do_not_overlap():
    assert bd_rate((RATES, PSNR), (RATES, PSNR + 50)) == NO_OVERLAP
    assert bd_rate((RATES, PSNR), (RATES[1:2], PSNR[1:2])) == TOO_FEW  # one point inside the range


def test_only_points_that_rise_in_quality_make_the_curve():
    rates, quality = efficient([4, 1, 2, 3, 5], [3.0, 1.0, 0.5, 2.0, math.inf])
    assert rates.tolist() == [1, 3, 4] and quality.tolist() == [1.0, 2.0, 3.0]


def _point(clip, codec, setting, size, quality, **kw):
    return RDPoint(clip, codec, setting, size, size / 100, quality, 0.9, 0.95, 8, **kw)


def test_means_bd_table_and_coding_gain_of_a_small_evaluation():
    points = []
    for clip in ("a", "b"):
        for r, q in zip(RATES, PSNR):
            points.append(_point(clip, "x264", f"crf {int(r)}", r, q, crf=int(r)))
            plain = dict(k=int(r), latent_dtype="bf16", latent_coding="none")
            points.append(_point(clip, "dfc", f"top-{int(r)} bf16 none", r, q, **plain))
            coded = dict(k=int(r), latent_dtype="bf16", latent_coding="zstd")
            points.append(_point(clip, "dfc", f"top-{int(r)} bf16 zstd", 0.6 * r, q, **coded))
    means = mean_points(points)
    assert len(means) == 12 and {p.clip for p in means} == {"mean"}
    table = bd_rates(means, ["x264", "x265"])
    assert table["dfc bf16 zstd"]["x264 psnr"] == pytest.approx(-40.0)
    assert table["dfc bf16 none"]["x264 psnr"] == pytest.approx(0.0, abs=1e-9)
    assert table["dfc bf16 none"]["x265 psnr"].startswith("n/a: no x265 points")
    assert coding_gain(points) == {"bf16 zstd": pytest.approx(0.4)}
