"""`dfc compress` and `dfc decompress` as a user runs them, on real ffmpeg-encoded videos.

The VAE is the 32x32 `vae-tiny` with random weights (16 frames per clip at most): reconstructions are
noise, so these tests check structure - frame counts, sizes, frame rates, which frames are kept, the
bytes on disk, and that every bad input is one clear line with nothing left behind.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from cli_helpers import dfc, one_line_error, save_weights
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from videos import make_test_video

from dfc.container import read_container
from dfc.video import probe

FPS = 10


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    return {
        "weights": save_weights(root / "vae", "vae-tiny", seed=0),
        "other_weights": save_weights(root / "vae-other", "vae-tiny", seed=1),
        # odd size, not the model's aspect, longer than the model's 16-frame clips (and than 64)
        "long": make_test_video(root / "long.mp4", 70, 45, 27, fps=FPS),
        "single": make_test_video(root / "single.mkv", 1, 30, 40, fps=FPS),
    }


@pytest.fixture(scope="module")
def long_compressed(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "long.dfc"
    result = dfc(
        "compress", files["long"], out, "--weights", files["weights"], "--clip-frames", 16, "--quiet"
    )
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_a_long_video_is_split_into_clips_and_the_last_keeps_its_true_length(long_compressed):
    path, stdout = long_compressed
    cv = read_container(path)
    assert [c.num_frames for c in cv.clips] == [16, 16, 16, 16, 6]
    assert (cv.num_frames, cv.fps, cv.width, cv.height) == (70, FPS, 45, 27)
    assert "clip 4   frames 64-69 (6)" in stdout
    for clip in cv.clips:
        assert f"kept {clip.kept}/{clip.num_frames} at {' '.join(map(str, clip.positions()))}" in stdout


def test_decompressing_gives_back_the_frame_count_resolution_and_fps(long_compressed, files, tmp_path):
    path, _ = long_compressed
    result = dfc("decompress", path, tmp_path / "back.mp4", "--weights", files["weights"], "--quiet")
    assert result.returncode == 0, result.stderr
    info = probe(tmp_path / "back.mp4")
    assert (info.num_frames, info.width, info.height, info.fps) == (70, 45, 27, FPS)


def test_decompressing_to_a_folder_finds_the_local_weights_the_file_was_made_with(long_compressed, tmp_path):
    path, _ = long_compressed
    result = dfc("decompress", path, tmp_path / "frames", "--quiet")  # no --weights: the recorded ones
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 70
    assert probe(tmp_path / "frames").fps == FPS


def test_the_file_holds_only_kept_frames_and_the_ratios_are_in_bytes(long_compressed):
    path, stdout = long_compressed
    cv = read_container(path)
    latent_bytes = cv.kept_frames * cv.model.num_patches * cv.model.latent_dim * 2  # bf16
    coded = int(
        re.search(r"\(([\d,]+) B of bf16 latents, zstd-coded from ([\d,]+) B", stdout)[1].replace(",", "")
    )
    assert f"zstd-coded from {latent_bytes:,} B" in stdout and coded < latent_bytes
    assert coded < path.stat().st_size < coded + 8192
    raw = 70 * 45 * 27 * 3
    assert f"{raw / path.stat().st_size:.1f}x vs raw uint8 frames" in stdout
    assert "vs the input file" in stdout
    assert "ratios are in bytes" in stdout


def test_without_entropy_coding_the_file_is_version_1_and_holds_the_same_latents(
    files, long_compressed, tmp_path
):
    plain = tmp_path / "plain.dfc"
    args = ("--weights", files["weights"], "--clip-frames", 16, "--quiet", "--entropy", "none")
    assert dfc("compress", files["long"], plain, *args).returncode == 0
    coded_cv, plain_cv = read_container(long_compressed[0]), read_container(plain)
    assert (coded_cv.latent_coding, plain_cv.latent_coding) == ("zstd", "none")
    assert long_compressed[0].stat().st_size < plain.stat().st_size
    assert all(np.array_equal(a.latents, b.latents) for a, b in zip(coded_cv.clips, plain_cv.clips))


def test_top_k_keeps_the_k_most_probable_frames_of_each_clip_in_time_order(files, tmp_path):
    import torch

    import torch_impl
    from dfc.video import fit_to_model, read_video

    out = tmp_path / "top3.dfc"
    result = dfc(
        "compress", files["long"], out, "--weights", files["weights"], "--clip-frames", 16, "--keep", 3
    )
    assert result.returncode == 0, result.stderr
    cv = read_container(out)
    assert cv.keep.mode == "topk" and [c.kept for c in cv.clips] == [3, 3, 3, 3, 3]

    vae = torch_impl.load_vae(files["weights"])
    fitted, _ = fit_to_model(read_video(files["long"])[0], 32, 32)
    for clip in cv.clips:
        video = torch.from_numpy(fitted[clip.start : clip.stop])[None]
        _, _, probability = vae.encoder(video, torch.ones(1, clip.num_frames, dtype=torch.bool))
        expected = np.sort(np.argsort(-probability[0, :, 0].detach().numpy(), kind="stable")[:3])
        assert clip.positions().tolist() == expected.tolist()


def test_bernoulli_draws_depend_on_the_seed_and_clip_not_on_how_clips_are_batched(files):
    import torch_impl
    from dfc.codec import compress_video

    vae = torch_impl.load_vae(files["weights"])
    runs = [
        compress_video(
            vae, files["long"], weights_id="w", mode="bernoulli", seed=7, clip_frames=16, batch_size=b
        )
        for b in (1, 4)
    ]
    assert [c.gaps.tolist() for c in runs[0].clips] == [c.gaps.tolist() for c in runs[1].clips]
    assert all(np.allclose(a.latents, b.latents, atol=1e-5) for a, b in zip(runs[0].clips, runs[1].clips))


def test_eight_bit_latents_halve_the_latent_bytes_and_report_their_mse(files, tmp_path):
    out = tmp_path / "u8.dfc"
    result = dfc("compress", files["single"], out, "--weights", files["weights"], "--latent-dtype", "u8")
    assert result.returncode == 0, result.stderr
    assert "u8 latents MSE" in result.stdout and "bf16 latents MSE" in result.stdout
    cv = read_container(out)
    assert cv.latent_dtype == "u8" and cv.kept_frames == 1


def test_a_single_frame_video_round_trips_to_a_gif(files, tmp_path):
    out = tmp_path / "single.dfc"
    assert dfc("compress", files["single"], out, "--weights", files["weights"]).returncode == 0
    result = dfc("decompress", out, tmp_path / "single.gif", "--weights", files["weights"])
    assert result.returncode == 0, result.stderr
    info = probe(tmp_path / "single.gif")
    assert (info.num_frames, info.width, info.height) == (1, 30, 40)


# ---------------------------------------------------------------------------------------- bad input


def test_a_missing_input_is_one_line_and_writes_nothing(files, tmp_path):
    result = dfc("compress", tmp_path / "nope.mp4", tmp_path / "x.dfc", "--weights", files["weights"])
    assert "no such file" in one_line_error(result, "compress")
    assert not list(tmp_path.iterdir())


def test_a_file_that_is_not_a_video_is_one_line(files, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("these are not frames\n")
    result = dfc("compress", text, tmp_path / "x.dfc", "--weights", files["weights"])
    assert "notes.mp4" in one_line_error(result, "compress")
    assert not (tmp_path / "x.dfc").exists()


def test_a_video_with_no_frames_is_one_line(files, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()  # a frame folder with no frames
    result = dfc("compress", empty, tmp_path / "x.dfc", "--weights", files["weights"])
    assert "no image frames" in one_line_error(result, "compress")


def test_a_video_file_with_a_stream_but_no_frames_is_one_line(files, tmp_path):
    header_only = tmp_path / "empty.y4m"
    header_only.write_text("YUV4MPEG2 W64 H48 F10:1 Ip A1:1 C420jpeg\n")  # what ffmpeg reads as 0 frames
    result = dfc("compress", header_only, tmp_path / "x.dfc", "--weights", files["weights"])
    assert "no frames" in one_line_error(result, "compress")
    assert not (tmp_path / "x.dfc").exists()


def test_compress_will_not_replace_an_existing_file_without_force(files, tmp_path):
    out = tmp_path / "x.dfc"
    out.write_bytes(b"the user's file")
    result = dfc("compress", files["single"], out, "--weights", files["weights"])
    assert "--force" in one_line_error(result, "compress")
    assert out.read_bytes() == b"the user's file"
    result = dfc("compress", files["single"], out, "--weights", files["weights"], "--force")
    assert result.returncode == 0, result.stderr
    assert read_container(out).num_frames == 1


def test_top_k_without_a_budget_is_one_line(files, tmp_path):
    result = dfc(
        "compress", files["single"], tmp_path / "x.dfc", "--mode", "topk", "--weights", files["weights"]
    )
    assert "--keep" in one_line_error(result, "compress")


def test_without_weights_and_offline_the_message_says_how_to_provide_them(files, tmp_path):
    result = dfc("compress", files["single"], tmp_path / "x.dfc", HF_HOME=str(tmp_path / "empty-hub"))
    line = one_line_error(result, "compress")
    assert "--weights" in line and "hf download" in line
    assert not (tmp_path / "x.dfc").exists()


def test_decompressing_with_other_weights_is_refused(long_compressed, files, tmp_path):
    path, _ = long_compressed
    result = dfc("decompress", path, tmp_path / "x.mp4", "--weights", files["other_weights"])
    assert "compressed with weights" in one_line_error(result, "decompress")
    assert not list(tmp_path.iterdir())


def test_an_unknown_output_type_is_refused_before_decoding(long_compressed, files, tmp_path):
    path, _ = long_compressed
    result = dfc("decompress", path, tmp_path / "x.xyz", "--weights", files["weights"])
    assert "unknown video type" in one_line_error(result, "decompress")


def test_a_truncated_file_is_one_line_and_writes_nothing(long_compressed, files, tmp_path):
    path, _ = long_compressed
    cut = tmp_path / "cut.dfc"
    cut.write_bytes(path.read_bytes()[:-100])
    result = dfc("decompress", cut, tmp_path / "x.mp4", "--weights", files["weights"])
    assert "truncated" in one_line_error(result, "decompress")
    assert not (tmp_path / "x.mp4").exists()


def test_decompress_will_not_replace_an_existing_video_unless_asked(long_compressed, files, tmp_path):
    path, _ = long_compressed
    target = tmp_path / "mine.mp4"
    target.write_bytes(b"the user's video")
    result = dfc("decompress", path, target, "--weights", files["weights"])
    assert "--force" in one_line_error(result, "decompress")
    assert target.read_bytes() == b"the user's video"


@pytest.mark.parametrize("kind", ["a video", "model weights"])
def test_decompressing_a_file_that_is_not_a_dfc_file_is_one_line(files, tmp_path, kind):
    wrong = files["long"] if kind == "a video" else files["weights"] / "model.safetensors"
    result = dfc("decompress", wrong, tmp_path / "x.mp4", "--weights", files["weights"])
    assert "not a .dfc" in one_line_error(result, "decompress")
    assert not (tmp_path / "x.mp4").exists()


def test_a_file_with_one_changed_byte_is_one_line_and_writes_nothing(long_compressed, files, tmp_path):
    path, _ = long_compressed
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01  # inside the latents, where a decoder would not notice
    bad = tmp_path / "bad.dfc"
    bad.write_bytes(bytes(damaged))
    result = dfc("decompress", bad, tmp_path / "x.mp4", "--weights", files["weights"])
    assert "damaged" in one_line_error(result, "decompress")
    assert not (tmp_path / "x.mp4").exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damaged_or_truncated_file_fails_cleanly(long_compressed, files, tmp_path, capsys, data):
    """In-process (the same `main` the script calls), so hypothesis can try many damages quickly: the
    file is rejected before any weights are loaded."""
    from dfc.cli import main

    original = bytearray(long_compressed[0].read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        damaged = original[: data.draw(st.integers(0, len(original) - 1), label="length")]
    else:
        damaged = bytearray(original)
        for index in data.draw(
            st.lists(st.integers(0, len(original) - 1), min_size=1, max_size=4, unique=True), label="at"
        ):
            damaged[index] ^= data.draw(st.integers(1, 255), label="xor")
    bad = tmp_path / "bad.dfc"
    bad.write_bytes(bytes(damaged))
    target = tmp_path / "never.mp4"
    capsys.readouterr()
    code = main(["decompress", str(bad), str(target), "--weights", str(files["weights"])])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and err.startswith("dfc decompress: error: ")
    assert not target.exists()


# --- the route: each step once, in one direction --------------------------------------------------------

_ROUTE = {
    "dfc.video": (
        "read_video",
        "open_video",
        "split_clips",
        "fit_to_model",
        "fit_clips",
        "restore_frames",
        "write_video",
    ),
    "dfc.container": ("read_container", "write_container"),
    "dfc.codec": ("decode_clips",),
    "torch_impl.loading": ("locate_weights",),
}


@pytest.fixture
def steps(monkeypatch):
    """The route's steps as they are called, wherever a module holds them (`from x import f` copies too)."""
    import importlib
    import sys

    import dfc.cli  # noqa: F401  (the modules a command binds, loaded before they are wrapped)
    import dfc.codec  # noqa: F401

    calls: list[str] = []

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)

        return wrapper

    for module_name, names in _ROUTE.items():
        module = importlib.import_module(module_name)
        for name in names:
            original = getattr(module, name)
            wrapped = counted(name, original)
            for holder in list(sys.modules.values()):
                if getattr(holder, "__name__", "").startswith(("dfc", "torch_impl")):
                    if getattr(holder, name, None) is original:
                        monkeypatch.setattr(holder, name, wrapped)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return calls


