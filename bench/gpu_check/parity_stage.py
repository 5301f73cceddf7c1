"""Stage 2: bf16 and fp32 parity on the device at the chosen sizes, judged by the project's parity suite.

Torch on the device against JAX on the same device (`parity.runner.run`: fp32 reference at matmul
precision HIGHEST, TF32 off, JAX bf16 with the policy's natural norm numerics as the yardstick): one
FactoredAttention block of each model, the UNet, VAE encode/decode/compress, the DiT forward, and DiT
sampling (every step's state and gaps, `trajectory`; every layer at steps 0, N/2 and N-1). Then the
distance between JAX fp32 on the device and JAX fp32 on the CPU, as context for the 1e-5 bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.gpu_check import trajectory
from bench.gpu_check.cases import step_case, unet_case, unet_subject
from bench.gpu_check.output import StageResult

PRECISIONS = ("bf16", "fp32")  # the bf16 suite is the headline; fp32 runs with TF32 off


def _subjects(plan) -> dict:
    from common.config import PRESETS
    from parity.subjects import block_subject, dit_subject, vae_subject

    vae, dit = PRESETS[plan.vae], PRESETS[plan.dit]
    subjects = [block_subject(dit), block_subject(vae), unet_subject(vae), vae_subject(vae), dit_subject(dit)]
    return {s.name: s for s in subjects}


def _cases(plan) -> list:
    from parity import cases as C

    shape = C.Shape(plan.batch, plan.frames)
    forward = [c for c in C.dit_cases(1, shape) if c.name == "dit.forward"]
    cases = [
        C.block_case("dit-block", shape),
        C.block_case("vae-block", shape),
        unet_case(shape),
        *C.vae_cases(shape),
        *forward,
    ]
    return [c for c in cases if plan.parity_cases is None or c.name in plan.parity_cases]


DISTANCE_CASES = (
    "dit-block.factored_attention",
    "vae-block.factored_attention",
    "vae.unet",
    "vae.encode",
    "vae.decode",
    "dit.forward",
)


def _settings(plan, precision: str):
    from common.precision import Precision
    from parity.runner import NATURAL_NUMERICS, Settings

    p = Precision.parse(precision)
    numerics = (NATURAL_NUMERICS[p],) if p in NATURAL_NUMERICS else Settings().numerics
    return Settings(precision=p, numerics=numerics, device=plan.device, seed=0)


def _sampling(ctx, subjects, settings, weights: dict) -> tuple[dict, Any, list]:
    """The trajectory judged per step; the torch DiT (reused by the runner); the layer-by-layer cases."""
    from parity import cases as C
    from parity.environment import pinned
    from parity.runner import Lineup

    plan = ctx.plan
    inputs = C.dit_inputs(C.Shape(plan.batch, plan.frames))(subjects, np.random.default_rng(settings.seed))
    noise, mask = inputs["noise"], inputs["mask"]
    with pinned(settings.pins, plan.device):
        lineup = Lineup.build({"dit": subjects["dit"]}, settings, weights=weights or None)
        weights.update(lineup.weights)
        if "reference" not in ctx.cache:
            ctx.log(f"sampling: JAX fp32 reference, {plan.steps} steps")
            ctx.cache["reference"] = trajectory.jax_states(lineup.reference["dit"], noise, mask, plan.steps)
        reference = ctx.cache["reference"]
        jax_run = None
        if settings.precision.value != "fp32":
            ctx.log(f"sampling: JAX bf16 ({settings.verdict_judge}), {plan.steps} steps")
            jax_run = trajectory.jax_states(
                lineup.jax[settings.verdict_judge]["dit"], noise, mask, plan.steps
            )
        ctx.log(f"sampling: torch {settings.precision.value}, {plan.steps} steps")
        torch_run = trajectory.torch_states(lineup.torch["dit"], noise, mask, plan.steps, plan.device)
        found = trajectory.judge(reference, torch_run, jax_run, mask)
    n = plan.steps
    steps = sorted({0, n // 2, n - 1}) if plan.layer_steps != "first" else [0]
    layer_cases = []
    for s in steps:
        state = noise if s == 0 else reference[0][s - 1]
        time = np.full((noise.shape[0], 1), s / n, np.float32)
        layer_cases.append(step_case(s, n, {"latent": state, "mask": mask, "time": time}))
    return found, lineup.torch["dit"], layer_cases


def _case_table(report_json: dict) -> list[str]:
    lines = ["| case | mode | pass | first divergent |", "|---|---|---|---|"]
    judge = report_json["verdict_judge"]
    for c in report_json["cases"]:
        first = (
            "error: " + c["error"].splitlines()[0] if c["error"] else (c["first_divergent"][judge] or "none")
        )
        lines.append(
            f"| {c['case']} | {c['mode']} | {'ok' if c['passed'][judge] else '**FAIL**'} | {first} |"
        )
    return lines


def _parity(ctx, subjects, precision: str, weights: dict) -> dict[str, Any]:
    from parity import report
    from parity.runner import run as run_parity

    settings = _settings(ctx.plan, precision)
    found, torch_dit, layer_cases = _sampling(ctx, subjects, settings, weights)
    cases = _cases(ctx.plan) + layer_cases
    used = {n: subjects[n] for n in dict.fromkeys(n for c in cases for n in c.models)}
    result = run_parity(
        used,
        cases,
        settings,
        title=f"{ctx.plan.config} sizes on {ctx.plan.device}, torch {precision}",
        weights={"dit": weights["dit"]},
        torch_models={"dit": torch_dit},
        describe={"gpu_check": ctx.plan.as_dict()},
        progress=lambda name: ctx.log(f"{precision}: {name}"),
    )
    folder = ctx.folder / f"parity-{ctx.plan.config}-{precision}-{ctx.plan.device}"
    report.write(result, folder)
    as_json = report.to_json(result)
    return {
        "precision": precision,
        "passed": bool(result.passed) and found["passed"],
        "layers_passed": result.passed,
        "verdict_judge": result.verdict_judge,
        "first_divergent": report.first_divergent_text(result),
        "report": folder.name,
        "cases": [{k: c[k] for k in ("case", "mode", "passed", "error")} for c in as_json["cases"]],
        "sampling": found,
        "_table": _case_table(as_json),
    }


def device_distance(ctx, subjects) -> dict[str, Any]:
    """JAX fp32 (HIGHEST) on the device against JAX fp32 on the CPU, same weights and inputs: the
    largest `max|gpu - cpu| / max|cpu|` over every layer output and over the case outputs."""
    import jax

    from parity.capture_jax import JaxSide
    from parity.environment import PINNED, pinned
    from parity.metrics import compare
    from parity.runner import Lineup, Settings

    cpu = jax.devices("cpu")[0]
    wanted_cases = ctx.plan.distance_cases or DISTANCE_CASES
    cases = [c for c in _cases(ctx.plan) if c.name in wanted_cases]
    wanted = {n: subjects[n] for n in dict.fromkeys(n for c in cases for n in c.models)}
    settings = Settings(device="cpu")
    no_torch = dict.fromkeys(wanted)
    rows = []
    with pinned(PINNED, ctx.plan.device):
        here = Lineup.build(wanted, settings, torch_models=no_torch)
        with jax.default_device(cpu):
            there = Lineup.build(wanted, settings, weights=here.weights, torch_models=no_torch)
        for case in cases:
            if not ctx.clock.allows(20):
                rows.append({"case": case.name, "skipped": "time budget"})
                continue
            ctx.log(f"JAX fp32 device vs CPU: {case.name}")
            inputs = case.make_inputs(wanted, np.random.default_rng(settings.seed))
            pick = lambda lineup, case=case: {n: lineup.reference[n] for n in case.models}  # noqa: E731
            a = JaxSide("device", pick(here)).capture(case, inputs)
            with jax.default_device(cpu):
                b = JaxSide("cpu", pick(there)).capture(case, inputs)
            worst, where = 0.0, None
            for key, call in a.calls.items():
                for suffix, rec in call.outputs.items():
                    other = b.calls[key].outputs.get(suffix) if key in b.calls else None
                    if other is None or rec.value is None or rec.value.dtype.kind != "f":
                        continue
                    d = compare(rec.value, other.value).rel_max
                    if d > worst:
                        worst, where = d, key + suffix
            out = [
                compare(r.value, a_.value).rel_max
                for s, r in b.output.items()
                if (a_ := a.output.get(s)) is not None and r.value.dtype.kind == "f"
            ]
            rows.append(
                {
                    "case": case.name,
                    "max_layer_rel": worst,
                    "at": where,
                    "output_rel": max(out) if out else 0.0,
                }
            )
    same = ctx.plan.device == "cpu"
    return {"rows": rows, "note": "cpu vs cpu: no device here, plumbing only" if same else "device vs cpu"}


def run(ctx) -> StageResult:
    subjects = _subjects(ctx.plan)
    weights: dict = {}
    data: dict[str, Any] = {"runs": []}
    md = ["# Parity on the device", ""]
    verdicts = []
    for precision in PRECISIONS:
        if not ctx.clock.allows(30):
            verdicts.append(f"{precision} skipped (time budget)")
            continue
        found = _parity(ctx, subjects, precision, weights)
        table = found.pop("_table")
        data["runs"].append(found)
        verdicts.append(f"{precision} {'PASS' if found['passed'] else 'FAIL'}")
        s = found["sampling"]
        md += [
            f"## torch {precision} against JAX ({found['verdict_judge']}): {verdicts[-1].split()[-1]}",
            "",
            f"First divergent layer: {found['first_divergent']}. Report: `{found['report']}/report.md`.",
            "",
            *table,
            "",
            f"Sampling, {s['steps']} Euler steps, state and gaps after every step "
            f"(first failing step: {s['first_failing_step']}):",
            "",
            *trajectory.markdown(s, precision),
            "",
        ]
        ctx.partial(data, "\n".join(md), "; ".join(verdicts))
    if ctx.clock.allows(30):
        distance = device_distance(ctx, subjects)
        data["jax_fp32_device_vs_cpu"] = distance
        md += [
            f"## JAX fp32 on the device against JAX fp32 on the CPU ({distance['note']})",
            "",
            "Context for the fp32 bound (max|torch - ref| / max|ref| <= 1e-5): how far the reference itself "
            "moves between devices.",
            "",
            "| case | max over layers | at | case output |",
            "|---|---|---|---|",
        ]
        for r in distance["rows"]:
            if "skipped" in r:
                md.append(f"| {r['case']} | skipped ({r['skipped']}) | | |")
            else:
                md.append(f"| {r['case']} | {r['max_layer_rel']:.2e} | `{r['at']}` | {r['output_rel']:.2e} |")
    else:
        verdicts.append("device-vs-CPU distance skipped (time budget)")
    return StageResult("parity", "ran", data=data, markdown="\n".join(md) + "\n", verdict="; ".join(verdicts))
