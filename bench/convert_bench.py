"""Peak memory and time of `dfc convert` on the full-size checkpoints, beside reading the model alone.

    python -m bench.convert_bench            # part of `make bench`

Builds (once; kept under the cache folder) the full-size VAE training checkpoint in the flax 0.10 layout
(model, the optimizer's copy of it and two Adam moments: four copies of every weight, random fp32) and the
full-size DiT model-only checkpoint, both written by orbax exactly as the training code writes them. Then,
each in a fresh child process:

- floor: the resident memory right after importing what `dfc convert` imports;
- read: the same reader reading every model array, in the same batches, and nothing else;
- convert: `dfc convert SRC DST` (with its verification), once with an empty torch_impl shape cache (the
  strict check then imports torch in a child of its own) and then with it warm.

Peak memory is the child's own peak resident set (`VmHWM`); the tree column adds its children (the
torch_impl shape check), sampled every 10 ms. Wall time is the whole child process, interpreter start
included; each figure is the median of `--repeat` runs, interleaved (read, convert, write, again), after
one warm-up read, so both sides read from the page cache. Results go to docs/BENCHMARKS.md (between the
convert-bench markers) and to the `convert` key of bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- convert-bench:start -->", "<!-- convert-bench:end -->"
CHECKPOINTS = {
    "vae": {
        "preset": "vae-256",
        "layout": "flax-0.10",
        "title": "VAE training checkpoint (flax 0.10 layout)",
    },
    "dit": {"preset": "dit-256", "layout": "model-only", "title": "DiT checkpoint (model only)"},
}
# Reported by the issue for the original port's converter on the full-size VAE training checkpoint.
ORIGINAL_PORT = {"peak_rss_mb": 7300, "wall_s": 41.0}


# ------------------------------------------------------------------------------------------ children


def _maxrss_mb() -> float:
    from bench.machine import peak_rss_mb

    return peak_rss_mb()


def _cpu_s() -> float:
    """CPU seconds of this process and its children: less disturbed than wall time on a shared machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _child_floor() -> dict:
    import ml_dtypes  # noqa: F401
    import tensorstore  # noqa: F401  (imported by the reader when it opens the checkpoint)

    import dfc.cli  # noqa: F401
    import dfc.commands.convert  # noqa: F401
    from convert import pipeline  # noqa: F401
    from dfc import convert_checks  # noqa: F401

    return {"maxrss_mb": _maxrss_mb()}


def _child_read(src: str, *flags: str) -> dict:
    """Every model array, as `dfc convert` reads them; with `layout`, delivered in PyTorch layout too."""
    import numpy as np

    from common.infer import detect_model_type
    from common.tables import TABLES
    from convert import layout
    from convert.options import DEFAULT_BATCH_BYTES
    from convert.orbax_io import ArrayStore, find_model_subtree, read_tree_paths, resolve_checkpoint
    from convert.safetensors_io import copy_into

    location = resolve_checkpoint(src)
    subtree = find_model_subtree(read_tree_paths(location.step_dir))
    store = ArrayStore(location.step_dir)
    names = sorted(subtree.leaves)
    infos = store.infos([subtree.leaves[n] for n in names])
    kinds = {}
    if "layout" in flags:  # laid out as `dfc convert` does it: `copy_into` into one reusable buffer
        table = TABLES[detect_model_type(names)]
        kinds = {info.key: table.kind_of(n) for n, info in zip(names, infos)}
    buffer = np.empty(0, np.uint8)
    total = 0
    for batch in store.read_batches(infos, DEFAULT_BATCH_BYTES):
        for info, array in batch:
            total += array.nbytes
            if info.key in kinds:
                if buffer.size < array.nbytes:
                    buffer = np.empty(array.nbytes, np.uint8)
                view = layout.to_torch(kinds[info.key], array)
                copy_into(buffer[: array.nbytes].view(array.dtype).reshape(view.shape), view)
    return {"maxrss_mb": _maxrss_mb(), "cpu_s": _cpu_s(), "bytes": total, "arrays": len(infos)}