def test_compress_opens_the_video_once_and_reads_it_clip_by_clip(files, steps, tmp_path, capsys):
    from dfc.cli import main

    out = tmp_path / "long.dfc"
    # u8 latents are measured against the fitted input: each clip fitted once serves both
    argv = [
        "compress",
        str(files["long"]),
        str(out),
        "--weights",
        str(files["weights"]),
        "--clip-frames",
        "16",
    ]
    assert main([*argv, "--latent-dtype", "u8", "--quiet"]) == 0, capsys.readouterr().err
    route = [step for step in steps if step != "decode_clips"]  # the measurement decodes, per dtype
    # opened (a bad file fails before the weights load), then each frame fitted as its clip is read
    assert route == ["open_video", "locate_weights", "fit_clips", "write_container"]


def test_decompress_reads_once_then_decodes_and_writes_clip_by_clip(
    long_compressed, files, steps, tmp_path, capsys
):
    from dfc.cli import main

    path, _ = long_compressed
    argv = [
        "decompress",
        str(path),
        str(tmp_path / "back.mp4"),
        "--weights",
        str(files["weights"]),
        "--quiet",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    # streamed: the file read once, the weights located once, then clips decoded a batch at a time
    # (4 clips of 16 frames, then the 6-frame one) and each frame restored and written as it comes
    assert steps[:2] == ["read_container", "locate_weights"]
    assert steps.count("decode_clips") == 2 and steps.count("restore_frames") == 70
    assert "write_video" not in steps and "read_container" not in steps[2:]
