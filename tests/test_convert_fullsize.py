"""Full-size conversions (`make test-slow`): the published keys come out, and memory stays far below the
weights. Reuses the benchmark's checkpoints when `bench/convert_bench.py` has built them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert.safetensors_io import SafetensorsReader

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
MEMORY_BOUND_MB = 600


def _checkpoint(kind: str) -> Path:
    sys.path.insert(0, str(REPO))
    from bench.convert_bench import _ensure_checkpoint

    cache = Path(os.environ.get("DFC_BENCH_CACHE", Path.home() / ".cache" / "dfc" / "bench"))
    cache.mkdir(parents=True, exist_ok=True)
    return _ensure_checkpoint(kind, cache)


@pytest.mark.parametrize(
    "kind, reference", [("vae", "vae_published_torch_keys.json"), ("dit", "dit_published_torch_keys.json")]
)
def test_full_size_conversion_gives_the_published_keys_in_bounded_memory(
    tmp_path, reference_dir, kind, reference
):
    src = _checkpoint(kind)
    dst = tmp_path / "out"
    code = (
        "import sys; from dfc.cli import main; from bench.machine import peak_rss_mb; "
        f"rc = main(['convert', {str(src)!r}, {str(dst)!r}, '--quiet']); "
        "print(peak_rss_mb()); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    peak_mb = float(done.stdout.strip().splitlines()[-1])  # VmHWM: ru_maxrss would count pytest's
    assert peak_mb < MEMORY_BOUND_MB
    expected = {
        t["key"]: tuple(t["shape"]) for t in json.loads((reference_dir / reference).read_text())["tensors"]
    }
    written = {name: t.shape for name, t in SafetensorsReader(dst).tensors.items()}
    assert written == expected
    model_bytes = sum(t.nbytes for t in SafetensorsReader(dst).tensors.values())
    assert peak_mb * 2**20 < model_bytes  # less than the weights themselves
