"""Timings of torch_impl beside the jitted jax_ref, in one process, with the same inputs and sizes.

Precision pairs: torch `fp32` <-> jax `dtype=float32`; torch `bf16` (all storage bf16) and `mixed`
(matmul weights bf16, norms/RoPE fp32) <-> jax `dtype=bfloat16, param_dtype=float32` (the training
code's setting; its numerics are those of `mixed`).
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np

from bench import flops
from bench.machine import peak_rss_mb, timed

JAX_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "mixed": "bfloat16"}


def _jnp_dtype(precision: str):
    import jax.numpy as jnp

    return getattr(jnp, JAX_DTYPE[precision])


def _row(
    kind: str, op: str, frames: int, precision: str, flop: int, torch_t: dict, jax_t: dict | None
) -> dict:
    row = {
        "model": kind,
        "op": op,
        "frames": frames,
        "precision": precision,
        "jax_dtype": JAX_DTYPE[precision],
        "flop": flop,
        "torch": {**torch_t, "gflops": flop / torch_t["median_s"] / 1e9},
    }
    if jax_t is not None:
        row["jax"] = {**jax_t, "gflops": flop / jax_t["median_s"] / 1e9}
        row["ratio_torch_over_jax"] = torch_t["median_s"] / jax_t["median_s"]
    return row


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def vae_rows(
    cfg, frames_list: list[int], precisions: list[str], ops: list[str], target_s: float
) -> list[dict]:
    """VAE encode/decode, torch_impl (eager) beside jax_ref's jitted whole-model encode/decode."""
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    import jax_ref
    import torch_impl
    from jax_ref.vae import jitted_decode, jitted_encode

    torch.manual_seed(0)
    tmodel = torch_impl.VideoVAE(cfg).eval()
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    jmodels: dict[str, object] = {}
    for precision in precisions:
        torch_impl.apply_precision(tmodel, precision)
        jdt = JAX_DTYPE[precision]
        if jdt not in jmodels:
            jmodels.clear()
            gc.collect()
            _log(f"building jax_ref VideoVAE dtype={jdt}")
            jmodels[jdt] = jax_ref.VideoVAE(
                cfg, rngs=nnx.Rngs(0), dtype=_jnp_dtype(precision), param_dtype=jnp.float32
            )
        jmodel = jmodels[jdt]
        for frames in frames_list:
            video = rng.random((1, frames, cfg.height, cfg.width, cfg.channels), dtype=np.float32)
            latent = rng.standard_normal((1, frames, cfg.num_patches, cfg.latent_dim), dtype=np.float32)
            mask = np.ones((1, frames), bool)
            tv, tl, tm = torch.from_numpy(video), torch.from_numpy(latent), torch.from_numpy(mask)
            jv, jl, jm = jnp.asarray(video), jnp.asarray(latent), jnp.asarray(mask)
            for op in ops:
                if op == "encode":
                    t_fn = lambda tv=tv, tm=tm: tmodel.encoder(tv, tm)  # noqa: E731
                    enc = jmodel.encoder
                    j_fn = lambda e=enc, jv=jv, jm=jm: jax.block_until_ready(jitted_encode(e, jv, jm))  # noqa: E731
                    flop = flops.vae_encode(cfg, frames)["total"]
                else:
                    t_fn = lambda tl=tl, tm=tm: tmodel.decoder(tl, tm)  # noqa: E731
                    dec = jmodel.decoder
                    j_fn = lambda d=dec, jl=jl, jm=jm: jax.block_until_ready(jitted_decode(d, jl, jm))  # noqa: E731
                    flop = flops.vae_decode(cfg, frames)["total"]
                _log(f"vae {op} {frames} frames {precision}: torch")
                with torch.inference_mode():
                    tt = timed(t_fn, target_s)
                _log(f"vae {op} {frames} frames {precision}: jax")
                jt = timed(j_fn, target_s)
                row = _row("vae", op, frames, precision, flop, tt, jt)
                row["jax_scope"] = "whole model, one jitted program"
                rows.append(row)
                _log(json.dumps({k: row[k] for k in ("op", "frames", "precision", "ratio_torch_over_jax")}))
    jmodels.clear()
    gc.collect()
    return rows


