"""Stage 4: the discrete outputs over many sampling seeds at a small size, one batch per seed set.

Kept frames (VAE compress, threshold and Bernoulli with the same uniform draws on both sides), and the
DiT's frame gaps, positions and lengths after sampling, for `plan.seeds` seeds each. docs/PORTING.md's
rule: torch bf16 may miss the JAX fp32 reference in no more places than JAX bf16 does; torch fp32 must
miss it nowhere. Reported: mismatched elements and the share of seeds whose result is identical.
JAX runs eagerly, as in every parity run (under jit XLA may fuse away bf16 roundings, which would make
the yardstick stricter than JAX bf16 itself), with matmul precision HIGHEST for the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.gpu_check.output import StageResult
from parity import tolerance

SIDES = ("jax bf16", "torch bf16", "torch fp32")


def _lineups(subject, device: str):
    """The JAX fp32 reference, JAX bf16 (natural numerics), torch bf16 and torch fp32, same weights."""
    from common.precision import Precision
    from parity.runner import Lineup, Settings
    from parity.suites.vae_dit.subjects import NATURAL_NUMERICS
    from parity.transfer import torch_model

    natural = NATURAL_NUMERICS[Precision.BF16]
    bf16 = Lineup.build({subject.name: subject}, Settings(Precision.BF16, (natural,), device=device))
    name = subject.name
    fp32 = torch_model(subject, bf16.weights[name], Precision.FP32, device)  # the reference is bf16's
    jax_models = {"reference": bf16.reference[name], "jax bf16": bf16.jax[natural.value][name]}
    return jax_models, {"torch bf16": bf16.torch[name], "torch fp32": fp32}


def _keep_mask(gaps: np.ndarray, kept_valid: np.ndarray, frames: int) -> np.ndarray:
    """(B, T) bool from a `Compressed`'s gaps and kept_valid (K depends on the batch, T does not)."""
    positions = np.cumsum(gaps, axis=1)
    keep = np.zeros((gaps.shape[0], frames), bool)
    rows, cols = np.nonzero(kept_valid)
    keep[rows, positions[rows, cols]] = True
    return keep


def _vae(plan, device: str) -> dict[str, dict[str, np.ndarray]]:
    import jax
    import jax.numpy as jnp
    import torch

    from common.config import PRESETS
    from parity.suites.vae_dit.subjects import vae_subject

    cfg = PRESETS[plan.small_vae]
    jax_models, torch_models = _lineups(vae_subject(cfg), device)
    frames = min(plan.discrete_frames or 16, cfg.max_temporal_len)
    videos = np.stack(
        [
            np.random.default_rng(s).uniform(0, 1, (frames, cfg.height, cfg.width, cfg.channels))
            for s in range(plan.seeds)
        ]
    ).astype(np.float32)
    draws = np.stack(
        [np.random.default_rng(10_000 + s).uniform(0, 1, frames) for s in range(plan.seeds)]
    ).astype(np.float32)
    mask = np.ones((plan.seeds, frames), bool)
    out: dict[str, dict[str, np.ndarray]] = {}
    for mode in ("threshold", "bernoulli"):
        noise = draws if mode == "bernoulli" else None
        found = {}
        for side, model in jax_models.items():
            with jax.disable_jit():
                c = model.compress(
                    jnp.asarray(videos),
                    jnp.asarray(mask),
                    mode=mode,
                    noise=None if noise is None else jnp.asarray(noise),
                )
            found[side] = _keep_mask(np.asarray(c.gaps), np.asarray(c.kept_valid), frames)
        for side, model in torch_models.items():
            with torch.inference_mode():
                t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
                c = model.compress(t(videos), t(mask), mode=mode, noise=None if noise is None else t(noise))
            found[side] = _keep_mask(c.gaps.cpu().numpy(), c.kept_valid.cpu().numpy(), frames)
        out[f"vae kept frames ({mode})"] = found
    return out


