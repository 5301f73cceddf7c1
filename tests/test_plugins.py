"""Porting a model this repository has never heard of: a plug-in in a file of the user's own.

The test writes a small Flax Linen model, its NNX twin, its torch port, the conversion table and the
parity suite into a temporary `.py` file (tests/plugin_port.py), and drives `dfc` with `FILE.py:NAME`:
the suite passes in fp32 and bf16, a planted GELU mistake is named at the module it is in, and a Linen
model and an NNX model of the same architecture with the same weights give the same report.
"""

from __future__ import annotations

import ast
import json
import re
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
    suite = f"{plugin / 'my_port.py'}:SUITE"
    assert main(["parity", "--suite", suite, "--config", "published", "--report", str(tmp_path)]) != 0
    assert "takes no --config" in capsys.readouterr().err


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


def dfc_main(capsys, *args) -> tuple[int, str, str]:
    from dfc.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def linen_checkpoint(plugin, tmp_path_factory):
    """The Linen model's variables, initialised and saved with Orbax as a JAX user does."""
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from common.plugins import load_plugin

    model = load_plugin(f"{plugin / 'my_port.py'}:LinenModel", "model")()
    variables = model.init(jax.random.key(7), jnp.zeros((1, 8)))
    path = tmp_path_factory.mktemp("linen") / "checkpoint_step_5"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, variables)
    checkpointer.wait_until_finished()
    checkpointer.close()
    return path, variables


def test_a_users_linen_checkpoint_inspects_converts_both_ways_and_passes_parity(
    plugin, linen_checkpoint, tmp_path, capsys
):
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from safetensors.torch import load_file

    from common.plugins import load_plugin

    checkpoint, variables = linen_checkpoint
    port = plugin / "my_port.py"
    table = f"{port}:TABLE"
    code, out, _ = dfc_main(capsys, "inspect", checkpoint, "--table", table)
    assert code == 0 and "8 of 8 Flax leaves matched, 0 unmatched" in out, out
    assert re.search(r"^mlp\.up\.kernel +\*\.kernel +linear +-> mlp\.up\.weight +\[8, 16\]$", out, re.M), out
    code, out, _ = dfc_main(capsys, "inspect", checkpoint, "--table", f"{port}:TABLE_WITHOUT_NORMS")
    assert "7 of 8 Flax leaves matched, 1 unmatched" in out, out
    assert re.search(r"^norm\.scale +\[8\]", out, re.M), out

    code, out, _ = dfc_main(capsys, "convert", checkpoint, tmp_path / "torch", "--table", table)
    assert code == 0 and "8 converted" in out and "Flax Linen variables" in out, out
    torch_port = load_plugin(f"{port}:TorchModel", "model")()
    torch_port.load_state_dict(load_file(tmp_path / "torch" / "model.safetensors"), strict=True)

    back = tmp_path / "back"
    code, out, _ = dfc_main(capsys, "convert", tmp_path / "torch", back, "--table", table, "--flax", "linen")
    assert code == 0, out
    checkpointer = ocp.StandardCheckpointer()
    restored = checkpointer.restore(back)
    checkpointer.close()
    same = jax.tree_util.tree_map(lambda a, b: np.array_equal(a, np.asarray(b)), variables, restored)
    assert jax.tree_util.tree_all(same)

    pair = [
        "--orbax",
        checkpoint,
        "--weights",
        tmp_path / "torch",
        "--precision",
        "fp32",
        "--mode",
        "isolated",
    ]
    code, out, _ = dfc_main(capsys, "parity", "--suite", f"{port}:SUITE", *pair, "--report", tmp_path / "ok")
    assert code == 0 and "PASS" in out, out
    broken = f"{plugin / 'my_broken_port.py'}:SUITE"
    code, out, _ = dfc_main(capsys, "parity", "--suite", broken, *pair, "--report", tmp_path / "bad")
    assert code == 1 and "first divergent layer: `mlp`" in out, out


def test_a_table_that_misses_a_leaf_is_refused_naming_it(plugin, linen_checkpoint, tmp_path, capsys):
    checkpoint, _ = linen_checkpoint
    partial = f"{plugin / 'my_port.py'}:TABLE_WITHOUT_NORMS"
    code, _, err = dfc_main(capsys, "convert", checkpoint, tmp_path / "out", "--table", partial)
    assert code != 0 and err.startswith("dfc convert: error: norm.scale: no rule of the tiny-mlp table"), err
    assert not (tmp_path / "out").exists()


def test_an_nnx_state_and_linen_variables_of_one_architecture_convert_to_the_same_torch_weights(
    plugin, tmp_path, capsys
):
    """In memory (`convert.trees`) and through Orbax both ways: one table converts both kinds of model."""
    import numpy as np
    import orbax.checkpoint as ocp
    from flax import nnx

    from common.plugins import load_plugin
    from common.tables import load_table
    from convert.safetensors_io import SafetensorsReader
    from convert.trees import flax_leaves, linen_tree, to_linen, to_nnx, to_torch

    port = plugin / "my_port.py"
    table = load_table(f"{port}:TABLE")
    NnxModel = load_plugin(f"{port}:NnxModel", "model")
    nnx_model = NnxModel()
    weights = flax_leaves(nnx_model)
    variables = linen_tree(weights)  # the NNX model's weights as Linen variables
    from_nnx, _ = to_torch(table, nnx.state(nnx_model))
    from_linen, _ = to_torch(table, variables)
    assert from_nnx.keys() == from_linen.keys()
    assert all(np.array_equal(from_nnx[k], from_linen[k]) for k in from_nnx)
    assert from_nnx["mlp.up.weight"].shape == (16, 8)  # (out, in)
    assert all(np.array_equal(a, flax_leaves(to_linen(table, from_linen))[k]) for k, a in weights.items())
    other = NnxModel(rngs=nnx.Rngs(1))
    state = nnx.state(other)
    nnx.replace_by_pure_dict(state, to_nnx(table, from_nnx))
    nnx.update(other, state)
    assert all(np.array_equal(a, flax_leaves(other)[k]) for k, a in weights.items())

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "nnx", nnx.state(nnx_model))  # an NNX user's checkpoint
    checkpointer.wait_until_finished()
    spec = f"{port}:TABLE"
    code, out, _ = dfc_main(capsys, "convert", tmp_path / "nnx", tmp_path / "torch", "--table", spec)
    assert code == 0, out
    reader = SafetensorsReader(tmp_path / "torch")
    assert all(np.array_equal(reader.tensor(k), from_nnx[k]) for k in from_nnx) and len(reader.tensors) == 8
    reader.close()
    code, out, _ = dfc_main(capsys, "convert", tmp_path / "torch", tmp_path / "back", "--table", spec)
    assert code == 0, out
    restored = checkpointer.restore(tmp_path / "back", {"model": nnx.state(NnxModel(rngs=nnx.Rngs(2)))})
    checkpointer.close()
    nnx.update(other := NnxModel(rngs=nnx.Rngs(3)), restored["model"])
    assert all(np.array_equal(a, flax_leaves(other)[k]) for k, a in weights.items())
