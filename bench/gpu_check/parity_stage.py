"""Stage 2: bf16 and fp32 parity on the device at the chosen sizes, judged by the project's parity suite.

Torch on the device against JAX on the same device (`parity.runner.run`: fp32 reference at matmul
precision HIGHEST, TF32 off, JAX bf16 with the policy's natural norm numerics as the yardstick): one
FactoredAttention block of each model, the UNet, VAE encode/decode/compress, the DiT forward, and DiT
sampling (every step's state and gaps, `trajectory`; every layer at steps 0, N/2 and N-1). Then the
distance between JAX fp32 on the device and JAX fp32 on the CPU, as context for the 1e-5 bound.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from bench.gpu_check import trajectory
from bench.gpu_check.cases import step_case, unet_case
from bench.gpu_check.output import StageResult

PRECISIONS = ("bf16", "fp32")  # the bf16 suite is the headline; fp32 runs with TF32 off


def _subjects(plan) -> dict:
    from common.config import PRESETS
    from parity.suites.vae_dit.subjects import block_subject, dit_subject, unet_subject, vae_subject

    vae, dit = PRESETS[plan.vae], PRESETS[plan.dit]
    subjects = [block_subject(dit), block_subject(vae), unet_subject(vae), vae_subject(vae), dit_subject(dit)]
    # only the models the plan's cases and the sampling use are built (a CPU run has no VAE case)
    used = {n for case in _cases(plan) for n in case.models} | {"dit"}
    return {s.name: s for s in subjects if s.name in used}


def _cases(plan) -> list:
    from parity.suites.vae_dit import cases as C

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


def settings_for(plan, precision: str):
    from common.precision import Precision
    from parity.runner import Settings
    from parity.suites.vae_dit.subjects import NATURAL_NUMERICS

    p = Precision.parse(precision)
    numerics = (NATURAL_NUMERICS[p],) if p in NATURAL_NUMERICS else Settings().numerics
    return Settings(precision=p, numerics=numerics, device=plan.device, seed=0)


def _lineup(subjects, settings, weights: dict):
    """Every subject built once per precision (the runner reuses its weights and torch models)."""
    from parity.environment import pinned
    from parity.runner import Lineup

    with pinned(settings.pins, settings.device):
        lineup = Lineup.build(subjects, settings, weights=weights or None)
    weights.update(lineup.weights)
    return lineup


def _sampling(ctx, lineup, settings) -> tuple[dict, list]:
    """The trajectory judged after every step, and the layer-by-layer cases on the reference's states."""
    from parity.environment import pinned
    from parity.suites.vae_dit import cases as C

    plan = ctx.plan
    make = C.dit_inputs(C.Shape(plan.batch, plan.frames))
    inputs = make(lineup.subjects, np.random.default_rng(settings.seed))
    noise, mask = inputs["noise"], inputs["mask"]
    with pinned(settings.pins, plan.device):
        if "reference" not in ctx.cache:
            ctx.log(f"sampling: JAX fp32 reference, {plan.steps} steps")
            ctx.cache["reference"] = trajectory.jax_states(lineup.reference["dit"], noise, mask, plan.steps)
        reference = ctx.cache["reference"]
        jax_run = None
        if settings.precision.value != "fp32":
            ctx.log(f"sampling: JAX bf16 ({settings.verdict_judge}), {plan.steps} steps")
            model = lineup.jax[settings.verdict_judge]["dit"]
            jax_run = trajectory.jax_states(model, noise, mask, plan.steps)
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
    return found, layer_cases


def _case_rows(report_json: dict) -> list[dict[str, Any]]:
    judge = report_json["verdict_judge"]
    return [
        {
            "case": c["case"],
            "mode": c["mode"],
            "passed": c["passed"][judge],
            "first_divergent": c["first_divergent"][judge],
            "error": c["error"].splitlines()[0] if c["error"] else None,
        }
        for c in report_json["cases"]
    ]


def _case_table(rows: list[dict]) -> list[str]:
    lines = ["| case | mode | pass | first divergent | report |", "|---|---|---|---|---|"]
    for c in rows:
        if c.get("skipped"):
            lines.append(f"| {c['case']} | | skipped ({c['skipped']}) | | |")
            continue
        first = "error: " + c["error"] if c["error"] else (c["first_divergent"] or "none")
        mark = "ok" if c["passed"] else "**FAIL**"
        lines.append(f"| {c['case']} | {c['mode']} | {mark} | {first} | `{c['report']}` |")
    return lines


