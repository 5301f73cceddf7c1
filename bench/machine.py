"""Machine description and the dense matmul peak (torch and jax), for the model benchmark."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program, in MiB.

    `VmHWM` of /proc/self/status, not `ru_maxrss`: Linux carries `ru_maxrss` across `fork` + `exec`, so a
    child started by a large process (the bench itself, after the jax models) reports its parent's size.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def info() -> dict:
    import jax
    import numpy
    import torch

    flags = cpu_flags()
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        memory_gb = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "simd": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma"))),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "jax": jax.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_native_bf16_gemm": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "jax_devices": [str(d) for d in jax.devices()],
        "env_threads": {
            k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS") if k in os.environ
        },
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def timed(
    fn: Callable[[], object],
    target_s: float = 4.0,
    max_runs: int = 7,
    min_runs: int = 2,
    single_if_slow: float | None = None,
) -> dict:
    """Median wall time of `fn` after one warm-up call (which also compiles, for jax).

    The number of timed runs adapts to the cost of one run: about `target_s` seconds in all, at least
    `min_runs` (1 when a single run is over `target_s`) and at most `max_runs`. With `single_if_slow`,
    a warm-up call slower than that many seconds is the only sample (no compile to exclude: torch only).
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if single_if_slow is not None and first > single_if_slow:
        return {"median_s": first, "min_s": first, "runs": 1, "first_call_s": first, "warm_up_only": True}
    times = []
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
    runs = max(min_runs if times[0] < target_s else 1, min(max_runs, int(target_s / max(times[0], 1e-6))))
    for _ in range(runs - 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "runs": len(times),
        "first_call_s": first,
    }


def matmul_peak(
    m: int = 2048,
    k: int = 1024,
    n: int = 4096,
    target_s: float = 3.0,
    device: str = "cpu",
    precisions: tuple[str, ...] = ("fp32", "bf16"),
) -> dict:
    """Achieved GFLOP/s of `(m,k) @ (k,n)`, torch (on `device`) and jitted jax (on its default device),
    median of several runs. On CUDA each timed call waits for the device."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    flop = 2 * m * k * n
    out: dict = {"shape": f"{m}x{k} @ {k}x{n}", "flop": flop}
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((m, k), dtype=np.float32)
    b_np = rng.standard_normal((k, n), dtype=np.float32)
    dtypes = {"fp32": (torch.float32, jnp.float32), "bf16": (torch.bfloat16, jnp.bfloat16)}
    wait = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for name in precisions:
        tdt, jdt = dtypes[name]
        a, b = torch.from_numpy(a_np).to(device, tdt), torch.from_numpy(b_np).to(device, tdt)
        with torch.inference_mode():
            t = timed(
                lambda a=a, b=b: (torch.matmul(a, b), wait()),
                target_s,
                max_runs=15,
                min_runs=3,
                single_if_slow=2.0,
            )
        out[f"torch_{name}"] = {
            **t,
            "gflops": flop / t["median_s"] / 1e9,
            "best_gflops": flop / t["min_s"] / 1e9,
        }
        ja, jb = jnp.asarray(a_np, jdt), jnp.asarray(b_np, jdt)
        mm = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=x.dtype))
        t = timed(
            lambda ja=ja, jb=jb, mm=mm: mm(ja, jb).block_until_ready(), target_s, max_runs=15, min_runs=3
        )
        out[f"jax_{name}"] = {
            **t,
            "gflops": flop / t["median_s"] / 1e9,
            "best_gflops": flop / t["min_s"] / 1e9,
        }
    return out


def peak_gflops(matmul: dict | None, framework: str, dtype: str) -> float | None:
    """The matmul peak a model figure is compared with: same framework; bf16/mixed: best of fp32, bf16."""
    if not matmul:
        return None
    keys = [f"{framework}_fp32"] if dtype == "fp32" else [f"{framework}_fp32", f"{framework}_bf16"]
    # bf16/mixed: the better of the two, since torch_impl multiplies bf16 values in fp32 on CPUs
    # without a native bf16 GEMM (there torch's own bf16 matmul is ~100x slower).
    found = [matmul[k]["gflops"] for k in keys if k in matmul]
    return max(found) if found else None


def median(xs: list[float]) -> float:
    return statistics.median(xs)
