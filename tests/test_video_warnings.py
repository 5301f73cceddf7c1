"""A user's video that is not what it states: a cut-off or corrupted file decodes what it can, and one
warning line says so (the frames decoded against the container's `nb_frames`, and what ffmpeg logged
at warning level); a clean video gives no line at all. Real ffmpeg-made files (tests/videos.py)."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
from cli_helpers import dfc, save_weights
from videos import make_test_video

from dfc.video import VideoFrames, open_video, read_video
from dfc.video_source import KEPT_WARNINGS, FfmpegReader, StreamFacts, stream_facts

FRAMES = 60


def _cut(source: Path, target: Path, share: float = 0.6) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * share)])
    return target


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("warnings")
    made = {
        # +faststart: the index (moov, with nb_frames) before the frames, so a cut-off file still opens
        "mp4": make_test_video(folder / "clean.mp4", FRAMES, 64, 48, options=["-movflags", "+faststart"]),
        "webm": make_test_video(folder / "clean.webm", 20, 33, 21),
        "mkv": make_test_video(folder / "clean.mkv", FRAMES, 64, 48),
        "avi": make_test_video(folder / "clean.avi", 20, 33, 21),  # MJPEG, JPEG-range pixels
        "gif": make_test_video(folder / "clean.gif", 20, 33, 21),
    }
    made["cut.mp4"] = _cut(made["mp4"], folder / "cut.mp4")
    made["cut.mkv"] = _cut(made["mkv"], folder / "cut.mkv")
    plain = make_test_video(folder / "plain.mp4", FRAMES, 64, 48)  # the index after the frames
    data = bytearray(plain.read_bytes())
    middle = len(data) * 4 // 10  # inside the frames' data: 300 bytes of junk
    data[middle : middle + 300] = bytes((i * 97 + 13) % 256 for i in range(300))
    made["bad.mp4"] = folder / "bad.mp4"
    made["bad.mp4"].write_bytes(bytes(data))
    return made


def _read_all(path: Path, capsys, **kwargs) -> tuple[VideoFrames, int, list[str]]:
    capsys.readouterr()
    info, frames = open_video(path, **kwargs)
    count = sum(1 for _ in frames)
    return frames, count, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("kind", ["mp4", "webm", "mkv", "avi", "gif"])
def test_a_clean_video_decodes_without_a_warning_line(files, kind, capsys):
    frames, count, lines = _read_all(files[kind], capsys)
    assert lines == [] and frames.warning is None
    assert count == (FRAMES if kind in ("mp4", "mkv") else 20)


def test_webm_and_mkv_state_no_frame_count_and_still_read_whole(files):
    for kind in ("webm", "mkv"):
        facts = stream_facts(files[kind])
        assert facts.nb_frames is None and facts.rate == 10 and facts.duration
    assert stream_facts(files["mp4"]) == StreamFacts(nb_frames=FRAMES, rate=10, duration=6.0)


def test_a_cut_off_mp4_decodes_what_it_can_and_one_line_names_nb_frames(files, capsys):
    frames, count, lines = _read_all(files["cut.mp4"], capsys)
    assert 0 < count < FRAMES - 1
    assert len(lines) == 1 and lines[0] == frames.warning
    assert lines[0].startswith(f"warning: {files['cut.mp4']}: decoded {count} frames, its container states")
    assert f"states {FRAMES} (nb_frames)" in lines[0]
    _, five, lines = _read_all(files["cut.mp4"], capsys, max_frames=5)  # the part that is whole
    assert five == 5 and lines == []


def test_bytes_corrupted_mid_stream_make_ffmpeg_warn_and_dfc_says_so_in_one_line(files, capsys):
    frames, count, lines = _read_all(files["bad.mp4"], capsys)
    assert count > FRAMES // 2
    assert len(lines) == 1 and lines[0].startswith(f"warning: {files['bad.mp4']}: ")
    assert "ffmpeg reported" in lines[0] and "warnings while decoding (first: " in lines[0]

    reader = FfmpegReader(files["bad.mp4"])  # however much ffmpeg logs, only the first few are kept
    while reader.read() is not None:
        pass
    total, first = reader.warnings
    assert total > KEPT_WARNINGS == len(first)


def test_a_cut_off_mkv_without_nb_frames_is_judged_by_its_duration_and_rate(files, capsys):
    frames, count, lines = _read_all(files["cut.mkv"], capsys)
    assert 0 < count < FRAMES - 1 and len(lines) == 1
    assert f"decoded {count} frames, its container states no frame count" in lines[0]
    assert f"at 10 fps make {FRAMES}" in lines[0]


def test_a_file_the_probe_cannot_open_still_gets_ffmpegs_own_reason(files, tmp_path):
    from dfc.errors import UserError

    for name, data in (("half.mp4", files["mp4"].read_bytes()[:600]), ("junk.mp4", b"\0" * 5000)):
        (tmp_path / name).write_bytes(data)
        assert stream_facts(tmp_path / name) == StreamFacts()  # quietly nothing stated
    with pytest.raises(UserError, match="junk.mp4: not a video ffmpeg can read"):
        read_video(tmp_path / "junk.mp4")
    with pytest.raises(UserError, match=r"half.mp4: not a video ffmpeg can read \(.*\)$"):
        read_video(tmp_path / "half.mp4")


def _ffmpeg_children() -> list[psutil.Process]:
    return [c for c in psutil.Process().children() if "ffmpeg" in c.name()]


def test_ffmpeg_stops_when_reading_stops_or_is_never_started(files):
    info, frames = open_video(files["mp4"])
    next(frames)
    running = _ffmpeg_children()
    assert len(running) == 1
    frames.close()  # a caller that needs only the start
    assert not running[0].is_running()
    info, frames = open_video(files["mp4"])
    running = _ffmpeg_children()
    del frames  # dropped without reading a frame
    assert not any(p.is_running() for p in running)


def test_compress_says_it_once_per_damaged_video_and_its_ledger_records_it(files, tmp_path):
    """`dfc compress FOLDER OUT`: the cut-off video is compressed as far as it decodes, with one
    warning line; the clean one gives none. (`dfc evaluate` records it too: test_cli_many_videos.py.)"""
    folder = tmp_path / "videos"
    folder.mkdir()
    for name, kind in (("cut.mp4", "cut.mp4"), ("clean.webm", "webm")):
        (folder / name).write_bytes(files[kind].read_bytes())
    weights = save_weights(tmp_path / "vae", "vae-tiny")
    result = dfc("compress", folder, tmp_path / "out", "--weights", weights, "--quiet")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {folder / 'cut.mp4'}: decoded ")
    assert f"its container states {FRAMES} (nb_frames)" in lines[0]
    ledger = (tmp_path / "out" / "dfc-ledger.jsonl").read_text().splitlines()[1:]
    records = {Path(r["input"]).name: r for r in map(json.loads, ledger)}
    assert records["cut.mp4"]["status"] == "done" and records["cut.mp4"]["warning"] == lines[0]
    assert records["clean.webm"]["status"] == "done" and "warning" not in records["clean.webm"]
