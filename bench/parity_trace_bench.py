"""Peak memory, time and trace size of a published-size parity run saved as traces (`--side both`).

    python -m bench.parity_trace_bench [--nice 10] [--out DIR]   # heavy (minutes of CPU): not in `make bench`

Runs, in one fresh child process, the committed CPU run at the published VAE size (docs/parity/
published-vae-bf16-cpu: bf16, one clip of 3 frames, both flax-era numerics, carried and isolated) with
`--side both --save-trace`: the JAX side into a trace, then the torch side, then the report judged from the
traces. Peak memory is the child's own peak resident set (`VmHWM`, from `getrusage`); the trace size is
what the manifests count (each array once, bf16 runs in bf16). The in-process figure beside it is the
committed one (docs/PARITY.md): running that too would take another 16 GB and 9 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = [
    "parity", "--model", "vae", "--config", "published", "--precision", "bf16",
    "--cases", "vae.encode,vae.decode,vae.compress.topk", "--side", "both",
]  # fmt: skip
IN_PROCESS = {"peak_rss_gb": 16, "wall_min": 9}  # docs/PARITY.md, "Published sizes"


def measure(out: Path, nice: int = 0) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "dfc.cli",
        *COMMAND,
        "--save-trace",
        out / "traces",
        "--report",
        out / "report",
    ]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    start, before = time.time(), os.times()
    done = subprocess.run(list(map(str, command)), env=env, cwd=REPO, capture_output=True, text=True)
    after = os.times()
    if done.returncode not in (0, 1):
        raise SystemExit(f"the run failed:\n{done.stderr[-2000:]}")
    sizes = {
        side: json.loads((out / "traces" / side / "manifest.json").read_text())["bytes"]
        for side in ("jax", "torch")
    }
    return {
        "verdict": done.stdout.strip().splitlines()[-2],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "wall_s": time.time() - start,
        "cpu_s": (after.children_user - before.children_user)
        + (after.children_system - before.children_system),
        "trace_bytes": sizes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="where traces and report go (default: a temp dir)"
    )
    parser.add_argument("--nice", type=int, default=0, help="run the child at this niceness")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="parity-trace-bench-"))
    figures = measure(out, args.nice)
    print(json.dumps({**figures, "in_process": IN_PROCESS, "out": str(out)}, indent=2))


if __name__ == "__main__":
    main()
