"""DiT sampling, N Euler steps, judged after every step: the state `x` and the predicted gaps.

A capture of every layer at every one of 100 steps would hold hundreds of GB at the published size, so
the trajectory is compared here state by state (this file), and every layer is captured only at steps
0, N/2 and N-1 (`cases.step_case`, run by the parity runner on the reference's states).

The loop is the samplers' own (`x += v(x, i/N) / N`, state float32, the model on `x` in its compute
dtype): `tests/test_gpu_check.py` checks that its last state equals `jax_ref.sample` and
`torch_impl.sample` exactly. JAX runs eagerly, like every JAX run of the parity suite.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from parity import tolerance
from parity.metrics import compare


def jax_states(dit, noise: np.ndarray, mask: np.ndarray, steps: int) -> tuple[list, list]:
    """States after each step and gaps of each step, host numpy float32."""
    import jax
    import jax.numpy as jnp

    dtype = getattr(dit, "dtype", None) or jnp.float32
    states, gaps = [], []
    with jax.disable_jit():
        x = jnp.asarray(noise, jnp.float32)
        m = jnp.asarray(mask, bool)
        for i in range(steps):
            t = jnp.full((x.shape[0], 1), i / steps, jnp.float32)
            velocity, g = dit(x.astype(dtype), m, t)
            x = x + velocity.astype(jnp.float32) / steps
            states.append(np.asarray(x))
            gaps.append(np.asarray(g.astype(jnp.float32)))
    return states, gaps


def torch_states(dit, noise: np.ndarray, mask: np.ndarray, steps: int, device: str) -> tuple[list, list]:
    import torch

    dtype = dit.compute_dtype
    states, gaps = [], []
    with torch.inference_mode():
        x = torch.from_numpy(np.array(noise, np.float32)).to(device)
        m = torch.from_numpy(np.array(mask)).to(device)
        for i in range(steps):
            t = torch.full((x.shape[0], 1), i / steps, dtype=torch.float32, device=device)
            velocity, g = dit(x.to(dtype), m, t)
            x = x + velocity.float() / steps
            states.append(x.cpu().numpy())
            gaps.append(g.float().cpu().numpy())
    return states, gaps


def positions(gaps: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame positions and lengths by the project's rule (jax_ref's `gaps_to_positions`, on the CPU)."""
    import jax

    from jax_ref.sampling import gaps_to_positions

    with jax.default_device(jax.devices("cpu")[0]):
        pos, total = gaps_to_positions(np.asarray(gaps), np.asarray(mask))
        return np.asarray(pos), np.asarray(total)


def _judge(torch_value, ref, jax_value) -> dict[str, Any]:
    """One value of one step: fp32 rule when there is no JAX bf16 run, else the bf16 rule."""
    m = compare(torch_value, ref)
    if jax_value is None:
        return {
            "rel_max": m.rel_max,
            "limit": tolerance.FP32_REL_MAX,
            "passed": tolerance.passes_fp32(m.rel_max),
        }
    j = compare(jax_value, ref)
    return {
        "err": m.err,
        "jax_err": j.err,
        "allowed": tolerance.bf16_allowance(j.err if np.isfinite(j.err) else 0.0, m.rms_ref),
        "passed": tolerance.passes_bf16(m.err, j.err, m.rms_ref),
    }


def judge(
    reference: tuple[list, list], torch_run: tuple[list, list], jax_run: tuple[list, list] | None, mask
) -> dict[str, Any]:
    """Per step: state and gaps judged; then the discrete outputs (positions, lengths) of the last step."""
    per_step = []
    for i, (ref_x, ref_g) in enumerate(zip(*reference)):
        jx = jax_run[0][i] if jax_run else None
        jg = jax_run[1][i] if jax_run else None
        per_step.append(
            {
                "step": i,
                "state": _judge(torch_run[0][i], ref_x, jx),
                "gaps": _judge(torch_run[1][i], ref_g, jg),
            }
        )
    ref_pos, ref_total = positions(reference[1][-1], mask)
    t_pos, t_total = positions(torch_run[1][-1], mask)
    mismatch_torch = int(np.sum(t_pos != ref_pos) + np.sum(t_total != ref_total))
    mismatch_jax = None
    if jax_run:
        j_pos, j_total = positions(jax_run[1][-1], mask)
        mismatch_jax = int(np.sum(j_pos != ref_pos) + np.sum(j_total != ref_total))
    first_bad = next(
        (s["step"] for s in per_step if not (s["state"]["passed"] and s["gaps"]["passed"])), None
    )
    discrete_ok = tolerance.passes_discrete(mismatch_torch, mismatch_jax)
    return {
        "steps": len(per_step),
        "first_failing_step": first_bad,
        "passed": first_bad is None and discrete_ok,
        "discrete": {
            "mismatches_torch": mismatch_torch,
            "mismatches_jax_bf16": mismatch_jax,
            "passed": discrete_ok,
            "reference_positions": ref_pos.tolist(),
            "torch_positions": t_pos.tolist(),
        },
        "per_step": per_step,
    }


def markdown(found: dict[str, Any], precision: str) -> list[str]:
    bf16 = precision != "fp32"
    head = "| step | state err | jax err | allowed | gaps err | jax err | allowed | pass |"
    if not bf16:
        head = "| step | state rel max | gaps rel max | limit | pass |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    shown = found["per_step"]
    if len(shown) > 12:  # the first, the last, every tenth and every failing step
        shown = [
            s
            for s in shown
            if s["step"] % 10 == 0
            or s["step"] == len(shown) - 1
            or not (s["state"]["passed"] and s["gaps"]["passed"])
        ]
    for s in shown:
        ok = "ok" if s["state"]["passed"] and s["gaps"]["passed"] else "**FAIL**"
        x, g = s["state"], s["gaps"]
        if bf16:
            lines.append(
                f"| {s['step']} | {x['err']:.3g} | {x['jax_err']:.3g} | {x['allowed']:.3g} | "
                f"{g['err']:.3g} | {g['jax_err']:.3g} | {g['allowed']:.3g} | {ok} |"
            )
        else:
            lines.append(
                f"| {s['step']} | {x['rel_max']:.3g} | {g['rel_max']:.3g} | {x['limit']:.0e} | {ok} |"
            )
    d = found["discrete"]
    jax = d["mismatches_jax_bf16"]
    lines += [
        "",
        f"Positions and lengths after the last step: torch misses the reference in {d['mismatches_torch']} "
        f"places, JAX bf16 in {'- (fp32: none allowed)' if jax is None else jax}: "
        f"{'ok' if d['passed'] else '**FAIL**'}.",
    ]
    return lines
