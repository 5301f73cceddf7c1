"""Parity across processes: each side saves a trace where it runs, and the traces are judged elsewhere.

The JAX side and the torch side of the tiny VAE and DiT run as two separate `dfc parity --side ...
--save-trace` processes; their traces, compared in this process, give the in-process run's verdict, first
divergent layer and metrics, and so does a torch trace with a planted mistake compared by another
`dfc parity compare` process. Traces of other weights or other inputs are refused in one line.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import ml_dtypes
import pytest

from common import PRESETS, NormNumerics, Precision
from dfc.commands.parity_trace import PLAN_KEYS
from parity import report, tolerance
from parity.environment import pinned
from parity.results import RunResult
from parity.runner import Lineup, Settings, run_case
from parity.suites.vae_dit import cases as C
from parity.suites.vae_dit.mistakes import catalogue
from parity.suites.vae_dit.subjects import dit_subject, vae_subject
from parity.trace import Trace
from parity.trace_run import save_jax, save_torch
from tests.cli_helpers import dfc, one_line_error

CASES = ["vae.encode", "dit.forward"]
ARGS = ["--model", "all", "--precision", "bf16", "--numerics", "flax0.12.1", "--cases", ",".join(CASES)]
SETTINGS = Settings(precision=Precision.BF16, numerics=(NormNumerics.FLAX_0_12_1,))
ALL_CASES = {c.name: c for c in [*C.vae_cases(), *C.dit_cases()]}
# what `dfc parity --model all --precision bf16 --numerics flax0.12.1 --cases ...` keeps in its traces
PLAN = {
    **dict.fromkeys(PLAN_KEYS),
    **{"model": "all", "config": "tiny", "precision": "bf16", "numerics": "flax0.12.1", "mode": "both"},
    **{"device": "cpu", "steps": C.SAMPLER_STEPS, "seed": 0, "sdpa": "math", "cases": ",".join(CASES)},
}


def subjects():
    return {"vae": vae_subject(PRESETS["vae-tiny"]), "dit": dit_subject(PRESETS["dit-tiny"])}


@pytest.fixture(scope="module")
def lineup():
    with pinned():
        yield Lineup.build(subjects(), SETTINGS)


@pytest.fixture(scope="module")
def traces(lineup, tmp_path_factory) -> Path:
    """Both sides' traces, saved in this process (as `dfc parity --side jax` / `--side torch` save them),
    the torch one without the reference's, so that isolated mode must build the torch model again."""
    root = tmp_path_factory.mktemp("traces")
    cases = [ALL_CASES[name] for name in CASES]
    save_jax(subjects(), cases, SETTINGS, root / "jax", weights=lineup.weights, plan=PLAN)
    save_torch(subjects(), cases, SETTINGS, root / "torch", weights=lineup.weights, plan=PLAN)
    return root


def in_process(lineup, names=CASES) -> RunResult:
    with pinned() as environment:
        result = RunResult("in process", {}, environment, tolerance.describe(), lineup.settings.verdict_judge)
        for name in names:
            result.cases += run_case(ALL_CASES[name], lineup)
    return result


def assert_same_findings(data: dict, expected: RunResult) -> None:
    """Verdict, first divergent layer, and every row's metrics (within 1e-6) of a report.json."""
    want = report.to_json(expected)
    assert data["passed"] == want["passed"]
    assert data["first_divergent"] == want["first_divergent"]
    assert [(c["case"], c["mode"]) for c in data["cases"]] == [(c["case"], c["mode"]) for c in want["cases"]]
    for got, exp in zip(data["cases"], want["cases"]):
        assert got["first_divergent"] == exp["first_divergent"] and got["passed"] == exp["passed"]
        assert [r["key"] for r in got["rows"]] == [r["key"] for r in exp["rows"]]
        for row, exp_row in zip(got["rows"], exp["rows"]):
            assert row["passed"] == exp_row["passed"], row["key"]
            assert row["torch"] == pytest.approx(exp_row["torch"], rel=1e-6, abs=1e-12), row["key"]
            for judge, metrics in exp_row["jax"].items():
                assert row["jax"][judge] == pytest.approx(metrics, rel=1e-6, abs=1e-12), row["key"]


def test_traces_saved_in_one_process_are_judged_in_another_as_the_in_process_run_judges(
    traces, lineup, tmp_path
):
    manifest = json.loads((traces / "torch" / "manifest.json").read_text())
    assert manifest["framework"]["versions"]["torch"] and manifest["weights"].keys() == {"vae", "dit"}
    first = manifest["cases"][0]["runs"]["torch bf16"]["calls"][0]
    stored = Trace(traces / "torch").raw(first["outputs"][""]["tensor"])
    assert first["outputs"][""]["dtype"] == "bfloat16" and stored.dtype == ml_dtypes.bfloat16  # stays bf16
    result = dfc("parity", "compare", traces / "jax", traces / "torch", "--report", tmp_path)
    assert result.returncode == 0, result.stderr
    assert " trace " in result.stdout and " MB in 1 shard" in result.stdout
    data = json.loads((tmp_path / "report.json").read_text())
    # no replays in the torch trace: isolated mode ran the torch model, built in that process, on the
    # reference's recorded inputs
    assert {c["mode"] for c in data["cases"]} == {"carried", "isolated"}
    assert_same_findings(data, in_process(lineup))
    assert (tmp_path / "error_vs_depth.png").is_file()