def _child_convert(src: str, dst: str, *flags: str) -> dict:
    """`flags` without their dashes (`sync`), so that the bench's own parser leaves them alone."""
    from dfc.cli import main

    code = main(["convert", src, dst, "--quiet", "--force", *(f"--{flag}" for flag in flags)])
    if code != 0:
        raise SystemExit(code)
    return {"maxrss_mb": _maxrss_mb(), "cpu_s": _cpu_s()}


def _child_write(dst: str, nbytes: str, *flags: str) -> dict:
    """Write `nbytes` to a fresh safetensors file with `dfc convert`'s writer (32 MB tensors that need no
    layout), nothing read or checked: the floor of any converter that writes the model on this machine.
    With `plain`, without the writer's write-through: every written page stays in the page cache."""
    import numpy as np

    from convert import safetensors_io
    from convert.safetensors_io import StreamingWriter, TensorSpec

    if "plain" in flags:
        safetensors_io._sync_file_range = None

    piece = np.random.default_rng(0).integers(0, 255, 32 << 20, dtype=np.uint8)
    total = int(nbytes)
    sizes = [piece.size] * (total // piece.size) + ([total % piece.size] if total % piece.size else [])
    specs = [TensorSpec(f"t{i}", (size,), np.dtype(np.uint8)) for i, size in enumerate(sizes)]
    writer = StreamingWriter(dst, specs, {"format": "pt"})
    for spec in specs:
        writer.write(spec.name, piece[: spec.shape[0]])
    writer.close()
    return {"maxrss_mb": _maxrss_mb(), "cpu_s": _cpu_s()}


def _child_make(kind: str, path: str) -> dict:
    sys.path.insert(0, str(REPO))
    from common.config import PRESETS
    from jax_ref.checkpoints import random_model, write_training_checkpoint

    spec = CHECKPOINTS[kind]
    model = random_model(PRESETS[spec["preset"]], seed=0)
    write_training_checkpoint(path, model, spec["layout"], step=290000)
    return {"model_bytes": sum(a.nbytes for a in model.values())}


# ------------------------------------------------------------------------------------------ the parent


def _run_child(args: list[str], env: dict | None = None) -> dict:
    """Run `python -m bench.convert_bench --child ...`; wall time, its JSON answer, the tree's peak RSS."""
    import psutil

    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **(env or {})}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.convert_bench", "--child", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=full_env,
    )
    tree_peak = [0]

    def sample() -> None:
        try:
            parent = psutil.Process(process.pid)
            while process.poll() is None:
                rss = parent.memory_info().rss
                for child in parent.children(recursive=True):
                    try:
                        rss += child.memory_info().rss
                    except psutil.Error:
                        pass
                tree_peak[0] = max(tree_peak[0], rss)
                time.sleep(0.01)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed ({process.returncode}): {err.strip()[-2000:]}")
    answer = json.loads(out.strip().splitlines()[-1])
    return {**answer, "wall_s": wall, "tree_peak_mb": tree_peak[0] / 2**20}


def _ensure_checkpoint(kind: str, cache: Path) -> Path:
    spec = CHECKPOINTS[kind]
    path = cache / f"{spec['preset']}-{spec['layout']}"
    marker = path.parent / f"{path.name}.ready.json"
    if marker.is_file() and path.is_dir():
        return path
    shutil.rmtree(path, ignore_errors=True)
    print(f"writing the full-size {kind} checkpoint to {path} (once) ...", file=sys.stderr)
    answer = _run_child(["make", kind, str(path)])
    marker.write_text(
        json.dumps({"model_bytes": answer["model_bytes"], "seconds": round(answer["wall_s"], 1)})
    )
    return path


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _settled() -> None:
    """Let the kernel finish writing back and discarding earlier outputs, so that no run pays for the
    previous one (on this ext4, mounted with `discard`, deleting 2 GB is not free)."""
    os.sync()
    time.sleep(1.0)


