"""Many videos at once: `dfc compress` and `dfc evaluate` over a folder, a glob or a manifest, as a user runs
them on real ffmpeg-encoded clips (one of them broken): a ledger, resuming after Ctrl-C or SIGTERM, two
worker processes, a worker killed mid-run, and memory that does not grow with a video's length.

The VAE is the random-weight `vae-tiny` (32x32, 16-frame clips).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_helpers import REPO, dfc, one_line_error, save_weights
from videos import make_test_video

from dfc.container import read_container

LEDGER = "dfc-ledger.jsonl"


def _dfc_child(*args: object) -> subprocess.Popen:
    """`dfc ARGS` running in the background, as a user's terminal would run it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "dfc.cli", *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(out: Path) -> list[dict]:
    lines = (out / LEDGER).read_text().splitlines()
    assert json.loads(lines[0])["ledger"] == 1
    return [json.loads(line) for line in lines[1:]]


def _done(out: Path) -> list[str]:
    return sorted(Path(r["input"]).name for r in _records(out) if r["status"] == "done")


def _wait_for(condition, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_weights(tmp_path_factory.mktemp("weights") / "vae", "vae-tiny")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three good clips of different lengths and sizes, and one broken file (a cut-off mp4)."""
    folder = tmp_path_factory.mktemp("videos")
    make_test_video(folder / "a.mp4", 20, 48, 36)
    make_test_video(folder / "b.mkv", 9, 33, 41, pattern="static")
    make_test_video(folder / "c.avi", 17, 40, 40)
    (folder / "broken.mp4").write_bytes((folder / "a.mp4").read_bytes()[:1500])
    return folder


def _many(count: int, frames: int, folder: Path) -> Path:
    folder.mkdir()
    for index in range(count):
        make_test_video(folder / f"v{index}.mp4", frames, 64, 48)
    return folder


@pytest.fixture(scope="module")
def compressed(videos, weights, tmp_path_factory):
    """`dfc compress FOLDER OUT` over a copy of the videos (which a later test changes)."""
    root = tmp_path_factory.mktemp("runs")
    mine = root / "videos"
    mine.mkdir()
    for video in videos.iterdir():
        os.link(video, mine / video.name)
    out = root / "out"
    result = dfc("compress", mine, out, "--weights", weights, "--clip-frames", 8, "--quiet")
    return mine, out, result


def test_a_folder_compresses_to_one_file_per_video_and_a_bad_one_is_recorded_and_skipped(compressed):
    videos, out, result = compressed
    assert result.returncode == 1, result.stderr  # one video failed, the others did not stop
    assert sorted(p.name for p in out.glob("*.dfc")) == ["a.dfc", "b.dfc", "c.dfc"]
    assert [read_container(out / f"{n}.dfc").num_frames for n in "abc"] == [20, 9, 17]
    records = {Path(r["input"]).name: r for r in _records(out)}
    assert {n: r["status"] for n, r in records.items()} == {
        "a.mp4": "done",
        "b.mkv": "done",
        "broken.mp4": "failed",
        "c.avi": "done",
    }
    assert "moov atom not found" in records["broken.mp4"]["error"]
    stamp = (videos / "a.mp4").stat()
    assert (records["a.mp4"]["size"], records["a.mp4"]["mtime_ns"]) == (stamp.st_size, stamp.st_mtime_ns)
    assert "videos   4\n" in result.stdout
    assert "done     3 now: 46 frames" in result.stdout
    assert re.search(r"^failed   broken: .*broken.mp4: .*moov atom not found", result.stdout, re.M)


def test_running_again_redoes_only_what_is_not_finished_or_has_changed(compressed, weights):
    videos, out, _ = compressed
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.dfc")}
    make_test_video(videos / "new.avi", 5, 40, 40)
    os.replace(videos / "new.avi", videos / "c.avi")  # the user replaced one input

    result = dfc("compress", videos, out, "--weights", weights, "--clip-frames", 8, "--quiet")
    assert result.returncode == 1, result.stderr  # the broken video is tried again, and fails again
    assert "videos   4 (2 finished earlier, skipped)" in result.stdout
    assert "done     1 now: 5 frames" in result.stdout
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.dfc")}
    assert after["a.dfc"] == before["a.dfc"] and after["b.dfc"] == before["b.dfc"]
    assert read_container(out / "c.dfc").num_frames == 5


def test_an_output_folder_that_is_not_a_run_is_refused_without_force(videos, weights, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's notes")
    result = dfc("compress", videos, out, "--weights", weights, "--quiet")
    assert "not an empty folder" in one_line_error(result, "compress")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    result = dfc("compress", videos, out, "--weights", weights, "--clip-frames", 8, "--quiet", "--force")
    assert result.returncode == 1 and (out / "a.dfc").is_file() and (out / "notes.txt").is_file()


@pytest.mark.parametrize("workers", [1, 2])
def test_weights_that_do_not_load_stop_the_job_with_one_line(videos, tmp_path, workers):
    damaged = tmp_path / "vae"
    damaged.mkdir()
    (damaged / "model.safetensors").write_bytes(b"not a safetensors file")
    (damaged / "config.json").write_text("{}")
    out = tmp_path / "out"
    result = dfc("compress", videos, out, "--weights", damaged, "--workers", workers, "--quiet")
    assert "cannot load VAE weights" in one_line_error(result, "compress")
    assert _records(out) == [] and not list(out.glob("*.dfc"))


def test_a_ledger_line_torn_by_a_crash_is_dropped_and_its_video_done_again(tmp_path):
    from dfc.batch.ledger import LEDGER_NAME, Ledger

    out = tmp_path / "out"
    ledger = Ledger.open(out, "compress", {"seed": 0}, force=False)
    stamp = {"size": 1, "mtime_ns": 2}
    ledger.append({"status": "done", "input": "/v/a.mp4", **stamp})
    ledger.close()
    with open(out / LEDGER_NAME, "a") as f:
        f.write('{"status": "done", "input": "/v/b.mp4", "si')  # the machine died here
    resumed = Ledger.open(out, "compress", {"seed": 0}, force=False)
    assert resumed.is_finished("/v/a.mp4", stamp) and not resumed.is_finished("/v/b.mp4", stamp)
    resumed.append({"status": "done", "input": "/v/b.mp4", **stamp})
    resumed.close()
    assert len(Ledger.open(out, "compress", {"seed": 0}, force=False).records) == 2


def test_a_glob_and_a_manifest_name_the_videos(videos, tmp_path):
    from dfc.batch.inputs import resolve

    assert [t.name for t in resolve(f"{videos}/[ab].*")] == ["a", "b"]
    text = tmp_path / "list.txt"
    text.write_text(f"# my clips\n{videos / 'c.avi'}\n\n{videos / 'a.mp4'}\n")
    assert [Path(t.input).name for t in resolve(text)] == ["c.avi", "a.mp4"]
    (tmp_path / "sub").mkdir()
    os.link(videos / "b.mkv", tmp_path / "sub" / "b.mkv")
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text(json.dumps({"path": "sub/b.mkv"}) + "\n" + json.dumps(str(videos / "a.mp4")) + "\n")
    tasks = resolve(jsonl)
    assert [Path(t.input) for t in tasks] == [tmp_path / "sub" / "b.mkv", videos / "a.mp4"]
    assert len({t.name for t in tasks}) == 2  # output names relative to the common folder, distinct


def test_evaluate_over_a_manifest_resumes_and_tables_every_finished_video(videos, weights, tmp_path):
    mine = tmp_path / "videos"
    mine.mkdir()
    for name in ("b.mkv", "broken.mp4"):
        (mine / name).write_bytes((videos / name).read_bytes())
    cut = make_test_video(mine / "cut.mp4", 16, 32, 32, options=["-movflags", "+faststart"])
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 6 // 10])  # cut off: decodes in part
    manifest = tmp_path / "clips.jsonl"
    paths = [mine / "b.mkv", mine / "broken.mp4", cut]
    manifest.write_text("".join(json.dumps({"path": str(path)}) + "\n" for path in paths))
    out = tmp_path / "report"
    args = ("--weights", weights, "--out", out, "--clip-frames", 8, "--draws", 2, "--topk", "2", "--quiet")
    result = dfc("evaluate", manifest, *args, "--no-figures")
    assert result.returncode == 1, result.stderr
    assert "| b_clip0_8f | 8 |" in result.stdout and "| b_clip1_1f | 1 |" in result.stdout
    rows = json.loads((out / "evaluation.json").read_text())["clips"]
    assert [(r["video"], r["frames"]) for r in rows if r["video"] == "b.mkv"] == [("b.mkv", 8), ("b.mkv", 1)]
    # the cut-off video is evaluated as far as it decodes; one line says so, and its record keeps it
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"{cut}: decoded" in warnings[0] and "states 16 (nb_frames)" in warnings[0]
    records = {Path(r["input"]).name: r for r in _records(out)}
    assert records["cut.mp4"]["status"] == "done" and records["cut.mp4"]["warning"] == warnings[0]
    assert "warning" not in records["b.mkv"]


@pytest.mark.parametrize(
    "how",
    [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],  # one handler serves both
    ids=["ctrl-c", "sigterm"],
)
def test_an_interrupted_run_resumes_where_it_stopped_and_never_redoes_a_finished_video(
    weights, tmp_path, how
):
    folder = _many(4, 128, tmp_path / "videos")
    out = tmp_path / "out"
    args = ("compress", folder, out, "--weights", weights, "--clip-frames", 16)
    child = _dfc_child(*args, "--quiet")
    _wait_for(lambda: out.joinpath(LEDGER).is_file() and len(_records(out)) >= 1, what="a first video")
    child.send_signal(how)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert "interrupted" in stderr and "the same command resumes" in stderr
    first = _done(out)
    assert 1 <= len(first) < 4, "interrupted before the end"
    assert not (out / ".dfc-staging").exists()  # nothing half-written is left behind

    result = dfc(*args, "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"({len(first)} finished earlier, skipped)" in result.stdout
    assert _done(out) == [f"v{i}.mp4" for i in range(4)]  # each video recorded done exactly once
    assert all(read_container(out / f"v{i}.dfc").num_frames == 128 for i in range(4))


def test_two_workers_share_the_videos_and_a_killed_worker_s_video_is_handed_to_the_other(weights, tmp_path):
    folder = _many(8, 96, tmp_path / "videos")
    out = tmp_path / "out"
    child = _dfc_child("compress", folder, out, "--weights", weights, "--clip-frames", 16, "--workers", 2)

    def midway_through_a_later_video() -> set[str]:
        """Workers that finished a video and are now in the middle of another."""
        finished = {r["worker"] for r in _records(out)} if (out / LEDGER).is_file() else set()
        busy = set()
        for staging in (out / ".dfc-staging").glob("t*") if out.is_dir() else []:
            worker = staging.name.split("-", 1)[1]
            # its staging folder is empty until the video's output is written at the end
            with contextlib.suppress(FileNotFoundError):  # the coordinator just moved it into place
                if worker in finished and not any(staging.iterdir()):
                    busy.add(worker)
        return busy

    while True:  # freeze a candidate, check it is still mid-video (a loaded machine is slow to poll), kill it
        _wait_for(lambda: bool(midway_through_a_later_video()), what="a worker busy with its second video")
        victim = sorted(midway_through_a_later_video() or {""})[0]
        if not victim:
            continue
        pid = int(victim.rsplit("-", 1)[1])
        os.kill(pid, signal.SIGSTOP)
        if victim in midway_through_a_later_video():
            os.kill(pid, signal.SIGKILL)
            break
        os.kill(pid, signal.SIGCONT)
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr
    assert re.search(rf"worker {victim} exited \(status -9\); v\d handed out again", stderr)
    records = _records(out)
    assert _done(out) == [f"v{i}.mp4" for i in range(8)]  # every video once, none twice
    assert len({r["worker"] for r in records}) == 2  # both workers finished videos
    assert all(read_container(out / f"v{i}.dfc").num_frames == 96 for i in range(8))
    assert not (out / ".dfc-staging").exists()
    assert "2 workers" in stdout


_PEAK = textwrap.dedent(
    """
    import sys
    from dfc.cli import main
    code = main(sys.argv[1:])
    peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print("PEAK", int(peak.split()[1]) * 1024, code)
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_memory_does_not_grow_with_the_length_of_the_video(weights, tmp_path):
    """A 400-frame 320x240 video is 92 MB of decoded frames; compressing it peaks no higher than a
    64-frame one, which fills one batch of four 16-frame clips (each in its own fresh process, peak
    resident memory from the kernel)."""
    make_test_video(tmp_path / "short.mp4", 64, 320, 240)
    make_test_video(tmp_path / "long.mp4", 400, 320, 240)
    peaks = {}
    for name in ("short", "long"):
        command = [
            sys.executable,
            "-c",
            _PEAK,
            "compress",
            tmp_path / f"{name}.mp4",
            tmp_path / f"{name}.dfc",
        ]
        command += ["--weights", weights, "--clip-frames", 16, "--quiet"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        result = subprocess.run(list(map(str, command)), env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        peak, code = result.stdout.split("PEAK")[-1].split()
        assert code == "0"
        peaks[name] = int(peak)
    assert read_container(tmp_path / "long.dfc").num_frames == 400
    assert peaks["long"] - peaks["short"] < 20e6, peaks  # the whole video decoded would add 78 MB


@pytest.mark.slow
def test_the_same_job_runs_under_torchrun_with_rank_0_coordinating(weights, tmp_path):
    import socket

    folder = _many(4, 32, tmp_path / "videos")
    out = tmp_path / "out"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-addr", "127.0.0.1", "--master-port", port, "-m", "dfc.cli", "compress", folder, out]
    command += ["--weights", weights, "--clip-frames", 16, "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(list(map(str, command)), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert _done(out) == [f"v{i}.mp4" for i in range(4)]
    assert "done     4 now: 128 frames" in result.stdout and "2 workers" in result.stdout
