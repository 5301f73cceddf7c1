"""A user brings their own video: read it, fit it to the model, split it into clips, write results back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from videos import make_test_video, synthetic_frames  # tests/ is on sys.path (pytest rootdir insertion)

from dfc import video as video_module
from dfc.errors import UserError
from dfc.video import (
    Crop,
    VideoInfo,
    fit_to_model,
    open_video,
    probe,
    read_video,
    restore_frames,
    split_clips,
    write_video,
)

ODD_W, ODD_H, LONG_T, FPS = 97, 61, 70, 10


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Real ffmpeg-encoded files: odd size, more frames than the model's 64, in several containers."""
    folder = tmp_path_factory.mktemp("videos")
    made = {
        ext: make_test_video(folder / f"odd{ext}", LONG_T, ODD_W, ODD_H, FPS)
        for ext in (".mp4", ".webm", ".gif")
    }
    made["single"] = make_test_video(folder / "single.mp4", 1, 64, 48, 24)
    return made


def _single_line_user_error(call, *args) -> str:
    with pytest.raises(UserError) as caught:
        call(*args)
    message = str(caught.value)
    assert message and "\n" not in message, repr(message)
    return message


# ------------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".gif"])
def test_a_long_odd_sized_video_reads_back_with_its_frame_count_fps_and_size(videos, ext):
    frames, info = read_video(videos[ext])
    assert info == VideoInfo(num_frames=LONG_T, fps=FPS, width=ODD_W, height=ODD_H)
    assert probe(videos[ext]) == info
    assert frames.shape == (LONG_T, ODD_H, ODD_W, 3) and frames.dtype == np.uint8
    source = synthetic_frames(LONG_T, ODD_W, ODD_H)
    assert np.abs(frames.astype(int) - source).mean() < 8  # the picture survives the codec
    assert len({frame.tobytes() for frame in frames}) == LONG_T  # the content moves


def test_a_single_frame_video_is_a_video(videos):
    frames, info = read_video(videos["single"])
    assert frames.shape == (1, 48, 64, 3)
    assert info == VideoInfo(1, 24.0, 64, 48) == probe(videos["single"])


def test_max_frames_reads_only_the_start(videos):
    frames, info = read_video(videos[".mp4"], max_frames=5)
    assert frames.shape[0] == info.num_frames == 5
    np.testing.assert_array_equal(frames, read_video(videos[".mp4"])[0][:5])


def test_frames_can_be_streamed_one_at_a_time(videos):
    info, frames = open_video(videos[".webm"])
    assert (info.width, info.height) == (ODD_W, ODD_H)
    assert sum(1 for frame in frames if frame.shape == (ODD_H, ODD_W, 3)) == LONG_T


def test_a_video_recorded_sideways_reads_upright(videos, tmp_path):
    """A phone's rotation flag: ffmpeg turns the frames, and the frame size is what it outputs."""
    sideways = tmp_path / "sideways.mp4"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", "90"]
    subprocess.run([*cmd, "-i", str(videos[".mp4"]), "-c", "copy", str(sideways)], check=True)
    frames, info = read_video(sideways, max_frames=3)
    assert (info.width, info.height) == (ODD_H, ODD_W) and frames.shape == (3, ODD_W, ODD_H, 3)


def test_a_folder_of_images_reads_as_a_video(tmp_path):
    from PIL import Image

    source = synthetic_frames(4, 33, 21)
    for t, frame in enumerate(source):
        Image.fromarray(frame).save(tmp_path / f"img{t:03d}.png")
    frames, info = read_video(tmp_path)
    np.testing.assert_array_equal(frames, source)
    assert info == VideoInfo(4, video_module.DEFAULT_FPS, 33, 21)


def _zero_frame_avi(path: Path) -> Path:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48"]
    subprocess.run([*cmd, "-frames:v", "0", "-c:v", "mjpeg", str(path)], check=True, capture_output=True)
    return path


def _audio_only(path: Path) -> Path:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=0.2"]
    subprocess.run([*cmd, str(path)], check=True, capture_output=True)
    return path


def test_bad_inputs_are_one_line_errors_that_say_what_is_wrong(tmp_path, videos):
    (tmp_path / "notes.txt").write_text("not a video\n")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "half.mp4").write_bytes(videos[".mp4"].read_bytes()[:2000])  # never finished writing
    (tmp_path / "no_images").mkdir()
    cases = {
        "missing.mp4": "no such file",
        "notes.txt": "not a video",
        "empty.mp4": "not a video",
        "half.mp4": "moov atom not found",
        "no_images": "no image frames",
        _audio_only(tmp_path / "sound.wav").name: "no video stream",
        _zero_frame_avi(tmp_path / "zero.avi").name: "no frames",
    }
    for name, symptom in cases.items():
        for call in (read_video, probe):
            message = _single_line_user_error(call, tmp_path / name)
            assert name in message and symptom in message, message