def measure(kind: str, cache: Path, repeat: int) -> dict:
    src = _ensure_checkpoint(kind, cache)
    scratch = Path(tempfile.mkdtemp(prefix="dfc-bench-", dir=cache))
    shapes = {"DFC_CACHE_DIR": str(scratch / "cache")}

    def convert(run: str, *flags: str) -> dict:
        dst = scratch / run
        _settled()
        answer = _run_child(["convert", str(src), str(dst), *flags], env=shapes)
        answer["written"] = _du(dst)
        shutil.rmtree(dst)
        return answer

    try:
        floor = _run_child(["floor"])
        first = _run_child(["read", str(src)])  # warms the page cache: every run then reads from memory
        cold = convert("cold")  # the torch_impl shape cache is empty: its child runs
        reads, laid_out, converts, writes, plain_writes = [], [], [], [], []
        # Interleaved, so that every kind of run sees the same machine (this one is shared and noisy).
        for i in range(repeat):
            _settled()
            reads.append(_run_child(["read", str(src)]))
            laid_out.append(_run_child(["read", str(src), "layout"]))
            converts.append(convert(f"run{i}"))
            for runs, flags in ((writes, []), (plain_writes, ["plain"])):
                _settled()
                path = scratch / f"write{i}"
                runs.append(_run_child(["write", str(path), str(first["bytes"]), *flags]))
                path.unlink()
        synced = convert("synced", "sync")
        written = converts[0]["written"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    read_wall = _median(reads, "wall_s")
    return {
        "checkpoint": CHECKPOINTS[kind]["title"],
        "on_disk_bytes": _du(src),
        "model_bytes": reads[0]["bytes"],
        "model_arrays": reads[0]["arrays"],
        "written_bytes": written,
        "floor_rss_mb": floor["maxrss_mb"],
        "read": {
            "wall_s": read_wall,
            "cpu_s": _median(reads, "cpu_s"),
            "peak_rss_mb": max(r["maxrss_mb"] for r in reads),
        },
        "write_alone": {"wall_s": _median(writes, "wall_s"), "cpu_s": _median(writes, "cpu_s")},
        "write_alone_page_cache": {
            "wall_s": _median(plain_writes, "wall_s"),
            "cpu_s": _median(plain_writes, "cpu_s"),
        },
        "read_in_torch_layout": {
            "wall_s": _median(laid_out, "wall_s"),
            "cpu_s": _median(laid_out, "cpu_s"),
            "peak_rss_mb": max(r["maxrss_mb"] for r in laid_out),
        },
        "convert": {
            "wall_s": _median(converts, "wall_s"),
            "cpu_s": _median(converts, "cpu_s"),
            "peak_rss_mb": max(r["maxrss_mb"] for r in converts),
            "tree_peak_rss_mb": max(r["tree_peak_mb"] for r in converts),
        },
        "convert_cold_shape_cache": {
            "wall_s": cold["wall_s"],
            "peak_rss_mb": cold["maxrss_mb"],
            "tree_peak_rss_mb": cold["tree_peak_mb"],
        },
        "convert_sync": {"wall_s": synced["wall_s"], "peak_rss_mb": synced["maxrss_mb"]},
        "ratio_wall": _median(converts, "wall_s") / read_wall,
        "ratio_cpu": _median(converts, "cpu_s") / _median(reads, "cpu_s"),
        "ratio_wall_cold": cold["wall_s"] / read_wall,
        "runs": repeat,
    }


def disk_write_mb_s(folder: Path, size: int = 512 << 20) -> float:
    """Sustained write speed of the disk under `folder`: random bytes, then fsync."""
    data = os.urandom(16 << 20)
    path = folder / f".disk-probe-{os.getpid()}"
    started = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(size // len(data)):
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return size / 2**20 / seconds


def machine(cache: Path) -> dict:
    import psutil

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    from importlib.metadata import PackageNotFoundError, version

    for package in ("numpy", "tensorstore", "orbax-checkpoint", "torch", "safetensors"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "-"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "disk_write_mb_s": round(disk_write_mb_s(cache)),
        **versions,
    }


def _mb(x: float) -> str:
    return f"{x:,.0f} MB"


def render(results: dict, info: dict, command: str) -> str:
    lines = [
        START,
        "## `dfc convert`: peak memory and time on the full-size checkpoints",
        "",
        f"Command: `{command}` (`bench/convert_bench.py`). Machine: {info['cpu']}, {info['cores']} cores, "
        f"{info['memory_gb']} GB RAM, {info['os']}; Python {info['python']}, numpy {info['numpy']}, "
        f"tensorstore {info['tensorstore']}, orbax-checkpoint {info['orbax-checkpoint']}, "
        f"torch {info['torch']}. "
        f"Load average when the run started: {', '.join(map(str, info['load_average_at_start']))} "
        "(the machine is shared with other work, which slows wall times unevenly; every figure is the "
        "median of several runs, and CPU seconds are given beside wall times because they are steadier).",
        "",
        "Each figure is one fresh child process: wall time includes interpreter start and imports; peak "
        "memory "
        "is the process's own peak resident set (`VmHWM`). The page cache is warm for both columns. "
        '"import floor" is the resident memory right after importing what `dfc convert` imports.',
        "",
        "| checkpoint | on disk | model arrays | import floor | read model arrays only | read, laid out for "
        "PyTorch | `dfc convert` (verified) | ratio to read | first run (torch_impl shapes not cached) "
        "| with `--sync` |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        lines.append(
            f"| {r['checkpoint']} | {r['on_disk_bytes'] / 1e9:.2f} GB | {r['model_arrays']} arrays, "
            f"{r['model_bytes'] / 1e6:,.0f} MB | {_mb(r['floor_rss_mb'])} "
            f"| {r['read']['wall_s']:.2f} s ({r['read']['cpu_s']:.1f} s CPU), "
            f"{_mb(r['read']['peak_rss_mb'])} "
            f"| {r['read_in_torch_layout']['wall_s']:.2f} s ({r['read_in_torch_layout']['cpu_s']:.1f} s CPU) "
            f"| {r['convert']['wall_s']:.2f} s ({r['convert']['cpu_s']:.1f} s CPU), "
            f"{_mb(r['convert']['peak_rss_mb'])} "
            f"| {r['ratio_wall']:.2f}x wall, {r['ratio_cpu']:.2f}x CPU "
            f"| {r['convert_cold_shape_cache']['wall_s']:.2f} s ({r['ratio_wall_cold']:.2f}x); "
            f"{_mb(r['convert_cold_shape_cache']['peak_rss_mb'])}, with the torch child "
            f"{_mb(r['convert_cold_shape_cache']['tree_peak_rss_mb'])} "
            f"| {r['convert_sync']['wall_s']:.2f} s |"
        )
    vae = results.get("vae")
    if vae:
        lines += [
            "",
            "The original port's converter on the same VAE checkpoint: "
            f"{ORIGINAL_PORT['peak_rss_mb']:,} MB peak, {ORIGINAL_PORT['wall_s']:.0f} s (from the issue). "
            f"Here: {vae['convert']['peak_rss_mb']:,.0f} MB and {vae['convert']['wall_s']:.1f} s, "
            "with every tensor re-read from the written file and compared "
            "with the source, the RoPE caches checked, and the keys and shapes checked strictly against "
            "torch_impl.",
        ]
    lines += ["", "Where the time goes (medians of the columns above):", ""]
    for r in results.values():
        layout = r["read_in_torch_layout"]["wall_s"] - r["read"]["wall_s"]
        rest = r["convert"]["wall_s"] - r["read_in_torch_layout"]["wall_s"]
        lines.append(
            f"- {r['checkpoint']}: reading {r['read']['wall_s']:.2f} s; laying every kernel out for PyTorch "
            f"(transposes, and flips for the ConvTranspose) +{layout:.2f} s when done after reading on one "
            "thread; writing, re-reading every tensor and comparing it with the source, the RoPE check and "
            f"the header checks, overlapped with reading, +{rest:.2f} s."
        )
    lines += [
        "",
        "Writing alone (the model's byte count into a fresh file with `dfc convert`'s writer, nothing read "
        "or checked), median of the same runs, alternating:",
        "",
        "| checkpoint | written through to the disk (as `dfc convert` writes) | left in the page cache "
        "| ratio |",
        "|---|---|---|---|",
    ]
    for r in results.values():
        through, plain = r["write_alone"], r["write_alone_page_cache"]
        lines.append(
            f"| {r['checkpoint']} | {through['wall_s']:.2f} s ({through['cpu_s']:.1f} s CPU) "
            f"| {plain['wall_s']:.2f} s ({plain['cpu_s']:.1f} s CPU) "
            f"| {plain['wall_s'] / through['wall_s']:.2f}x |"
        )
    lines += [
        "",
        "Nearly all of it is CPU work on two cores: the reader decodes on tensorstore's threads while a "
        "writer thread lays out, writes and verifies the previous batches. The Linear kernels (nearly every "
        "byte of both models) are transposed by `somatcopy` of the OpenBLAS that numpy ships, at about "
        "5 GB/s; numpy's own transposing copy runs at 0.7 GB/s here, and in tiles at 1.4 to 2 GB/s "
        "(the way taken when that OpenBLAS is missing or a tensor holds a NaN). The writer sends the "
        "output to the disk as it goes and drops it from the page cache once it is there and checked "
        "(`sync_file_range`, `POSIX_FADV_DONTNEED`), reusing the same few dozen megabytes of cache: this "
        "machine is a virtual machine that hands free memory back to its host, and every page of new page "
        "cache then costs a host fault, which made writing 2 GB cost 3 to 7 s of CPU when left to the "
        'kernel ("left in the page cache" above). Each run starts after `sync` so that no run pays for '
        "the previous one's writeback.",
        "",
        "`dfc convert` also checks every key and shape against `torch_impl` built on the meta device. That "
        "imports torch (about a second of CPU and 200 MB, in a child process while the conversion runs); its "
        "answer is cached per configuration and torch_impl source, so only the first conversion of a "
        'configuration pays it (the "first run" column). `--sync` also fsyncs the output and its directory '
        "before the rename, so that it survives a power cut; most of it is on the disk already by then "
        f"(this disk writes {info['disk_write_mb_s']} MB/s through the page cache, fsync included).",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_json(results: dict, info: dict, path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data["convert"] = {"machine": info, "results": results}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument(
        "--models", nargs="+", choices=sorted(CHECKPOINTS), default=sorted(CHECKPOINTS, reverse=True)
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("DFC_BENCH_CACHE", Path.home() / ".cache" / "dfc" / "bench")),
        help="where the full-size checkpoints are kept between runs (about 4.5 GB)",
    )
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=REPO / "bench.json")
    args = parser.parse_args(argv)
    if args.child:
        what, *rest = args.child
        child = {
            "floor": _child_floor,
            "read": _child_read,
            "write": _child_write,
            "convert": _child_convert,
            "make": _child_make,
        }[what]
        print(json.dumps(child(*rest)), flush=True)
        return 0
    args.cache.mkdir(parents=True, exist_ok=True)
    info = machine(args.cache)
    results = {}
    for kind in args.models:
        print(f"measuring {kind} ...", file=sys.stderr)
        results[kind] = measure(kind, args.cache, args.repeat)
        print(json.dumps(results[kind], indent=2), file=sys.stderr)
    command = "python -m bench.convert_bench" + (f" --repeat {args.repeat}" if args.repeat != 5 else "")
    from bench.report import write_docs

    write_docs(render(results, info, command), args.docs, START, END)
    write_json(results, info, args.json)
    print(f"wrote {args.docs} and {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