def _parity(ctx, subjects, precision: str, weights: dict, save) -> dict[str, Any]:
    """One precision: each case through the parity runner on its own (its report written at once), the
    sampling trajectory, then the layer-by-layer sampler steps."""
    from parity import report
    from parity.runner import run as run_parity

    settings = settings_for(ctx.plan, precision)
    lineup = _lineup(subjects, settings, weights)
    folder = ctx.folder / f"parity-{ctx.plan.config}-{precision}-{ctx.plan.device}"
    found: dict[str, Any] = {"precision": precision, "verdict_judge": settings.verdict_judge, "cases": []}
    found["report"] = folder.name

    def run_cases(cases) -> None:
        for case in cases:
            if not ctx.allows(15):
                found["cases"].append({"case": case.name, "skipped": "time budget", "passed": False})
                continue
            ctx.log(f"{precision}: {case.name}")
            used = {n: subjects[n] for n in case.models}
            result = run_parity(
                used,
                [case],
                settings,
                title=f"{case.name}, {ctx.plan.config} sizes on {ctx.plan.device}, torch {precision}",
                weights={n: lineup.weights[n] for n in used},
                torch_models={n: lineup.torch[n] for n in used},
                describe={"gpu_check": ctx.plan.as_dict()},
            )
            report.write(result, folder / case.name)
            for row in _case_rows(report.to_json(result)):
                found["cases"].append({**row, "report": f"{folder.name}/{case.name}/report.md"})
            save(found)

    run_cases(_cases(ctx.plan))
    if ctx.allows(20):
        found["sampling"], layer_cases = _sampling(ctx, lineup, settings)
        save(found)
        run_cases(layer_cases)
    else:
        found["sampling"] = None
    bad = next((c for c in found["cases"] if not c["passed"]), None)
    found["first_divergent"] = (
        "none"
        if bad is None
        else f"{bad['case']} ({bad.get('mode') or bad.get('skipped')}): "
        + str(bad.get("error") or bad.get("first_divergent") or bad.get("skipped"))
    )
    found["passed"] = bad is None and bool(found["sampling"]) and found["sampling"]["passed"]
    return found


def device_distance(ctx, subjects) -> dict[str, Any]:
    """JAX fp32 (HIGHEST) on the device against JAX fp32 on the CPU, same weights and inputs: the
    largest `max|gpu - cpu| / max|cpu|` over every layer output and over the case outputs."""
    import jax

    from parity.capture_jax import JaxSide
    from parity.environment import PINNED, pinned
    from parity.metrics import compare
    from parity.runner import Lineup, Settings

    cpu = jax.devices("cpu")[0]

    def on_cpu():
        # already there on a CPU run: entering jax.default_device would only make JAX compile every
        # eager op again for the "other" device (the default device is part of its cache key)
        return contextlib.nullcontext() if jax.default_backend() == "cpu" else jax.default_device(cpu)

    wanted_cases = ctx.plan.distance_cases or DISTANCE_CASES
    cases = [c for c in _cases(ctx.plan) if c.name in wanted_cases]
    wanted = {n: subjects[n] for n in dict.fromkeys(n for c in cases for n in c.models)}
    settings = Settings(device="cpu")
    no_torch = dict.fromkeys(wanted)
    rows = []
    with pinned(PINNED, ctx.plan.device):
        here = Lineup.build(wanted, settings, torch_models=no_torch)
        with on_cpu():
            there = Lineup.build(wanted, settings, weights=here.weights, torch_models=no_torch)
        for case in cases:
            if not ctx.allows(20):
                rows.append({"case": case.name, "skipped": "time budget"})
                continue
            ctx.log(f"JAX fp32 device vs CPU: {case.name}")
            inputs = case.make_inputs(wanted, np.random.default_rng(settings.seed))
            pick = lambda lineup, case=case: {n: lineup.reference[n] for n in case.models}  # noqa: E731
            a = JaxSide("device", pick(here)).capture(case, inputs)
            with on_cpu():
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


def _markdown(runs: list[dict], distance: dict | None) -> str:
    md = ["# Parity on the device", ""]
    for found in runs:
        precision = found["precision"]
        verdict = "PASS" if found.get("passed") else "FAIL (or incomplete)"
        md += [
            f"## torch {precision} against JAX ({found['verdict_judge']}): {verdict}",
            "",
            f"First divergent: {found.get('first_divergent', '(running)')}. Reports: `{found['report']}/`.",
            "",
            *_case_table(found["cases"]),
            "",
        ]
        s = found.get("sampling")
        if s:
            md += [
                f"Sampling, {s['steps']} Euler steps, state and gaps after every step "
                f"(first failing step: {s['first_failing_step']}):",
                "",
                *trajectory.markdown(s, precision),
                "",
            ]
    if distance:
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
    return "\n".join(md) + "\n"


def run(ctx) -> StageResult:
    subjects = _subjects(ctx.plan)
    weights: dict = {}
    data: dict[str, Any] = {"runs": []}
    verdicts = []

    def save(found):
        runs = [r for r in data["runs"] if r is not found] + [found]
        ctx.partial({"runs": runs}, _markdown(runs, None), "; ".join(verdicts))

    for precision in PRECISIONS:
        if not ctx.allows(30):
            verdicts.append(f"{precision} skipped (time budget)")
            continue
        found = _parity(ctx, subjects, precision, weights, save)
        data["runs"].append(found)
        verdicts.append(f"{precision} {'PASS' if found['passed'] else 'FAIL'}")
        save(found)
    distance = None
    if ctx.allows(30):
        distance = data["jax_fp32_device_vs_cpu"] = device_distance(ctx, subjects)
    else:
        verdicts.append("device-vs-CPU distance skipped (time budget)")
    return StageResult(
        "parity", "ran", data=data, markdown=_markdown(data["runs"], distance), verdict="; ".join(verdicts)
    )