def test_a_planted_mistake_is_named_from_traces_as_in_process(traces, lineup, tmp_path):
    mistake = catalogue()["padding mask ignored"]
    planted = lineup.with_torch({"dit": mistake.planted_copy(lineup.torch["dit"])})
    save_torch(
        subjects(),
        [ALL_CASES["dit.forward"]],
        SETTINGS,
        tmp_path / "torch",
        weights=lineup.weights,
        torch_models=planted.torch,
        reference=Trace(traces / "jax"),
    )
    # the torch trace holds the replays of the reference's inputs: the other process needs no model
    result = dfc("parity", "compare", traces / "jax", tmp_path / "torch", "--report", tmp_path / "report")
    assert result.returncode == 1, result.stderr
    assert f"first divergent layer: `{mistake.target}` in dit.forward (isolated)" in result.stdout
    assert "cases only in" in result.stdout  # vae.encode is in the JAX trace alone
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert_same_findings(data, in_process(planted, ["dit.forward"]))


def test_traces_of_other_weights_or_other_inputs_are_refused_naming_the_fingerprints(
    traces, lineup, tmp_path, capsys
):
    from dfc.cli import main

    jax_trace = Trace(traces / "jax")
    carried = Settings(precision=Precision.BF16, numerics=SETTINGS.numerics, modes=("carried",), seed=1)
    dit = {"dit": subjects()["dit"]}
    case = [ALL_CASES["dit.forward"]]
    save_torch(dit, case, carried, tmp_path / "weights")  # seed 1: other random weights
    save_torch(
        dit, case, carried, tmp_path / "inputs", weights={"dit": lineup.weights["dit"]}
    )  # other inputs
    expected = {
        "weights": (
            "traces disagree on the weights of dit",
            jax_trace.manifest["weights"]["dit"],
            Trace(tmp_path / "weights").manifest["weights"]["dit"],
        ),
        "inputs": (
            "traces disagree on the inputs of dit.forward",
            jax_trace.cases["dit.forward"]["inputs"]["fingerprint"],
            Trace(tmp_path / "inputs").cases["dit.forward"]["inputs"]["fingerprint"],
        ),
    }
    for made, (what, theirs, ours) in expected.items():
        capsys.readouterr()
        code = main(
            ["parity", "compare", str(traces / "jax"), str(tmp_path / made), "--report", str(tmp_path)]
        )
        out, err = capsys.readouterr()
        line = one_line_error(subprocess.CompletedProcess([], code, out, err), "parity")
        assert what in line and theirs in line and ours in line and theirs != ours
    assert not (tmp_path / "report.md").exists()


def test_dfc_parity_side_both_saves_both_traces_holding_the_layers_asked_for_and_reports(tmp_path):
    args = ["--model", "dit", "--precision", "fp32", "--cases", "dit.forward", "--mode", "isolated"]
    result = dfc(
        "parity",
        *args,
        "--save-trace",
        tmp_path / "t",
        "--trace-layers",
        "layers.0.*",
        "--report",
        tmp_path / "r",
    )
    assert result.returncode == 0, result.stderr
    assert f"jax trace in {tmp_path / 't' / 'jax'}: " in result.stdout and "torch trace in" in result.stdout
    assert "PASS" in result.stdout
    paths = {
        row["path"]
        for c in json.loads((tmp_path / "r" / "report.json").read_text())["cases"]
        for row in c["rows"]
    }
    assert (
        paths and all(p.startswith("layers.0.") for p in paths) and "layers.0.TemporalAttention.ROPE" in paths
    )
    again = dfc("parity", *args, "--save-trace", tmp_path / "t")
    assert "already exists" in one_line_error(again, "parity")


@pytest.mark.slow
def test_the_published_vae_in_bf16_runs_side_by_side_into_traces_and_passes(tmp_path):
    """The committed CPU run at the published size (docs/parity/published-vae-bf16-cpu), one side at a
    time through traces; its peak memory and trace size are measured by bench/parity_trace_bench.py."""
    cases = "vae.encode,vae.decode,vae.compress.topk"
    result = dfc(
        "parity", "--model", "vae", "--config", "published", "--precision", "bf16", "--cases", cases,
        "--side", "both", "--save-trace", tmp_path / "traces", "--report", tmp_path / "report", timeout=7200,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "jax trace in" in result.stdout and "torch trace in" in result.stdout
    assert "PASS (6 case runs, judged against flax0.12.1); first divergent layer: none" in result.stdout