# ------------------------------------------------------------------------------------- fitting to the model


def _smooth_frames(num_frames: int, width: int, height: int) -> np.ndarray:
    """Gradients: resizing them down and back up loses little, so restored pictures can be compared."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([x * 200 // width + 10 * t, y * 200 // height, 0 * x + 120], -1) for t in range(num_frames)
    ]
    return np.asarray(frames, np.uint8)


def test_crop_mode_keeps_the_aspect_and_restores_the_original_resolution():
    frames = _smooth_frames(3, ODD_W, ODD_H)  # wider than the square model: trimmed left and right
    fitted, crop = fit_to_model(frames, 32, 32, mode="crop")
    assert fitted.shape == (3, 32, 32, 3) and fitted.dtype == np.float32
    assert 0.0 <= fitted.min() and fitted.max() <= 1.0
    assert crop == Crop(
        "crop", ODD_W, ODD_H, left=18, top=0, width=61, height=61, model_width=32, model_height=32
    )

    restored = restore_frames(fitted, crop)
    assert restored.shape == frames.shape and restored.dtype == np.uint8
    inside = np.s_[:, 2:-2, crop.left + 2 : crop.left + crop.width - 2]  # resampling softens the box's edges
    assert np.abs(restored[inside].astype(int) - frames[inside]).mean() < 3
    assert not restored[:, :, : crop.left].any() and not restored[:, :, crop.left + crop.width :].any()

    region = restore_frames(fitted, crop, full_frame=False)  # just the part that was compressed
    np.testing.assert_array_equal(region, restored[:, :, crop.left : crop.left + crop.width])


def test_a_tall_video_is_cropped_top_and_bottom():
    fitted, crop = fit_to_model(_smooth_frames(1, 40, 90), 16, 32, mode="crop")
    assert fitted.shape == (1, 16, 32, 3)
    assert (crop.left, crop.top, crop.width, crop.height) == (0, 35, 40, 20)
    assert restore_frames(fitted, crop).shape == (1, 90, 40, 3)


def test_stretch_mode_keeps_the_whole_picture_and_restores_the_original_resolution():
    frames = _smooth_frames(2, ODD_W, ODD_H)
    fitted, crop = fit_to_model(frames, 32, 48, mode="stretch")
    assert fitted.shape == (2, 32, 48, 3)
    assert (crop.left, crop.top, crop.width, crop.height) == (0, 0, ODD_W, ODD_H)
    restored = restore_frames(fitted, crop)
    assert restored.shape == frames.shape
    assert np.abs(restored[:, 2:-2, 2:-2].astype(int) - frames[:, 2:-2, 2:-2]).mean() < 3


def test_fitting_is_deterministic_and_rejects_unknown_modes():
    frames = synthetic_frames(2, ODD_W, ODD_H, "noise")
    np.testing.assert_array_equal(fit_to_model(frames, 16, 16)[0], fit_to_model(frames, 16, 16)[0])
    assert "fit mode" in _single_line_user_error(fit_to_model, frames, 16, 16, "zoom")


# ------------------------------------------------------------------------------------------------- clips


@settings(max_examples=200, deadline=None)
@given(num_frames=st.integers(1, 500), clip_frames=st.integers(1, 64))
def test_clips_cover_every_frame_once_and_the_last_keeps_its_true_length(num_frames, clip_frames):
    clips = split_clips(num_frames, clip_frames, max_len=64)
    covered = [t for start, stop in clips for t in range(start, stop)]
    assert covered == list(range(num_frames))
    lengths = [stop - start for start, stop in clips]
    assert all(n == clip_frames for n in lengths[:-1])
    assert lengths[-1] == num_frames - clip_frames * (len(clips) - 1)  # never padded


def test_a_70_frame_video_is_two_full_clips_and_a_short_one():
    assert split_clips(70) == [(0, 32), (32, 64), (64, 70)]


def test_clip_lengths_beyond_the_model_are_refused():
    assert "64" in _single_line_user_error(split_clips, 100, 65, 64)
    _single_line_user_error(split_clips, 100, 0, 64)
    _single_line_user_error(split_clips, 0, 32, 64)


# ------------------------------------------------------------------------------------------------ writing


@pytest.mark.parametrize(
    ("name", "width", "height", "fps", "tolerance"),
    [
        ("odd.mp4", ODD_W, ODD_H, 30.0, 6),
        ("even.mp4", 64, 48, 30000 / 1001, 6),
        ("odd.webm", ODD_W, ODD_H, 25.0, 8),
        ("odd.gif", ODD_W, ODD_H, 10.0, 12),
        ("frames/", ODD_W, ODD_H, 12.5, 0),
        ("frames_without_suffix", 31, 17, 8.0, 0),
    ],
)
def test_written_videos_read_back_with_their_frame_count_fps_and_exact_size(
    tmp_path, name, width, height, fps, tolerance
):
    frames = synthetic_frames(9, width, height)
    path = write_video(tmp_path / name, frames, fps)
    back, info = read_video(path)
    assert (info.num_frames, info.width, info.height) == (9, width, height)
    assert info.fps == pytest.approx(fps, abs=0.01)
    assert np.abs(back.astype(int) - frames).mean() <= tolerance
    assert [p.name for p in tmp_path.iterdir()] == [Path(name).name]  # no temporary files left


def test_a_gif_keeps_identical_frames(tmp_path):
    path = write_video(tmp_path / "still.gif", synthetic_frames(6, 20, 10, "static"), 20.0)
    assert read_video(path)[1] == VideoInfo(6, 20.0, 20, 10)


def test_an_existing_output_is_replaced_whole(tmp_path):
    path = tmp_path / "out.mp4"
    write_video(path, synthetic_frames(3, 32, 32), 10)
    write_video(path, synthetic_frames(5, 32, 32), 10)
    assert probe(path).num_frames == 5


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_errors_are_user_errors_and_leave_nothing_behind(tmp_path):
    frames = synthetic_frames(3, 32, 32)
    assert "does not exist" in _single_line_user_error(write_video, tmp_path / "no" / "out.mp4", frames, 10)
    assert "unknown video type" in _single_line_user_error(write_video, tmp_path / "out.xyz", frames, 10)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert "not empty" in _single_line_user_error(write_video, tmp_path / "full", frames, 10)
    (tmp_path / "plain").write_text("a file without a suffix")
    assert "not a folder" in _single_line_user_error(write_video, tmp_path / "plain", frames, 10)
    assert _leftovers(tmp_path) == ["full", "plain"] and _leftovers(tmp_path / "full") == ["keep.txt"]


def test_a_failure_mid_write_leaves_no_partial_output_and_keeps_the_old_file(tmp_path, monkeypatch):
    frames = synthetic_frames(4, 32, 32)
    old = write_video(tmp_path / "old.mp4", frames, 10)
    old_bytes = old.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    assert "No space left" in _single_line_user_error(write_video, old, synthetic_frames(2, 32, 32), 10)
    monkeypatch.undo()
    assert old.read_bytes() == old_bytes and _leftovers(tmp_path) == ["old.mp4"]

    from PIL import Image

    saved = []

    def save_then_fail(self, fp, *args, **kwargs):
        saved.append(fp)
        if len(saved) == 3:
            raise OSError(28, "No space left on device")
        return original_save(self, fp, *args, **kwargs)

    original_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    _single_line_user_error(write_video, tmp_path / "frames", frames, 10)
    assert _leftovers(tmp_path) == ["old.mp4"]


def test_an_ffmpeg_failure_is_a_user_error_with_ffmpegs_reason(tmp_path, monkeypatch):
    broken = ("mp4", ["-c:v", "no_such_encoder"], ["-c:v", "no_such_encoder"])
    monkeypatch.setitem(video_module.FFMPEG_FORMATS, ".mp4", broken)
    # More frames than a pipe holds: ffmpeg quits while frames are still being sent.
    message = _single_line_user_error(write_video, tmp_path / "a.mp4", synthetic_frames(30, 256, 256), 10)
    assert "Encoder not found" in message
    assert _leftovers(tmp_path) == []


def test_a_frame_rate_must_be_positive(tmp_path):
    assert "fps" in _single_line_user_error(write_video, tmp_path / "a.mp4", synthetic_frames(2, 8, 8), 0.0)


def test_a_user_video_comes_back_at_its_own_resolution(tmp_path, videos):
    """The decompress path without a model: fit to the model size, restore, write, read back."""
    frames, info = read_video(videos[".mp4"], max_frames=8)
    fitted, crop = fit_to_model(frames, 32, 32, mode="stretch")
    out = write_video(tmp_path / "restored.mp4", restore_frames(fitted, crop), info.fps)
    assert probe(out) == VideoInfo(8, info.fps, ODD_W, ODD_H)
