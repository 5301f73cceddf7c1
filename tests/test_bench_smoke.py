"""Smoke test of the model benchmark harness: `python -m bench.run --quick` writes the expected report.

Checks structure only, never timings (the machine is shared and timings are noise here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_quick_writes_report(tmp_path: Path) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "DFC_BENCH_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "--quick",
        "--out",
        str(out),
        "--cache",
        str(tmp_path / "cache"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    data = json.loads((out / "bench.json").read_text())["model"]
    assert {"command", "presets", "machine", "results", "spec_reference"} <= set(data)
    assert data["presets"] == {"vae": "vae-tiny", "dit": "dit-tiny"}
    assert {"cpu", "cores", "torch", "jax", "torch_threads"} <= set(data["machine"])
    res = data["results"]
    assert {"matmul", "rows", "load", "memory", "cli"} <= set(res)
    for key in ("torch_fp32", "torch_bf16", "jax_fp32", "jax_bf16"):
        assert res["matmul"][key]["gflops"] > 0
    ops = {(r["model"], r["op"], r["precision"]) for r in res["rows"]}
    for precision in ("fp32", "bf16"):
        for op in ("encode", "decode"):
            assert ("vae", op, precision) in ops
        for op in ("block", "step", "generate-100"):
            assert ("dit", op, precision) in ops
    for row in res["rows"]:
        assert row["flop"] > 0
        assert {"median_s", "gflops"} <= set(row["torch"]) and {"median_s", "gflops"} <= set(row["jax"])
        assert row["ratio_torch_over_jax"] > 0
    assert res["load"]["file_bytes"] > 0 and res["load"]["median_s"] > 0
    assert res["memory"]["peak_rss_mb"] >= res["memory"]["rss_after_load_mb"] > 0
    for row in res["cli"]:  # the cold commands contain the model call they are compared with
        assert row["compress_cli_s"] > row["encode_model_s"] > 0 and row["container_bytes"] > 0
        assert row["decompress_cli_s"] > row["decode_model_s"] > 0

    text = (out / "BENCHMARKS.md").read_text()
    assert text.count("<!-- model-bench:start -->") == 1 and text.count("<!-- model-bench:end -->") == 1
    assert "torch/jax" in text and "dfc compress" in text


def test_flop_counts_match_spec() -> None:
    from bench import flops
    from common import PRESETS

    # MODEL_SPEC section 8: a DiT step on 8 latent frames is about 2.1 TFLOP.
    assert 2.0e12 < flops.dit_step(PRESETS["dit-256"], 8)["total"] < 2.2e12
    assert flops.vae_decode(PRESETS["vae-256"], 8)["total"] > flops.vae_encode(PRESETS["vae-256"], 8)["total"]
