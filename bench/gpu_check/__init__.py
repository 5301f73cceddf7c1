"""The CUDA readiness check: parity and benchmarks on a lent GPU in one prepared run (`make gpu-check`).

    python -m bench.gpu_check --device cuda --config published   # on the GPU: every stage, at most ~5 min
    python -m bench.gpu_check --device cpu --config tiny         # the same plumbing on a CPU, in seconds
    python -m bench.gpu_check --only sdpa                        # rerun one stage
    python -m bench.gpu_check --dry-run                          # the device command line, wheels to carry

Stages run in priority order (`STAGES`); each writes its `result.json` and `summary.md` as soon as it
finishes and the whole output folder is packed again into one archive, so a run cut short still returns
what it measured. One file per stage: `preflight`, `parity_stage`, `sdpa`, `discrete`, `speed`.
"""

STAGES = ("preflight", "parity", "sdpa", "discrete", "bench")
