"""docs/BENCHMARKS.md section (between the model-bench markers) and the `model` key of bench.json."""

from __future__ import annotations

import json
from pathlib import Path

from bench.machine import peak_gflops

START, END = "<!-- model-bench:start -->", "<!-- model-bench:end -->"

# MODEL_SPEC section 8: the seed's PyTorch port on this project's machine kind (CPU, 2 threads).
SPEC_REFERENCE = {
    "vae encode 8": {"fp32": 2.4, "bf16": 1.05},
    "vae decode 8": {"fp32": 3.9, "bf16": 1.8},
    "dit step 8": {"fp32": 13.3, "bf16": 6.3},
    "matmul_gflops": {"fp32": 164, "bf16": 389},
}


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 120:
        return f"{x / 60:.1f} min"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def _g(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def _mm(entry: dict) -> str:
    text = f"{_g(entry['gflops'])} ({_g(entry['best_gflops'])})"
    return text + (", one run" if entry.get("warm_up_only") else "")


def _pct(gflops: float | None, peak: float | None) -> str:
    if gflops is None or not peak:
        return "-"
    return f"{_g(gflops)} ({100 * gflops / peak:.0f}%)"


def render(data: dict) -> str:
    info, res, cmd = data["machine"], data["results"], data["command"]
    presets = ", ".join(f"`{v}`" for v in data["presets"].values())
    devices = ", ".join(info["jax_devices"])
    load_avg = ", ".join(map(str, info["load_average_at_start"]))
    again = "".join(
        f" Re-measured after it: {', '.join(r['parts'])}, by `{r['command']}` (load average "
        f"{', '.join(map(str, r['load_average']))})."
        for r in data.get("re_measured", [])
    )
    lines = [
        START,
        "## Model speed: torch_impl beside the jitted jax_ref (CPU)",
        "",
        f"Command: `{cmd}` (`bench/run.py`; `make bench` runs it). Configurations: {presets}. "
        f"Every figure below comes from that one run.{again}",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; {info['os']}; Python "
        f"{info['python']}, torch {info['torch']} ({info['torch_threads']} intra-op / "
        f"{info['torch_interop_threads']} inter-op threads; native bf16 GEMM: "
        f"{'yes' if info['torch_native_bf16_gemm'] else 'no'}), jax {info['jax']} ({devices}), "
        f"numpy {info['numpy']}. SIMD: {' '.join(info['simd']) or '-'}. "
        f"Thread env: {info['env_threads'] or 'defaults'}. "
        f"Load average at start: {load_avg}. Wall times are medians of several runs after a warm-up "
        "(and, for jax, compile) call; the machine is a shared VM, so single figures stay somewhat noisy, "
        "and the ratios, taken within one run, are the figures to read.",
        "",
    ]
    mm = res.get("matmul")
    if mm:
        ref = SPEC_REFERENCE["matmul_gflops"]
        lines += [
            f"### Dense matmul peak ({mm['shape']}, GFLOP/s: median run, best run in brackets)",
            "",
            "| | torch | jax (jit) | MODEL_SPEC section 8 |",
            "|---|---|---|---|",
        ]
        for d in ("fp32", "bf16"):
            lines.append(f"| {d} | {_mm(mm[f'torch_{d}'])} | {_mm(mm[f'jax_{d}'])} | {ref[d]} |")
        lines.append("")
    rows = res.get("rows", [])
    if rows:
        lines += [
            "### VAE and DiT: time, ratio torch/JAX, achieved GFLOP/s (% of that framework's matmul peak)",
            "",
            "FLOPs are counted analytically from the config (`bench/flops.py`: matmuls, attention scores and "
            "convolutions). Precision pairs: torch `fp32` vs jax `float32`; torch `bf16` and `mixed` vs jax "
            "`dtype=bfloat16, param_dtype=float32`. The VAE is jitted whole in jax; for the DiT, jax times "
            "**one jitted FactoredAttention block x depth** (compiling all 30 blocks with XLA on this CPU "
            "takes too long) while torch runs the whole model; the block row compares like with like. "
            "`generate-100` is 100 x one step (an estimate; sampler overhead excluded). "
            "Ratio > 1: torch slower.",
            "",
            "| model | op | frames | precision | GFLOP | torch | jax | torch/jax | torch GFLOP/s "
            "| jax GFLOP/s | MODEL_SPEC 8 (seed port) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        mmres = res.get("matmul")
        for r in rows:
            spec = SPEC_REFERENCE.get(f"{r['model']} {r['op']} {r['frames']}", {})
            spec_s = spec.get("bf16" if r["precision"] != "fp32" else "fp32")
            jax = r.get("jax", {})
            ratio = r.get("ratio_torch_over_jax")
            lines.append(
                f"| {r['model']} | {r['op']} | {r['frames']} | {r['precision']} | {_g(r['flop'] / 1e9)} | "
                f"{_s(r['torch']['median_s'])} | {_s(jax.get('median_s'))}"
                f"{' (est.)' if r['model'] == 'dit' and r['op'] != 'block' else ''} | "
                f"{f'{ratio:.2f}x' if ratio else '-'} | "
                f"{_pct(r['torch']['gflops'], peak_gflops(mmres, 'torch', r['precision']))} | "
                f"{_pct(jax.get('gflops'), peak_gflops(mmres, 'jax', r['precision']))} | "
                f"{_s(spec_s) if spec_s else '-'} |"
            )
        lines.append("")
        dit_steps = [
            r for r in rows if r["model"] == "dit" and r["op"] == "step" and "torch_block_x_depth_s" in r
        ]
        if dit_steps:
            lines.append(
                "DiT step, torch whole model vs torch block x depth: "
                + "; ".join(
                    f"{r['precision']} {_s(r['torch']['median_s'])} vs {_s(r['torch_block_x_depth_s'])}"
                    for r in dit_steps
                )
                + "."
            )
            lines.append("")
    load = res.get("load")
    if load:
        lines += [
            "### Loading the VAE weights (`torch_impl.load_vae`, safetensors, page cache warm)",
            "",
            f"{load['file_bytes'] / 1e6:,.0f} MB file: median {_s(load['median_s'])} "
            f"over {load['runs']} runs "
            f"(first call {_s(load['first_call_s'])}); "
            f"{load['file_bytes'] / 1e6 / load['median_s']:,.0f} MB/s.",
            "",
        ]
    mem = res.get("memory")
    if mem:
        lines += [
            f"### Peak memory: decoding {mem['frames']} frames at {mem['height']}x{mem['width']} "
            f"({mem['precision']}, torch, fresh child process)",
            "",
            f"Peak resident set (`VmHWM`) {mem['peak_rss_mb']:,.0f} MB; after imports "
            f"{mem['rss_after_imports_mb']:,.0f} MB, after loading the weights "
            f"{mem['rss_after_load_mb']:,.0f} MB; "
            f"output {mem['output_bytes'] / 2**20:,.0f} MB; decode took {_s(mem['decode_s'])} "
            f"(`{mem.get('command', 'python -m bench.run --only memory')}`).",
            "",
        ]
    cli = res.get("cli")
    if cli:
        lines += [
            f"### `dfc compress` / `dfc decompress` from the command line ({cli[0]['frames']}-frame "
            "256x256 H.264 clip)",
            "",
            "Cold: each command is a fresh process (interpreter, imports, loading the weights, reading and "
            "writing the video included; page cache warm), median of "
            f"{cli[0]['runs']} runs. The model time is the encoder (compress) or the decoder with "
            "`fill_token` placement (decompress) on the same frames, measured in the bench process. "
            "Packing: frame selection, packing the kept latents and encoding the `.dfc` container; "
            "unpacking: decoding and checking the container and placing the latents back.",
            "",
            "| precision | compress (cold) | encoder | ratio | packing | share | decompress (cold) | decoder "
            "| ratio | unpacking | share |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in cli:
            lines.append(
                f"| {r['precision']} | {_s(r['compress_cli_s'])} | {_s(r['encode_model_s'])} | "
                f"{r['compress_over_model']:.2f}x | {_s(r['pack_s'])} | "
                f"{100 * r['pack_share_of_compress']:.2f}% | "
                f"{_s(r['decompress_cli_s'])} | {_s(r['decode_model_s'])} | "
                f"{r['decompress_over_model']:.2f}x | {_s(r['unpack_s'])} | "
                f"{100 * r['unpack_share_of_decompress']:.2f}% |"
            )
        lines.append("")
    ref_lines = ", ".join(f"{k}: fp32 {v['fp32']} / bf16 {v['bf16']}" for k, v in SPEC_REFERENCE.items())
    lines += [
        f"MODEL_SPEC section 8 reference (seed PyTorch port, seconds; matmul in GFLOP/s): {ref_lines}.",
        "",
    ]
    if data.get("skipped"):
        lines += [f"Not measured in this run: {'; '.join(data['skipped'])}.", ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_docs(section: str, path: Path, start: str = START, end: str = END) -> None:
    """Replace the part of `path` between the `start` and `end` markers (or append it)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_json(data: dict, path: Path) -> None:
    full = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    full["model"] = data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
