"""The house stays straight: every import runs down the floors of docs/ARCHITECTURE.md, or sideways
within one package, never up and never between the three peers.

    bench     examples                  (peers)
    dfc
    parity
    jax_ref   torch_impl   convert      (peers: none imports another)
    common                              (imports neither torch nor jax at module level)

Read from the source (an AST walk, nothing imported): `import` and `from ... import` anywhere (lazy ones
inside functions too), `importlib.import_module("...")` and `__import__("...")` with a literal or an
f-string's literal head, and `-m pkg.module` in any string or argument list (a subprocess launch).
`tests` is imported by no package.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = {
    "common": 0,
    "jax_ref": 1,
    "torch_impl": 1,
    "convert": 1,
    "parity": 2,
    "dfc": 3,
    "bench": 4,
    "examples": 4,
}
TEST_MODULES = {"tests"} | {path.stem for path in (REPO / "tests").glob("*.py")}
_DASH_M = re.compile(r"(?:^|\s)-m\s+([A-Za-z_][\w.]*)")


def _literal_head(node: ast.expr, constants: dict[str, str]) -> str | None:
    """The module named by a literal, a module-level string constant (`_CHILD = "pkg.mod"`), or the
    constant start of an f-string (`f"dfc.commands.{x}"`)."""
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value).rstrip(".") or None
    return None


def imports_of(path: Path) -> list[tuple[int, str, str]]:
    """`(line, module, how)` for every module that `path` imports or launches."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = path.relative_to(REPO).parts[0]
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, "import") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = package if node.level else node.module or ""
            found.append((node.lineno, module, "from-import"))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            head = _literal_head(node.args[0], constants)
            if name in ("import_module", "__import__") and head:
                found.append((node.lineno, head, f"{name}()"))
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [(node.lineno, m, "-m string") for m in _DASH_M.findall(node.value)]
        elif isinstance(node, ast.List | ast.Tuple):
            items = node.elts
            for flag, target in zip(items, items[1:]):
                module = _literal_head(target, constants)
                if isinstance(flag, ast.Constant) and flag.value == "-m" and module:
                    found.append((target.lineno, module, "-m argument"))
    return found


def violations() -> list[str]:
    bad = []
    for package, floor in FLOORS.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for line, module, how in imports_of(path):
                target = module.split(".")[0]
                where = f"{path.relative_to(REPO)}:{line} -> {module} ({how})"
                if target in TEST_MODULES:
                    bad.append(f"{where}: nothing imports the tests")
                elif target in FLOORS and target != package:
                    if FLOORS[target] > floor:
                        bad.append(f"{where}: runs up from {package} to {target}")
                    elif FLOORS[target] == floor:
                        bad.append(f"{where}: {package} and {target} are peers")
    return bad


def test_every_import_runs_down_the_floors():
    bad = violations()
    assert not bad, f"{len(bad)} import(s) against the floors:\n" + "\n".join(bad)


def test_common_imports_neither_torch_nor_jax_at_module_level():
    """`common` is importable without either framework; a legacy-file reader may import torch when called."""
    bad = []
    for path in sorted((REPO / "common").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only (a function's import runs when it is called)
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [
                f"{path.relative_to(REPO)}:{node.lineno} -> {name}"
                for name in names
                if name.split(".")[0] in ("torch", "jax", "flax", "orbax")
            ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from dfc.video import read_video\n", "dfc.video (from-import): runs up from torch_impl to dfc"),
        (
            "def f():\n    import convert.tables\n",
            "convert.tables (import): torch_impl and convert are peers",
        ),
        (
            "import importlib\nimportlib.import_module('parity.runner')\n",
            "parity.runner (import_module()): runs up",
        ),
        ("importlib.import_module(f'dfc.commands.{x}')\n", "dfc.commands (import_module()): runs up"),
        (
            "run([sys.executable, '-m', 'jax_ref.init'])\n",
            "jax_ref.init (-m argument): torch_impl and jax_ref",
        ),
        (
            "CHILD = 'convert.run'\nrun([python, '-m', CHILD])\n",
            "convert.run (-m argument): torch_impl and convert",
        ),
        ("cmd = 'python -m bench.run --quick'\n", "bench.run (-m string): runs up from torch_impl to bench"),
        (
            "from tests.checkpoints import write\n",
            "tests.checkpoints (from-import): nothing imports the tests",
        ),
        ("from cli_helpers import dfc\n", "cli_helpers (from-import): nothing imports the tests"),
    ],
    ids=[
        "up",
        "lazy-peer",
        "import_module",
        "f-string",
        "-m arg",
        "-m constant",
        "-m string",
        "tests",
        "tests2",
    ],
)
def test_each_way_of_reaching_a_module_against_the_floors_is_reported(
    tmp_path, monkeypatch, source, expected
):
    """The check itself, on a scratch tree: each form of import is read and named by file:line."""
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "torch_impl").mkdir()
    (tmp_path / "torch_impl" / "example.py").write_text(
        "import numpy\nfrom common.config import VAEConfig\n" + source
    )
    (reported,) = violations()
    assert reported.startswith("torch_impl/example.py:") and expected in reported, reported


def test_no_module_imports_a_private_name_of_another():
    """`from pkg.mod import _helper` couples to what `mod` keeps to itself: make it public, or move it."""
    bad = []
    for package in FLOORS:
        for path in sorted((REPO / package).rglob("*.py")):
            own = ".".join(path.relative_to(REPO).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and not node.level and node.module != own:
                    bad += [
                        f"{path.relative_to(REPO)}:{node.lineno} -> {node.module}.{alias.name}"
                        for alias in node.names
                        if alias.name.startswith("_") and not alias.name.startswith("__")
                    ]
    assert not bad, "\n".join(bad)
