"""docs/PORTING.md, taken as a porter takes it, on transformers' FlaxGPT2Model and GPT2Model (tiny, random).

The guide's walk runs once, in a folder of its own: its Python blocks in order, its `$ dfc ...` commands
as subprocesses, each command's exit status and every output line the guide shows checked as it goes.
The walk saves an Orbax checkpoint, inspects it with a draft table, converts it with `dfc convert
--table`, loads the result into GPT2Model strictly, runs `dfc parity --suite` in fp32 and bf16 (carried
and isolated), and finds two planted mistakes. The tests below then read what the walk left behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import guide
from tests.cli_helpers import dfc

# found, not imported: collecting this file costs nothing where its tests are not run
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="the GPT-2 example needs the `example` extra"
)

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "PORTING.md"
# For speed only: the guide's commands each compile the same small eager JAX ops; a shared on-disk cache
# compiles them once.
_COMPILATION_CACHE = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


@dataclass
class Walk:
    folder: Path
    cache: str = ""
    namespace: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    commands: list[tuple[guide.Command, object]] = field(default_factory=list)


def _take(step, walk: Walk) -> str | None:
    if isinstance(step, guide.ShownFile):
        return guide.shown_in_file(step, REPO)
    if isinstance(step, guide.WrittenFile):
        path = walk.folder / step.path
        if not path.is_file():
            return f"line {step.line}: the walk wrote no {step.path}"
        missing = guide.missing_output(step, path.read_text())
        return None if missing is None else f"line {step.line}: {step.path} has no line {missing!r}"
    if isinstance(step, guide.Code):
        code = "\n" * (step.line) + step.source  # tracebacks point at the guide's own lines
        try:
            exec(compile(code, str(GUIDE), "exec"), walk.namespace)  # noqa: S102
        except Exception:
            return f"the Python block at line {step.line} failed:\n{traceback.format_exc(limit=-3)}"
        return None
    result = dfc(*step.args, cwd=walk.folder, **_COMPILATION_CACHE, JAX_COMPILATION_CACHE_DIR=walk.cache)
    walk.commands.append((step, result))
    output = result.stdout + result.stderr
    if result.returncode != step.exit_code:
        return f"line {step.line}: `{step.text}` exited {result.returncode}, not {step.exit_code}:\n{output}"
    missing = guide.missing_output(step, output)
    if missing is not None:
        return f"line {step.line}: `{step.text}` did not print {missing!r}; it printed:\n{output}"
    return None


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> Walk:
    """The guide, taken from its first block to its last in a folder where `examples/` is the repository's."""
    folder = tmp_path_factory.mktemp("porting") / "work"
    folder.mkdir()
    (folder / "examples").symlink_to(REPO / "examples")
    taken = Walk(folder, str(folder.parent / "jax-cache"))
    here = Path.cwd()
    os.chdir(folder)
    try:
        for step in guide.steps(GUIDE.read_text()):
            problem = _take(step, taken)
            if problem:
                taken.problems.append(problem)
                break  # later steps build on this one
    finally:
        os.chdir(here)
    return taken


def test_the_porting_guide_runs_as_written(walk):
    assert not walk.problems, walk.problems[0]
    assert len(walk.commands) >= 5, "the guide's commands were not found"


def _report(walk: Walk, name: str) -> dict:
    return json.loads((walk.folder / "reports" / name / "report.json").read_text())


def test_the_converted_safetensors_load_into_GPT2Model_with_strict_checking(walk):
    import torch
    from safetensors.torch import load_file

    from examples.gpt2 import model as M

    assert not walk.problems, walk.problems[0]
    state = load_file(walk.folder / "gpt2-torch" / "model.safetensors")
    model = M.torch_model(M.config("tiny"))
    assert set(state) == set(model.state_dict()), "the converted file holds exactly GPT2Model's keys"
    model.load_state_dict(state, strict=True)
    assert all(t.dtype == torch.float32 for t in state.values())


@pytest.mark.parametrize("name", ["gpt2-fp32", "gpt2-bf16"])
def test_parity_passes_carried_and_isolated_in_fp32_and_bf16(walk, name):
    assert not walk.problems, walk.problems[0]
    report = _report(walk, name)
    runs = {case["mode"]: case for case in report["cases"]}
    assert set(runs) == {"carried", "isolated"}
    assert report["passed"], report["first_divergent"]
    paths = {row.get("path") for case in report["cases"] for row in case["rows"]}
    assert {"wte", "h.1.attn.c_attn", "h.1.mlp.c_proj", "ln_f"} <= paths  # every layer, not the output only


def test_a_square_kernel_left_untransposed_is_named_at_its_layer(walk):
    assert not walk.problems, walk.problems[0]
    report = _report(walk, "gpt2-broken")
    assert not report["passed"]
    assert report["first_divergent"]["layer"] == "h.1.attn.c_proj"


def test_swapped_q_and_k_are_named_at_the_attention_that_swaps_them(walk):
    assert not walk.problems, walk.problems[0]
    assert walk.namespace["swapped"].first_divergent("fp32").path == "h.1.attn"
