"""Stage 5: GPU benchmarks. DiT step latency (bf16; eager, torch.compile default and
mode="reduce-overhead", i.e. CUDA graphs; compile time apart), model FLOP utilisation against the
measured bf16 matmul peak, VAE encode/decode frames per second, the jitted JAX model beside each,
peak GPU memory. FLOPs from `bench.flops`, timings by `bench.machine.timed` (each call waits for the
device). On a CPU: tiny sizes and no compile legs.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench import flops
from bench.gpu_check.output import StageResult
from bench.machine import matmul_peak, timed

COMPILE_GUARD_S = 90.0  # a compile leg is not started with less time left than this
TARGETS = {"batch1_graphs_ms": 8.0, "batch8_mfu": 0.5, "generate100_s": 1.0}


class Device:
    def __init__(self, device: str):
        import torch

        self.device = device
        self.cuda = device == "cuda"
        self.torch = torch

    def wait(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def torch_peak_gib(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None


def jax_peak_gib() -> float | None:
    """JAX's peak device memory of the process so far (it cannot be reset); None where not reported."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return peak / 2**30 if peak else None


def _time(fn, plan, dev: Device) -> dict[str, Any]:
    def call():
        fn()
        dev.wait()

    return timed(call, plan.target_s, max_runs=50, min_runs=5)


def _torch_leg(model, args, plan, dev: Device, mode: str | None) -> dict[str, Any]:
    """`mode` None: eager; else torch.compile with that mode ("default" or "reduce-overhead")."""
    torch = dev.torch
    dev.reset_peak()
    run = model
    mark = lambda: None  # noqa: E731
    compile_s = None
    if mode is not None:
        torch.compiler.reset()
        run = torch.compile(model, dynamic=False, mode=None if mode == "default" else mode)
        if mode == "reduce-overhead":
            mark = getattr(torch.compiler, "cudagraph_mark_step_begin", mark)
        t0 = time.perf_counter()
        with torch.inference_mode():
            mark()
            run(*args)
            dev.wait()
        compile_s = time.perf_counter() - t0
        with torch.inference_mode():  # CUDA graphs are recorded on the calls after the first
            for _ in range(2):
                mark()
                run(*args)
        dev.wait()

    def step():
        mark()
        run(*args)

    with torch.inference_mode():
        t = _time(step, plan, dev)
    return {**t, "compile_s": compile_s, "peak_gib": dev.torch_peak_gib()}


