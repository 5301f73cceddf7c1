"""`make gpu-check`: the prepared CUDA readiness run, exercised on a CPU at tiny sizes (no GPU here).

What a user of a lent GPU relies on: every stage runs and leaves its results and one archive; a missing
package is named on one line before anything is computed; `--only` reruns one stage; the dry run gives
a command that fits the device call and the right wheels to carry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bench.gpu_check import STAGES

REPO = Path(__file__).resolve().parents[1]


# Compile time, not arithmetic, is what a tiny-size run on a CPU spends: JAX compiles every eager op
# for each shape and dtype. So these runs share one persistent compilation cache, and XLA skips LLVM's
# optimisation passes (the results are the same bits: XLA's CPU code allows no float reassociation).
FAST_COMPILE = {
    "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("jax-cache")
    return {**FAST_COMPILE, "JAX_COMPILATION_CACHE_DIR": str(folder)}


def gpu_check(*args: object, env_extra: dict | None = None, timeout: float = 600):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # DEVICE=cpu must set it itself
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*(env_extra or {}).pop("PREPEND", []), str(REPO)]))
    env.update(env_extra or {})
    command = [sys.executable, "-m", "bench.gpu_check", *map(str, args)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def stage_results(out: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(out.glob("*/result.json")):
        data = json.loads(path.read_text())
        assert (path.parent / "summary.md").read_text().startswith("#")
        found[data["name"]] = data
    return found


def written(out: Path) -> dict[str, int]:
    """When each stage's result was last written."""
    return {p.parent.name.split("-", 1)[1]: p.stat().st_mtime_ns for p in out.glob("*/result.json")}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, compile_cache):
    root = tmp_path_factory.mktemp("gpu-check")
    proc = gpu_check(
        "--device",
        "cpu",
        "--config",
        "tiny",
        "--out",
        root / "out",
        "--archive-dir",
        root / "back",
        env_extra=compile_cache,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc


def test_cpu_mode_runs_every_stage_and_packs_one_archive(cpu_run):
    root, proc = cpu_run
    results = stage_results(root / "out")
    assert list(results) == list(STAGES)
    assert all(r["status"] == "ran" for r in results.values()), {k: r["verdict"] for k, r in results.items()}
    assert results["preflight"]["devices"]["jax_backend"] == "cpu"

    parity = results["parity"]
    assert [r["precision"] for r in parity["runs"]] == ["bf16", "fp32"]
    for run in parity["runs"]:
        assert run["passed"], run["first_divergent"]
        assert run["sampling"]["steps"] == len(run["sampling"]["per_step"]) >= 2
        assert {c["case"] for c in run["cases"]} >= {"dit-block.factored_attention", "dit.sample.step0"}
        for case in run["cases"]:  # one parity report per case, written when the case finished
            assert (root / "out" / "02-parity" / case["report"]).is_file()
    assert parity["jax_fp32_device_vs_cpu"]["rows"][0]["max_layer_rel"] == 0.0  # cpu against cpu

    sdpa = {(r["backend"], r["case"]): r for r in results["sdpa"]["rows"]}
    assert {b for b, _ in sdpa} == {"math", "flash", "efficient", "cudnn"}
    assert sdpa[("math", "dit-block.factored_attention")]["status"] == "ok"
    unavailable = [r for r in sdpa.values() if r["status"] == "n/a"]
    assert unavailable and all(r["reason"] for r in unavailable)  # torch's reason (cuDNN on a CPU at least)

    discrete = [r for r in results["discrete"]["rows"]]
    assert {r["output"] for r in discrete} >= {"vae kept frames (threshold)", "dit frame positions"}
    seeds = results["preflight"]["plan"]["seeds"]  # 64 on a GPU; the CPU run's plumbing takes fewer
    assert seeds >= 2 and all(r["seeds"] == seeds and r["fp32_passed"] for r in discrete)
    summary = (root / "out" / "04-discrete" / "summary.md").read_text()
    assert f"{seeds} seeds, not the 64 a GPU run uses" in summary

    legs = {(r["op"], r["leg"]) for r in results["bench"]["rows"]}
    assert ("dit step", "torch eager") in legs and ("dit step", "jax jit") in legs
    assert ("vae decode", "jax jit") in legs
    assert not any("compile" in leg or "graphs" in leg for _, leg in legs)  # no compile legs on a CPU

    with tarfile.open(root / "back" / "gpu-check.tar.gz") as tar:
        names = set(tar.getnames())
    for stage_dir in (root / "out").glob("0*"):
        assert f"out/{stage_dir.name}/result.json" in names
    assert "out/summary.md" in names
    assert (root / "back" / "gpu-check-summary.md").read_text().count("| ran |") == len(STAGES)


def test_a_gpu_run_keeps_the_issues_sizes_and_only_a_cpu_run_takes_fewer():
    from bench.gpu_check.plan import make_plan

    for config in ("published", "tiny"):
        gpu = make_plan("cuda", config)
        assert gpu.seeds == 64 and gpu.discrete_frames is None and gpu.compile_legs
        assert gpu.parity_cases is None and gpu.sdpa_precisions == ("bf16", "fp32")
        assert gpu.bench_vae == ("encode", "decode")
    assert make_plan("cuda", "published").steps == make_plan("cuda", "published").discrete_steps == 100
    cpu = make_plan("cpu", "tiny")
    assert (cpu.seeds, cpu.discrete_frames) == (cpu.batch, cpu.frames) and not cpu.compile_legs


def test_only_reruns_one_stage_and_keeps_the_others(cpu_run, compile_cache):
    root, _ = cpu_run
    before = written(root / "out")
    proc = gpu_check(
        "--device",
        "cpu",
        "--only",
        "sdpa",
        "--out",
        root / "out",
        "--archive-dir",
        root / "back",
        env_extra=compile_cache,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = written(root / "out")
    changed = {name for name in STAGES if after[name] != before[name]}
    assert changed == {"preflight", "sdpa"}


def test_a_missing_package_is_named_on_one_line_before_anything_runs(tmp_path):
    shadow = tmp_path / "shadow" / "einops"  # einops, as if it were not installed
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'einops'\", name='einops')\n"
    )
    proc = gpu_check(
        "--device", "cpu", "--out", tmp_path / "out", env_extra={"PREPEND": [str(shadow.parent)]}
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gpu-check: preflight: missing einops: carry as wheels")
    assert "--dry-run --fetch einops" in lines[0]
    assert list(stage_results(tmp_path / "out")) == ["preflight"]  # nothing computed
    assert (tmp_path / "out" / "gpu-check.tar.gz").is_file()


def test_an_unknown_stage_is_one_line():
    proc = gpu_check("--device", "cpu", "--only", "parity,speedy")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "gpu-check: error: --only: unknown stage(s) speedy; stages: " + ", ".join(STAGES)
    )


def test_dry_run_prints_a_command_that_fits_and_carries_nothing():
    proc = gpu_check("--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    command = lines[1]
    assert lines[0] == f"device command ({len(command)} of 2000 characters):"
    assert len(command) <= 2000 and "python3 -m bench.gpu_check --device cuda --config published" in command
    assert '--archive-dir "$OUT"' in command and "pip install" not in command
    assert "carry: []" in proc.stdout and "wheels needed: none" in proc.stdout


def test_wheels_are_what_the_image_lacks_or_holds_at_another_version():
    from bench.gpu_check import carry

    image = carry.read_image_packages()
    assert image["torch"] == "2.11.0" and image["jax"] == "0.11.2" and "imageio-ffmpeg" not in image
    assert carry.wheels_needed(carry.requirements(), image) == []
    fake = {**image, "jax": "0.4.30"}
    del fake["einops"]
    del fake["tqdm"]
    needed = dict(carry.wheels_needed(["einops>=0.7", "jax>=0.5", "tqdm", "flax>=0.10.4"], fake))
    assert needed == {
        "einops>=0.7": "not on the image",
        "jax>=0.5": "the image has 0.4.30",
        "tqdm": "not on the image",
    }
    with_wheels = carry.device_command(wheels=True)
    assert with_wheels.startswith("python3 -m pip install") and "--target /tmp/site .whl/*.whl" in with_wheels
    assert "imageio-ffmpeg" not in " ".join(carry.requirements())


def test_make_gpu_check_needs_no_setup_and_drops_the_cpu_default():
    def dry(*args):
        out = subprocess.run(["make", "-n", "gpu-check", *args], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return " ".join(out.stdout.split())

    cuda = dry()
    assert "pip" not in cuda and "venv" not in cuda.replace(".venv/bin/python", "")
    assert "env -u JAX_PLATFORMS" in cuda and "JAX_PLATFORMS=cpu" not in cuda
    assert "--device cuda --config published" in cuda
    cpu = dry("DEVICE=cpu")
    assert "JAX_PLATFORMS=cpu" in cpu and "--device cpu --config tiny" in cpu


def test_the_trajectory_loop_is_the_samplers_own():
    import jax
    import torch

    import jax_ref
    import torch_impl
    from bench.gpu_check import trajectory
    from common.config import PRESETS
    from common.precision import Precision
    from parity.runner import Lineup, Settings
    from parity.suites.vae_dit.subjects import dit_subject

    lineup = Lineup.build({"dit": dit_subject(PRESETS["dit-tiny"])}, Settings(precision=Precision.FP32))
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, 3, 16, 24), dtype=np.float32)
    mask = np.array([[True, True, True], [True, True, False]])
    states, gaps = trajectory.jax_states(lineup.reference["dit"], noise, mask, 3)
    with jax.disable_jit():
        x, g = jax_ref.sample(lineup.reference["dit"], noise, mask, 3)
    np.testing.assert_array_equal(states[-1], np.asarray(x))
    np.testing.assert_array_equal(gaps[-1], np.asarray(g))
    states, gaps = trajectory.torch_states(lineup.torch["dit"], noise, mask, 3, "cpu")
    x, g = torch_impl.sample(lineup.torch["dit"], torch.from_numpy(noise), torch.from_numpy(mask), 3)
    np.testing.assert_array_equal(states[-1], x.numpy())
    np.testing.assert_array_equal(gaps[-1], g.numpy())
