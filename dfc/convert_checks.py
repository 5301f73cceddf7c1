"""The checks `dfc convert` composes around the converter: two packages that `convert` may not import.

- shapes: `torch_impl`'s state-dict keys and shapes for a configuration, from a model built on the meta
  device (nothing allocated). The pipeline starts it as soon as the configuration is known; it imports
  torch (~200 MB, about a second) in a child process (`python -m dfc.convert_child`) while the parent
  converts, and is cached per configuration, torch version and model source.
- forward (`--verify-forward`): `jax_ref` runs the source's weights and `torch_impl` the converted ones
  on a small seeded input, in a child process, so that the converter's memory bound holds.

`convert(...)` here is `convert.pipeline.convert` with these checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from convert.checks import Answered, Checks
from convert.options import Options, Report, quiet
from dfc.cache import cache_dir

_REPO = Path(__file__).resolve().parents[1]
_CHILD = "dfc.convert_child"


class ChildCheck:
    """A check running in a child process; `result()` waits for its JSON answer."""

    def __init__(self, argv: list[str], timeout: float):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p)
        env.setdefault("JAX_PLATFORMS", "cpu")
        self.timeout = timeout
        self._process = subprocess.Popen(
            [sys.executable, "-m", _CHILD, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=_REPO,
        )

    def result(self) -> dict:
        try:
            out, err = self._process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            return {"ok": False, "error": f"no answer within {self.timeout:.0f} s"}
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if self._process.returncode != 0 or not lines:
            tail = (err.strip().splitlines() or [f"exited with status {self._process.returncode}"])[-1]
            return {"ok": False, "error": tail}
        return json.loads(lines[-1])

    def cancel(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.communicate()


def start_shape_check(config) -> ChildCheck | Answered:
    """torch_impl's keys and shapes for `config`: from the cache, or computed by a child process.

    The answer is a pure function of the configuration, the torch version and the source of torch_impl
    and common (the model's code), so it is cached under a hash of all of them; any change to that
    code is a new key. Computing it costs a torch import and a meta-device build (seconds of CPU, more
    than the whole conversion of the published VAE).
    """
    cache = shape_cache_file(config)
    if cache is not None and cache.is_file():
        try:
            answer = json.loads(cache.read_text(encoding="utf-8"))
            answer["source"] = f"cached for this torch_impl source ({cache.stem[:12]})"
            return Answered(answer)
        except (OSError, ValueError):
            pass
    argv = ["shapes", json.dumps(config.to_dict())]
    if cache is not None:
        argv += ["--cache", str(cache)]
    return ChildCheck(argv, timeout=600)


def shape_cache_file(config) -> Path | None:
    """Where the shapes of `config` are cached; None when torch_impl or torch is not installed."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    try:
        torch_version = version("torch")
        spec = find_spec("torch_impl")
    except (PackageNotFoundError, ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    digest = hashlib.sha256()
    digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    digest.update(torch_version.encode())
    common = find_spec("common")
    folders = [Path(p) for p in spec.submodule_search_locations]
    folders += [Path(p) for p in (common.submodule_search_locations or [])] if common else []
    for folder in folders:
        for file in sorted(folder.rglob("*.py")):
            digest.update(str(file.relative_to(folder)).encode())
            digest.update(file.read_bytes())
    return cache_dir() / "torch-shapes" / f"{digest.hexdigest()}.json"


def start_forward_check(
    config,
    reference: Path,
    reference_format: str,
    converted: Path,
    converted_format: str,
    round_reference_to: str | None = None,
) -> ChildCheck:
    """`round_reference_to="bfloat16"`: the converted weights were rounded on purpose, so the reference
    runs on the same rounding, and the check still tests the conversion, not the rounding."""
    argv = [
        "forward",
        json.dumps(config.to_dict()),
        "--reference",
        str(reference),
        "--reference-format",
        reference_format,
        "--converted",
        str(converted),
        "--converted-format",
        converted_format,
    ]
    if round_reference_to:
        argv += ["--round-reference-to", round_reference_to]
    return ChildCheck(argv, timeout=3600)


def expected_shapes_here(config) -> dict[str, tuple[int, ...]] | None:
    """In this process, for callers that have torch loaded anyway; None when torch_impl is unavailable."""
    try:
        from torch_impl.loading import expected_state_shapes
    except ImportError:
        return None
    return {k: tuple(v) for k, v in expected_state_shapes(config).items()}


CHECKS = Checks(
    start_shapes=start_shape_check,
    shapes_here=expected_shapes_here,
    start_forward=start_forward_check,
    implementation="torch_impl",
    reference="jax_ref",
)


def convert(src, dst, options: Options | None = None, progress=None, log=quiet) -> Report:
    """`convert.pipeline.convert` with the torch_impl and jax_ref checks."""
    from convert.pipeline import convert as run

    return run(src, dst, options, progress, log, checks=CHECKS)