def _dit(ctx, dev: Device, peak: float | None) -> list[dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import jax_ref
    import torch_impl
    from common.config import PRESETS

    torch = dev.torch
    plan = ctx.plan
    cfg = PRESETS[plan.dit]
    frames = plan.bench_frames
    with torch.device(dev.device):
        model = torch_impl.apply_precision(torch_impl.VideoDiT(cfg), "bf16").eval()
    ctx.log(f"JAX {plan.dit} (bf16 compute, fp32 params)")
    jmodel = jax_ref.VideoDiT(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.float32)
    jstep = nnx.jit(lambda m, x, mask, t: m(x, mask, t))
    rows = []
    for batch in plan.bench_batches:
        flop = flops.dit_step(cfg, frames, batch)["total"]
        rng = np.random.default_rng(batch)
        latent = rng.standard_normal((batch, frames, cfg.hw, cfg.compressed_channel_dim), dtype=np.float32)
        mask = np.ones((batch, frames), bool)
        t = np.full((batch, 1), 0.5, np.float32)
        args = (
            torch.from_numpy(latent).to(dev.device, torch.bfloat16),
            torch.from_numpy(mask).to(dev.device),
            torch.from_numpy(t).to(dev.device),
        )
        legs = [("eager", None)]
        if plan.compile_legs:  # CUDA graphs first: the batch-1 target is theirs
            legs += [("cuda graphs", "reduce-overhead"), ("compile", "default")]
        for leg, mode in legs:
            if mode is not None and not ctx.allows(COMPILE_GUARD_S):
                rows.append({"op": "dit step", "batch": batch, "leg": leg, "skipped": "time budget"})
                continue
            ctx.log(f"dit step batch {batch}: torch {leg}")
            r = _torch_leg(model, args, plan, dev, mode)
            rows.append(_row("dit step", batch, frames, f"torch {leg}", flop, r, peak))
        ctx.log(f"dit step batch {batch}: JAX jit")
        jargs = (jnp.asarray(latent, jnp.bfloat16), jnp.asarray(mask), jnp.asarray(t))
        t0 = time.perf_counter()
        jax.block_until_ready(jstep(jmodel, *jargs))
        first = time.perf_counter() - t0
        r = _time(lambda a=jargs: jax.block_until_ready(jstep(jmodel, *a)), plan, dev)
        r.update(compile_s=first, peak_gib=jax_peak_gib())
        rows.append(_row("dit step", batch, frames, "jax jit", flop, r, peak))
    return rows


def _vae(ctx, dev: Device, peak: float | None) -> list[dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import jax_ref
    import torch_impl
    from common.config import PRESETS
    from jax_ref.vae import jitted_decode, jitted_encode

    torch = dev.torch
    plan = ctx.plan
    cfg = PRESETS[plan.vae]
    frames = plan.bench_frames
    with torch.device(dev.device):
        model = torch_impl.apply_precision(torch_impl.VideoVAE(cfg), "bf16").eval()
    jmodel = jax_ref.VideoVAE(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.float32)
    rng = np.random.default_rng(0)
    video = rng.uniform(0, 1, (1, frames, cfg.height, cfg.width, cfg.channels)).astype(np.float32)
    latent = rng.standard_normal((1, frames, cfg.num_patches, cfg.latent_dim), dtype=np.float32)
    mask = np.ones((1, frames), bool)
    tv, tl, tm = (torch.from_numpy(a).to(dev.device) for a in (video, latent, mask))
    jv, jl, jm = (jnp.asarray(a) for a in (video, latent, mask))
    rows = []
    for op, flop, tfn, jfn in (
        (
            "vae encode",
            flops.vae_encode(cfg, frames)["total"],
            lambda: model.encoder(tv, tm),
            lambda: jax.block_until_ready(jitted_encode(jmodel.encoder, jv, jm)),
        ),
        (
            "vae decode",
            flops.vae_decode(cfg, frames)["total"],
            lambda: model.decoder(tl, tm),
            lambda: jax.block_until_ready(jitted_decode(jmodel.decoder, jl, jm)),
        ),
    ):
        if op.removeprefix("vae ") not in plan.bench_vae:
            continue
        if not ctx.allows(10):
            rows.append({"op": op, "batch": 1, "leg": "all", "skipped": "time budget"})
            continue
        ctx.log(f"{op}: torch eager, JAX jit")
        dev.reset_peak()
        with torch.inference_mode():
            r = _time(tfn, plan, dev)
        r["peak_gib"] = dev.torch_peak_gib()
        rows.append(_row(op, 1, frames, "torch eager", flop, r, peak))
        t0 = time.perf_counter()
        jfn()
        first = time.perf_counter() - t0
        r = _time(jfn, plan, dev)
        r.update(compile_s=first, peak_gib=jax_peak_gib())
        rows.append(_row(op, 1, frames, "jax jit", flop, r, peak))
    return rows


def _row(op: str, batch: int, frames: int, leg: str, flop: int, t: dict, peak: float | None) -> dict:
    seconds = t["median_s"]
    return {
        "op": op,
        "batch": batch,
        "frames": frames,
        "leg": leg,
        "flop": flop,
        "median_ms": 1e3 * seconds,
        "min_ms": 1e3 * t["min_s"],
        "runs": t["runs"],
        "tflops": flop / seconds / 1e12,
        "mfu": flop / seconds / peak if peak else None,
        "fps": batch * frames / seconds,
        "compile_s": t.get("compile_s"),
        "peak_gib": t.get("peak_gib"),
    }


def run(ctx) -> StageResult:
    plan = ctx.plan
    dev = Device(plan.device)
    ctx.log(f"bf16 matmul peak {plan.matmul}")
    mm = matmul_peak(*plan.matmul, target_s=plan.target_s, device=plan.device, precisions=("bf16",))
    peak = mm["torch_bf16"]["best_gflops"] * 1e9
    data: dict[str, Any] = {"matmul": mm, "peak_flops": peak, "rows": []}
    for part in (_dit, _vae):
        if not ctx.allows(20):
            data["rows"].append({"op": part.__name__.strip("_"), "skipped": "time budget"})
            continue
        data["rows"] += part(ctx, dev, peak)
        ctx.partial(data, markdown(data, plan), "")
    data["targets"] = targets(data["rows"])
    met = sum(1 for v in data["targets"].values() if v["met"])
    verdict = f"{met}/{len(data['targets'])} targets met (sizes {plan.config}, {plan.device})"
    return StageResult("bench", "ran", data=data, markdown=markdown(data, plan), verdict=verdict)


def targets(rows: list[dict]) -> dict[str, dict]:
    """The issue's targets against what was measured (met: False where a figure is missing)."""
    timed_rows = [r for r in rows if "skipped" not in r]

    def best(op, batch, torch_only=True):
        found = [
            r
            for r in timed_rows
            if r["op"] == op and r["batch"] == batch and (r["leg"].startswith("torch") or not torch_only)
        ]
        return min(found, key=lambda r: r["median_ms"]) if found else None

    out = {}
    b1 = [
        r for r in timed_rows if r["op"] == "dit step" and r["batch"] == 1 and r["leg"] == "torch cuda graphs"
    ]
    out["DiT step, batch 1, CUDA graphs <= 8 ms"] = {
        "measured": f"{b1[0]['median_ms']:.2f} ms" if b1 else "not measured",
        "met": bool(b1) and b1[0]["median_ms"] <= TARGETS["batch1_graphs_ms"],
    }
    big = max((r["batch"] for r in timed_rows if r["op"] == "dit step"), default=None)
    b8 = best("dit step", big) if big else None
    out[f"DiT step, batch {big}, >= 50% of the bf16 matmul peak"] = {
        "measured": f"{100 * b8['mfu']:.0f}% ({b8['leg']})" if b8 and b8["mfu"] else "not measured",
        "met": bool(b8 and b8["mfu"] and b8["mfu"] >= TARGETS["batch8_mfu"]),
    }
    g = best("dit step", 1)
    out["100-step generation (batch 1) < 1 s"] = {
        "measured": f"{g['median_ms'] / 10:.2f} s ({g['leg']})" if g else "not measured",
        "met": bool(g) and g["median_ms"] / 10 < TARGETS["generate100_s"],
    }
    slower = []
    for op, batch in sorted({(r["op"], r["batch"]) for r in timed_rows}):
        t, j = (
            best(op, batch),
            [r for r in timed_rows if r["op"] == op and r["batch"] == batch and r["leg"] == "jax jit"],
        )
        if t and j and t["median_ms"] > j[0]["median_ms"]:
            slower.append(f"{op} b{batch} {t['median_ms'] / j[0]['median_ms']:.2f}x")
    out["torch at least as fast as jitted JAX, every op"] = {
        "measured": "slower: " + ", ".join(slower) if slower else "yes",
        "met": not slower and bool(timed_rows),
    }
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def markdown(data: dict, plan) -> str:
    mm = data["matmul"]["torch_bf16"]
    lines = [
        f"# Benchmarks ({plan.device}, {plan.config} sizes)",
        "",
        f"bf16 matmul {data['matmul']['shape']}: torch {mm['best_gflops'] / 1e3:.1f} TFLOP/s best "
        f"({mm['gflops'] / 1e3:.1f} median); this is the peak for MFU. "
        f"JAX: {data['matmul'].get('jax_bf16', {}).get('gflops', 0) / 1e3:.1f} TFLOP/s median.",
        "",
        "| op | batch | frames | leg | median ms | min ms | TFLOP/s | MFU | frames/s | compile s | peak GiB "
        "|",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if "skipped" in r:
            where = f"{r['op']} | {r.get('batch', '')} | | {r.get('leg', '')}"
            lines.append(f"| {where} | skipped ({r['skipped']}) | | | | | | |")
            continue
        lines.append(
            f"| {r['op']} | {r['batch']} | {r['frames']} | {r['leg']} | {r['median_ms']:.3f} "
            f"| {r['min_ms']:.3f} "
            f"| {r['tflops']:.3g} | {_fmt(r['mfu'] and 100 * r['mfu'], '.1f')}% | {r['fps']:.1f} "
            f"| {_fmt(r['compile_s'], '.1f')} | {_fmt(r['peak_gib'], '.2f')} |"
        )
    if "targets" in data:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [
            f"| {k} | {v['measured']} | {'yes' if v['met'] else 'no'} |" for k, v in data["targets"].items()
        ]
    lines += ["", "JAX peak memory is the process's peak so far (JAX cannot reset it)."]
    return "\n".join(lines) + "\n"
