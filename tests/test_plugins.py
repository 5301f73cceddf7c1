"""Porting a model this repository has never heard of: a plug-in in a file of the user's own.

The test writes a small Flax Linen model, its NNX twin, its torch port, the conversion table and the
parity suite into a temporary `.py` file (tests/plugin_port.py), and drives `dfc` with `FILE.py:NAME`:
the suite passes in fp32 and bf16, a planted GELU mistake is named at the module it is in, and a Linen
model and an NNX model of the same architecture with the same weights give the same report.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tests.plugin_port import source

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "my_port.py").write_text(source())
    (folder / "my_broken_port.py").write_text(source(gelu="none"))  # torch's exact GELU: flax's is tanh
    return folder


def parity(capsys, *args) -> tuple[int, str]:
    from dfc.cli import main

    code = main(["parity", *map(str, args)])
    return code, capsys.readouterr().out


def test_a_users_linen_port_passes_parity_in_fp32_and_bf16_from_its_own_file(plugin, tmp_path, capsys):
    suite = f"{plugin / 'my_port.py'}:SUITE"
    code, out = parity(capsys, "--suite", suite, "--precision", "fp32", "--report", tmp_path / "fp32")
    assert code == 0 and "dfc parity: PASS" in out, out
    code, out = parity(capsys, "--suite", suite, "--precision", "bf16", "--report", tmp_path / "bf16")
    assert code == 0 and "judged against bf16" in out, out
    report = json.loads((tmp_path / "fp32" / "report.json").read_text())
    paths = {row.get("path") for case in report["cases"] for row in case["rows"]}
    assert {"norm", "mlp", "mlp.up", "mlp.down", "head"} <= paths


def test_the_wrong_gelu_in_a_users_port_is_named_at_the_module_it_is_in(plugin, tmp_path, capsys):
    suite = f"{plugin / 'my_broken_port.py'}:SUITE"
    code, out = parity(capsys, "--suite", suite, "--precision", "fp32", "--report", tmp_path)
    assert code == 1 and "first divergent layer: `mlp`" in out, out


def test_a_linen_model_and_its_nnx_twin_give_the_same_report(plugin):
    from parity.environment import pinned
    from parity.runner import Lineup, Settings, run_case
    from parity.suite import load_suite

    def run(name, weights=None, broken=False):
        suite = load_suite(f"{plugin / ('my_broken_port.py' if broken else 'my_port.py')}:{name}")
        lineup = Lineup.build(dict(suite.subjects), Settings(), weights)
        return lineup, run_case(suite.cases[0], lineup)

    with pinned():
        for broken in (False, True):
            linen, linen_results = run("SUITE", broken=broken)
            _, nnx_results = run("NNX_SUITE", linen.weights, broken)
            for a, b in zip(linen_results, nnx_results, strict=True):
                assert [r.key for r in a.rows] == [r.key for r in b.rows]
                assert [r.passed for r in a.rows] == [r.passed for r in b.rows]
                first_a, first_b = a.first_divergent("fp32"), b.first_divergent("fp32")
                assert (first_a and first_a.key) == (first_b and first_b.key)
                assert (first_a is not None) == broken
                for x, y in zip(a.rows, b.rows):
                    assert abs(x.torch.err - y.torch.err) <= 1e-6
                    assert abs(x.torch.rel_max - y.torch.rel_max) <= 1e-6
    assert {r.kind for r in linen_results[0].rows} >= {"Dense", "LinenMLP"}  # it really was Linen


def test_a_suite_that_cannot_be_found_is_one_clear_line(plugin, tmp_path, capsys):
    from dfc.cli import main

    wrong = {f"{plugin / 'my_port.py'}:NOPE": "has no 'NOPE'", "no/such/port.py:SUITE": "no such file"}
    for spec, says in wrong.items():
        assert main(["parity", "--suite", spec, "--report", str(tmp_path)]) != 0
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("dfc parity: error: suite ") and says in line, line


def test_the_parity_cores_import_no_model_package():
    """Every import statement of the cores, lazy ones included: none reaches a model package."""
    forbidden = ("jax_ref", "torch_impl", "parity.suites.")
    for path in sorted((REPO / "parity").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.startswith(forbidden) or n in ("jax_ref", "torch_impl")]
            assert not bad, f"{path.name}:{node.lineno} imports {bad}"