def dit_rows(cfg, frames: int, precisions: list[str], target_s: float, full_torch: bool = True) -> list[dict]:
    """One DiT step: torch_impl whole model, and one FactoredAttention block in both frameworks
    (jax jitted); the jax step is estimated as block time x depth (compiling 30 blocks with XLA on a
    small CPU takes minutes). Projections outside the blocks are <0.1% of the FLOPs."""
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    import jax_ref
    import torch_impl

    rng = np.random.default_rng(0)
    f = flops.dit_step(cfg, frames)
    x = rng.standard_normal((1, frames, cfg.hw, cfg.residual_dim), dtype=np.float32)
    latent = rng.standard_normal((1, frames, cfg.hw, cfg.compressed_channel_dim), dtype=np.float32)
    mask = np.ones((1, frames), bool)
    key_mask = mask[:, None, None, :]
    torch.manual_seed(0)
    tdit = torch_impl.VideoDiT(cfg).eval() if full_torch else None
    tblock = torch_impl.FactoredAttention(**cfg.block_kwargs()).eval()
    rows: list[dict] = []
    jblocks: dict[str, object] = {}
    step = nnx.jit(lambda blk, x, m: blk(x, m))
    for precision in precisions:
        jdt = JAX_DTYPE[precision]
        if jdt not in jblocks:
            jblocks[jdt] = jax_ref.FactoredAttention(
                **cfg.block_kwargs(),
                rngs=nnx.Rngs(0),
                dtype=_jnp_dtype(precision),
                param_dtype=jnp.float32,
            )
        jblock = jblocks[jdt]
        torch_impl.apply_precision(tblock, precision)
        tdtype = torch.float32 if precision == "fp32" else torch.bfloat16
        tx, tkm = torch.from_numpy(x).to(tdtype), torch.from_numpy(key_mask)
        jx, jkm = jnp.asarray(x), jnp.asarray(key_mask)
        _log(f"dit block {frames} frames {precision}: torch")
        with torch.inference_mode():
            tb = timed(lambda tx=tx, tkm=tkm: tblock(tx, tkm), target_s)
        _log(f"dit block {frames} frames {precision}: jax")
        jb = timed(lambda b=jblock, jx=jx, jkm=jkm: jax.block_until_ready(step(b, jx, jkm)), target_s)
        row = _row("dit", "block", frames, precision, f["block"], tb, jb)
        row["jax_scope"] = "one FactoredAttention block, jitted"
        rows.append(row)
        scaled = {k: v * cfg.depth for k, v in jb.items() if k in ("median_s", "min_s")}
        jstep = {**scaled, "runs": jb["runs"], "estimated": f"block x depth ({cfg.depth})"}
        if tdit is not None:
            torch_impl.apply_precision(tdit, precision)
            tl, tm, tt_ = torch.from_numpy(latent), torch.from_numpy(mask), torch.full((1, 1), 0.5)
            _log(f"dit step {frames} frames {precision}: torch (whole model)")
            with torch.inference_mode():
                tstep = timed(
                    lambda a=tl, b=tm, c=tt_: tdit(a, b, c), target_s, max_runs=3, single_if_slow=target_s
                )
            tstep["scope"] = "whole model"
        else:
            tstep = {
                "median_s": tb["median_s"] * cfg.depth,
                "min_s": tb["min_s"] * cfg.depth,
                "runs": tb["runs"],
            }
            tstep["scope"] = f"block x depth ({cfg.depth})"
        row = _row("dit", "step", frames, precision, f["total"], tstep, jstep)
        row["jax_scope"] = jstep["estimated"]
        row["torch_block_x_depth_s"] = tb["median_s"] * cfg.depth
        rows.append(row)
        gen = _row(
            "dit",
            "generate-100",
            frames,
            precision,
            100 * f["total"],
            {k: 100 * v for k, v in tstep.items() if k in ("median_s", "min_s")},
            {k: 100 * v for k, v in jstep.items() if k in ("median_s", "min_s")},
        )
        gen["jax_scope"] = gen["torch_scope"] = "estimate: 100 x one step (sampler overhead not included)"
        rows.append(gen)
        _log(json.dumps({k: row[k] for k in ("op", "frames", "precision", "ratio_torch_over_jax")}))
    return rows


# ------------------------------------------------------------------------------------ loading, memory


def ensure_vae_file(cfg, preset: str, cache: Path) -> Path:
    """A random VAE of `cfg` as safetensors (+ config.json) under `cache/preset`, written once."""
    import torch
    from safetensors.torch import save_file

    import torch_impl
    from common.atomic import atomic_output
    from common.config import config_to_json

    folder = cache / preset
    path = folder / "model.safetensors"
    if path.is_file() and (folder / "config.json").is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in torch_impl.VideoVAE(cfg).state_dict().items()}
    with atomic_output(path) as tmp:  # the weights appear last, so their presence means both are there
        save_file(state, str(tmp))
        (folder / "config.json").write_text(config_to_json(cfg))
    return path


def load_row(path: Path, target_s: float) -> dict:
    import torch_impl

    t = timed(lambda: torch_impl.load_vae(path), target_s, max_runs=5)
    return {"path": str(path), "file_bytes": path.stat().st_size, **t}


def child_decode_memory(path: str, frames: str, precision: str) -> dict:
    """Run in a fresh process: load the VAE, decode `frames` frames once, report peak resident memory."""
    import psutil
    import torch

    import torch_impl

    proc = psutil.Process()
    base = proc.memory_info().rss
    model = torch_impl.load_vae(path, precision=precision)
    cfg = model.config
    loaded = proc.memory_info().rss
    frames_i = int(frames)
    latent = torch.randn(1, frames_i, cfg.num_patches, cfg.latent_dim)
    mask = torch.ones(1, frames_i, dtype=torch.bool)
    t0 = time.perf_counter()
    with torch.inference_mode():
        video = model.decoder(latent, mask)
    wall = time.perf_counter() - t0
    peak = peak_rss_mb() * 2**20
    return {
        "frames": frames_i,
        "precision": precision,
        "height": cfg.height,
        "width": cfg.width,
        "output_shape": list(video.shape),
        "output_bytes": video.numel() * video.element_size(),
        "rss_after_imports_mb": base / 2**20,
        "rss_after_load_mb": loaded / 2**20,
        "peak_rss_mb": peak / 2**20,
        "decode_s": wall,
    }
