"""Many-video throughput: `dfc compress FOLDER OUT --workers N` for N = 1 and 2, in fresh processes.

A folder of ffmpeg-encoded clips made here, a random-weight VAE of `--preset`; each run starts from an
empty output folder. Wall time counts everything a user waits for (interpreter start, imports, each
worker's weight loading, reading, encoding, writing, the ledger); the "in the run" column is the
coordinator's own count from its first ledger line to its last video.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cli_bench import make_clip
from bench.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- batch-bench:start -->", "<!-- batch-bench:end -->"


def _weights(folder: Path, preset: str) -> Path:
    import torch
    from safetensors.torch import save_file

    import torch_impl
    from common.config import PRESETS

    config = PRESETS[preset]
    torch.manual_seed(0)
    model = torch_impl.VideoVAE(config)
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    return folder


def _run(videos: Path, out: Path, weights: Path, workers: int, clip_frames: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "dfc.cli", "compress", str(videos), str(out), "--weights", str(weights)]
    command += ["--workers", str(workers), "--clip-frames", str(clip_frames), "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"dfc compress failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    done = re.search(r"^done +\d+ now: ([\d,]+) frames in ([\d.]+) s", proc.stdout, re.M)
    return {"wall_s": wall, "frames": int(done.group(1).replace(",", "")), "run_s": float(done.group(2))}


def measure(preset: str, videos: int, frames: int, size: int, clip_frames: int, runs: int) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="dfc-batch-bench-"))
    try:
        weights = _weights(scratch / "vae", preset)
        folder = scratch / "videos"
        folder.mkdir()
        for index in range(videos):
            make_clip(folder / f"clip{index:02d}.mp4", frames, size)
        rows = []
        for workers in (1, 2):
            results = [_run(folder, scratch / "out", weights, workers, clip_frames) for _ in range(runs)]
            wall = statistics.median(r["wall_s"] for r in results)
            run = statistics.median(r["run_s"] for r in results)
            total = results[0]["frames"]
            rows.append(
                {
                    "workers": workers,
                    "frames": total,
                    "wall_s": wall,
                    "run_s": run,
                    "frames_per_s_wall": total / wall,
                    "frames_per_s_run": total / run,
                    "walls": [r["wall_s"] for r in results],
                }
            )
        return {
            "preset": preset,
            "videos": videos,
            "frames": frames,
            "size": size,
            "clip_frames": clip_frames,
            "runs": runs,
            "rows": rows,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def render(result: dict, command: str, machine: str, load: str) -> str:
    rows = result["rows"]
    lines = [
        START,
        "## Many videos: `dfc compress FOLDER OUT --workers N`",
        "",
        f"Command: `{command}` (`bench/batch_bench.py`). {result['videos']} H.264 clips of "
        f"{result['frames']} frames at {result['size']}x{result['size']}, "
        f"random-weight `{result['preset']}`, fp32, `--clip-frames {result['clip_frames']}`; "
        f"median of {result['runs']} runs. Machine: "
        f"{machine}, {os.cpu_count()} cores; load average at the start: {load} (a shared machine: other "
        "work ran beside this, so the figures are noisy).",
        "",
        "| workers | threads each | frames | wall (fresh process) | frames/s (wall) | in the run | "
        "frames/s (run) | speed-up (run) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        threads = max(1, (os.cpu_count() or 1) // r["workers"])
        lines.append(
            f"| {r['workers']} | {threads} | {r['frames']:,} | {r['wall_s']:.1f} s | "
            f"{r['frames_per_s_wall']:.1f} | {r['run_s']:.1f} s | {r['frames_per_s_run']:.1f} | "
            f"{rows[0]['run_s'] / r['run_s']:.2f}x |"
        )
    lines += [
        "",
        "Two workers on two cores split the same two cores (one thread each instead of two), so the gain is "
        "what one process leaves idle: video decoding in ffmpeg, Python between model calls, writing, "
        "and the worker start-up that the second worker overlaps. On a machine with more cores, or one "
        "GPU per worker, each worker brings its own compute.",
    ]
    if float(load.split(",")[0]) > (os.cpu_count() or 1):
        lines += [
            "",
            "This run's load average was above the core count: other processes competed for the cores, "
            "and two worker processes win a larger share of a contended machine than one, so the "
            "speed-up above overstates what an idle machine gives.",
        ]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vae-small")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--clip-frames", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=REPO / "bench.json")
    args = parser.parse_args(argv)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    result = measure(args.preset, args.videos, args.frames, args.size, args.clip_frames, args.runs)
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m bench.batch_bench" + (f" {' '.join(argv)}" if argv else "")
    from bench.report import write_docs

    write_docs(render(result, command, cpu_model(), load), args.docs, START, END)
    full = json.loads(args.json.read_text(encoding="utf-8")) if args.json.is_file() else {}
    full["batch"] = result | {"machine": cpu_model(), "load_average": load}
    args.json.write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
