"""Hostile and careless input through the command line, as a user types it (issue 12): a few
representative cases per principle (the many variants are in test_hostile_readers.py), the issue's
reproductions 1-9, children's memory bounded by RLIMIT_DATA and judged by VmHWM, and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from cli_helpers import REPO, dfc, measured_child, one_line_error, save_weights
from hostile_files import damaged_safetensors, reseal, tiny_video, write_weights_folder
from videos import make_test_video

DATA_LIMIT = 3 * 2**30  # RLIMIT_DATA of the children: far above torch's import, far below a runaway
REFUSAL_BUDGET = 500 * 2**20  # a refusal's own peak memory beyond the imports


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from dfc.container import write_container
    from torch_impl import weights_identity

    root = tmp_path_factory.mktemp("hostile")
    weights = save_weights(root / "vae", "vae-tiny")
    identity = weights_identity(weights)
    small = root / "small.dfc"
    write_container(small, tiny_video(identity))
    recorded = tiny_video(identity)
    recorded.extra = {"weights_source": str(weights)}
    write_container(root / "recorded.dfc", recorded)
    return {
        "root": root,
        "weights": weights,
        "identity": identity,
        "dfc": small,
        "recorded": root / "recorded.dfc",
        "video": make_test_video(root / "small.mp4", 8, 40, 30),
    }


# --------------------------------------------------------- never replace what the user did not ask to


def test_decompress_into_a_file_named_with_a_trailing_slash_leaves_the_file_alone(files, tmp_path):
    """Reproduction 1: `decompress small.dfc victim.mp4/` used to replace victim.mp4."""
    victim = tmp_path / "victim.mp4"
    victim.write_bytes(files["video"].read_bytes())
    result = dfc("decompress", files["dfc"], f"{victim}/", "--weights", files["weights"])
    assert "refusing to replace it" in one_line_error(result, "decompress")
    assert victim.read_bytes() == files["video"].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.mp4"]


def test_compress_onto_its_own_input_is_refused_even_with_force(files, tmp_path):
    """Reproduction 6: `compress same.mp4 same.mp4 --force` used to replace the video; also via a link."""
    same = tmp_path / "same.mp4"
    same.write_bytes(files["video"].read_bytes())
    (tmp_path / "link.dfc").symlink_to(same)
    result = dfc("compress", same, tmp_path / "link.dfc", "--force", "--weights", files["weights"])
    assert "--force never replaces an input" in one_line_error(result, "compress")
    assert same.read_bytes() == files["video"].read_bytes()


# --------------------------------------------------------------- every error one line, on every path


def test_a_damaged_weights_file_is_one_line_in_compress_and_decompress(files, tmp_path):
    """Reproduction 2: an empty model.safetensors beside a good config.json used to be a traceback."""
    config = json.loads((files["weights"] / "config.json").read_text())
    broken = write_weights_folder(tmp_path / "z", damaged_safetensors()["empty file"], config)
    line = one_line_error(
        dfc("compress", files["video"], tmp_path / "o.dfc", "--weights", broken), "compress"
    )
    assert "model.safetensors" in line and "too short" in line
    result = dfc("decompress", files["dfc"], tmp_path / "o.mp4", "--weights", broken)
    assert "model.safetensors" in one_line_error(result, "decompress")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z"]


def test_a_config_json_asking_for_a_billion_layers_is_refused_at_once(files, tmp_path):
    """Reproduction 3: `encoder_depth` 1e9 used to hang while memory grew."""
    config = {**json.loads((files["weights"] / "config.json").read_text()), "encoder_depth": 10**9}
    folder = write_weights_folder(
        tmp_path / "w", (files["weights"] / "model.safetensors").read_bytes(), config
    )
    result = dfc("compress", files["video"], tmp_path / "o.dfc", "--weights", folder, timeout=120)
    assert "encoder_depth must be between 0 and 1024" in one_line_error(result, "compress")


def _read_only(folder: Path) -> tuple[str, ...]:
    """A wrapper command under which `folder` is read-only for the dfc it runs. For a user other than root
    the folder's mode does it; root writes through modes, so for root a read-only file system is mounted on
    the folder in a mount namespace of that one process (nothing outside it sees the mount)."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return ()
    script = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
    wrapper = ("unshare", "--mount", "sh", "-c", script, str(folder))
    probe = subprocess.run([*wrapper, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"root without mount namespaces, so no read-only folder: {probe.stderr.strip()}")
    return wrapper


def test_outputs_in_a_read_only_folder_are_one_line_naming_what_could_not_be_written(files, tmp_path):
    locked = tmp_path / "locked"
    wrapper = _read_only(locked)
    runs = {
        locked: ("evaluate", files["video"], "--weights", files["weights"], "--out", locked),
        locked / "report": (
            "evaluate",
            files["video"],
            "--weights",
            files["weights"],
            "--out",
            locked / "report",
        ),
        locked / "o.dfc": ("compress", files["video"], locked / "o.dfc", "--weights", files["weights"]),
    }
    for named, args in runs.items():  # refused before any video is read or model loaded
        line = one_line_error(dfc(*args, wrapper=wrapper), args[0])
        assert f"{named}: cannot write in {locked} (" in line.replace("--out ", ""), line
        assert "Read-only file system" in line or "Permission denied" in line, line
    assert not any(locked.iterdir())


def test_bad_options_are_one_line(files, tmp_path):
    """Reproduction 8 (the option half) and --clip-frames 0; 300-character names are one line too."""
    result = dfc("compress", files["video"], tmp_path / "o.dfc", "--clip-frames", 0, "--mode", "bernoulli")
    assert "--clip-frames must be at least 1, got 0" in one_line_error(result, "compress")
    result = dfc(
        "compress", files["video"], tmp_path / ("n" * 300 + ".dfc"), "--mode", "bernoulli", "--seed", -1
    )
    line = one_line_error(result, "compress")
    assert "--seed must be" in line or "allows 255" in line
    from argparse import Namespace

    from dfc.commands.compress import _check_options, _check_output
    from dfc.errors import UserError

    base = dict(
        mode="bernoulli", keep=None, keep_rate=None, batch=4, clip_frames=None, force=False, weights=None
    )
    with pytest.raises(UserError, match="--seed must be"):
        _check_options(Namespace(**base, seed=-1))
    with pytest.raises(UserError, match="allows 255"):
        _check_output(Namespace(**base, input=str(files["video"]), output=str(tmp_path / ("n" * 300))))


# ------------------------------------------------------------------------ paths stay where they belong


def test_decompress_never_opens_weights_at_a_path_written_in_the_file(files, tmp_path, monkeypatch):
    """The path inside a .dfc is a hint in the message; a record made by the user's own compress (in
    the cache folder) or --weights is what decompress opens."""
    cache = tmp_path / "cache"
    result = dfc("decompress", files["recorded"], tmp_path / "a.mp4", DFC_CACHE_DIR=str(cache))
    line = one_line_error(result, "decompress")
    assert "no VAE weights" in line and f"made with the weights at {files['weights']}" in line
    assert not (tmp_path / "a.mp4").exists()

    monkeypatch.setenv("DFC_CACHE_DIR", str(cache))
    from dfc.weights_record import remember

    remember(files["identity"], str(files["weights"]))  # what the user's own `dfc compress` records
    result = dfc("decompress", files["recorded"], tmp_path / "b.mp4", "--quiet", DFC_CACHE_DIR=str(cache))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b.mp4").is_file()


# --------------------------------------------------- bounded memory: children limited and measured


def _child(body: str, limit: int = DATA_LIMIT, timeout: float = 240) -> dict:
    return measured_child(body, limit, timeout)


def test_refusing_devices_junk_and_declared_sizes_stays_within_its_memory_budget(files, tmp_path):
    """Reproduction 4: /dev/zero (used to grow to 24 GB), 6 GB of junk (6.5 GB), a 16 KB .dfc declaring
    a 40000x40000 source (89 GiB), a safetensors declaring 10^12 elements: each refused in one line,
    in bounded memory, before any allocation."""
    junk = tmp_path / "junk.dfc"
    with open(junk, "wb") as f:
        f.write(b"\x07" * 4096)
        f.truncate(6 * 2**30)  # sparse: 6 GB to a reader, nothing on the disk
    huge = tmp_path / "huge.dfc"

    def bigger(doc):
        doc["fit"].update(source_width=40000, source_height=40000, width=40000, height=40000)
        doc["video"].update(width=40000, height=40000)

    huge.write_bytes(reseal(files["dfc"].read_bytes(), doc=bigger))
    elements = write_weights_folder(tmp_path / "w", damaged_safetensors()["10^12 elements"], None)
    body = f"""
from dfc.container import read_container, ContainerError
from torch_impl import load_vae, WeightsError
base = hwm()
lines = []
for path in ["/dev/zero", {str(junk)!r}, {str(huge)!r}]:
    try:
        read_container(path)
    except ContainerError as err:
        lines.append(str(err))
try:
    load_vae({str(elements)!r}, config="vae-tiny")
except WeightsError as err:
    lines.append(str(err))
print(json.dumps({{"grew": hwm() - base, "lines": lines}}))
"""
    answer = _child(body)
    assert len(answer["lines"]) == 4 and all("\n" not in line for line in answer["lines"])
    assert "device" in answer["lines"][0]
    assert "no safetensors header" in answer["lines"][1]
    assert "8192" in answer["lines"][2]
    assert "past the end of the data" in answer["lines"][3]
    assert answer["grew"] < REFUSAL_BUDGET, answer


def _header_file(path: Path, body: bytes) -> Path:
    body += b" " * (-len(body) % 8)
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    return path


def test_a_header_of_millions_of_json_values_is_refused_before_it_is_parsed(tmp_path):
    """100 MB of `[0,0,...]` parse into 50 M values (600 MB); a header's values are counted first. The
    costliest header under the count (long strings) still parses within the refusal budget."""
    from common.safetensors_header import MAX_HEADER_VALUES

    size = 100 * 2**20 - 64
    zeros = _header_file(tmp_path / "zeros.dfc", b'{"a":[' + b"0," * (size // 2 - 4) + b"0]}")
    count = MAX_HEADER_VALUES - 8
    text = b'"' + b"x" * (size // count - 3) + b'"'
    strings = _header_file(tmp_path / "strings.dfc", b'{"a":[' + b",".join([text] * count) + b"]}")
    weights = write_weights_folder(tmp_path / "w", zeros.read_bytes(), None)
    body = f"""
from dfc.container import read_container, ContainerError
from torch_impl import load_vae, WeightsError
base = hwm()
lines = []
for path in [{str(zeros)!r}, {str(strings)!r}]:
    try:
        read_container(path)
    except ContainerError as err:
        lines.append(str(err))
try:
    load_vae({str(weights)!r}, config="vae-tiny")
except WeightsError as err:
    lines.append(str(err))
print(json.dumps({{"grew": hwm() - base, "lines": lines}}))
"""
    answer = _child(body)
    assert len(answer["lines"]) == 3 and all("\n" not in line for line in answer["lines"])
    assert f"more than {MAX_HEADER_VALUES:,} JSON values" in answer["lines"][0]
    assert "without dfc metadata" in answer["lines"][1]  # parsed: a header, but not a .dfc's
    assert f"more than {MAX_HEADER_VALUES:,} JSON values" in answer["lines"][2]
    assert answer["grew"] < REFUSAL_BUDGET, answer


def _long_dfc(files, path: Path, clips: int, side=(320, 240)) -> Path:
    from dfc.container import write_container

    write_container(path, tiny_video(files["identity"], clips=clips, clip_frames=16, side=side))
    return path


def test_decompress_memory_does_not_grow_with_the_number_of_frames(files, tmp_path):
    """A .dfc may rightly describe far more video than its size: decompress streams clip by clip, so
    8x the frames (a source-size copy of them would be 200 MB more) costs no more peak memory."""
    peaks = {}
    for clips in (1, 8):
        source = _long_dfc(files, tmp_path / f"{clips}.dfc", clips, side=(960, 720))
        argv = ["decompress", str(source), str(tmp_path / f"{clips}.avi"), "--weights", str(files["weights"])]
        body = f"""
from dfc.cli import main
code = main({argv + ["--quiet"]!r})
print(json.dumps({{"code": code, "peak": hwm()}}))
"""
        answer = _child(body)
        assert answer["code"] == 0
        peaks[clips] = answer["peak"]
    assert peaks[8] - peaks[1] < 40 * 2**20, peaks


# ---------------------------------------------------------------------------------------- SIGTERM


def test_sigterm_cleans_up_like_ctrl_c(files, tmp_path):
    """Reproduction 9: after SIGTERM no temporary output is left and ffmpeg is stopped."""
    source = _long_dfc(files, tmp_path / "long.dfc", 200, side=(64, 48))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "dfc.cli", "decompress", str(source), str(out / "v.mp4")]
    process = subprocess.Popen(
        [*argv, "--weights", str(files["weights"]), "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    children: list[psutil.Process] = []
    while time.monotonic() < deadline and process.poll() is None:
        children = [c for c in psutil.Process(process.pid).children(recursive=True) if "ffmpeg" in c.name()]
        if children and any(out.iterdir()):
            break
        time.sleep(0.05)
    assert children and process.poll() is None, "decompress finished before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and err.strip().splitlines()[-1] == "dfc decompress: terminated", err
    assert list(out.iterdir()) == []
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