def _dit(plan, device: str) -> dict[str, dict[str, np.ndarray]]:
    import jax
    import jax.numpy as jnp
    import torch

    import jax_ref
    import torch_impl
    from common.config import PRESETS
    from parity.suites.vae_dit.subjects import dit_subject

    cfg = PRESETS[plan.small_dit]
    jax_models, torch_models = _lineups(dit_subject(cfg), device)
    frames = min(plan.discrete_frames or 8, cfg.max_temporal_len)
    noise = np.stack(
        [
            np.random.default_rng(s).standard_normal((frames, cfg.hw, cfg.compressed_channel_dim))
            for s in range(plan.seeds)
        ]
    ).astype(np.float32)
    mask = np.ones((plan.seeds, frames), bool)
    gaps, positions, totals = {}, {}, {}
    for side, model in jax_models.items():
        with jax.disable_jit():
            _, g = jax_ref.sample(model, jnp.asarray(noise), jnp.asarray(mask), plan.discrete_steps)
        p, n = jax_ref.gaps_to_positions(g, jnp.asarray(mask))
        gaps[side], positions[side], totals[side] = (
            np.round(np.asarray(g)),
            np.asarray(p),
            np.asarray(n)[:, None],
        )
    for side, model in torch_models.items():
        tm = torch.from_numpy(mask).to(device)
        _, g = torch_impl.sample(model, torch.from_numpy(noise).to(device), tm, plan.discrete_steps)
        p, n = torch_impl.gaps_to_positions(g, tm)
        gaps[side] = np.round(g.cpu().numpy())
        positions[side], totals[side] = p.cpu().numpy(), n.cpu().numpy()[:, None]
    return {"dit rounded gaps": gaps, "dit frame positions": positions, "dit lengths": totals}


def _row(output: str, found: dict[str, np.ndarray]) -> dict[str, Any]:
    ref = found["reference"]
    row: dict[str, Any] = {"output": output, "seeds": int(ref.shape[0])}
    for side in SIDES:
        differs = found[side] != ref
        row[side] = {
            "mismatched_elements": int(differs.sum()),
            "seeds_identical": float(np.mean(~differs.reshape(len(ref), -1).any(axis=1))),
        }
    same = (found["torch bf16"] == found["jax bf16"]).reshape(len(ref), -1).all(axis=1)
    row["torch_bf16_identical_to_jax_bf16"] = float(np.mean(same))
    row["bf16_passed"] = tolerance.passes_discrete(
        row["torch bf16"]["mismatched_elements"], row["jax bf16"]["mismatched_elements"]
    )
    row["fp32_passed"] = tolerance.passes_discrete(row["torch fp32"]["mismatched_elements"], None)
    return row


def run(ctx) -> StageResult:
    from parity.environment import PINNED, pinned

    plan = ctx.plan
    rows = []
    with pinned(PINNED, plan.device):
        for name, measure in (("vae", _vae), ("dit", _dit)):
            if not ctx.allows(15):
                rows.append({"output": name, "skipped": "time budget"})
                continue
            ctx.log(f"{name}: {plan.seeds} seeds")
            rows += [_row(output, found) for output, found in measure(plan, plan.device).items()]
            ctx.partial({"rows": rows}, _markdown(rows, plan), "")
    ran = [r for r in rows if "skipped" not in r]
    ok = all(r["bf16_passed"] and r["fp32_passed"] for r in ran)
    verdict = f"{'PASS' if ok else 'FAIL'} over {plan.seeds} seeds ({len(ran)} outputs)"
    return StageResult(
        "discrete", "ran", data={"rows": rows}, markdown=_markdown(rows, plan), verdict=verdict
    )


def _markdown(rows, plan) -> str:
    lines = [
        f"# Discrete outputs over {plan.seeds} seeds ({plan.small_vae}, {plan.small_dit}, "
        f"{plan.discrete_steps} Euler steps)",
        "",
        "Mismatched elements against JAX fp32 (HIGHEST), and the share of seeds with an identical result. "
        "bf16 passes when torch bf16 misses no more often than JAX bf16; fp32 must miss nowhere.",
        "",
        *(
            [
                f"CPU plumbing run: {plan.seeds} seeds, not the 64 a GPU run uses; the rates say nothing "
                "about bf16 on a GPU.",
                "",
            ]
            if plan.seeds < 64
            else []
        ),
        "| output | jax bf16 mismatches | torch bf16 mismatches | torch fp32 mismatches | identical seeds "
        "(jax bf16 / torch bf16 / torch fp32) | torch bf16 = jax bf16 | bf16 | fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['output']} | skipped ({r['skipped']}) | | | | | | |")
            continue
        ident = " / ".join(f"{100 * r[s]['seeds_identical']:.0f}%" for s in SIDES)
        counts = " | ".join(str(r[s]["mismatched_elements"]) for s in SIDES)
        same = f"{100 * r['torch_bf16_identical_to_jax_bf16']:.0f}%"
        marks = " | ".join("ok" if r[k] else "**FAIL**" for k in ("bf16_passed", "fp32_passed"))
        lines.append(f"| {r['output']} | {counts} | {ident} | {same} | {marks} |")
    return "\n".join(lines) + "\n"
