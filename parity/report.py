"""Write what a run found: `report.json` (everything), `report.md` (a table per layer), and the figures.

The first divergent layer is stated at the top of both files, and the tolerance model is printed from
`parity.tolerance`, so a report always says by which numbers it judged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parity import figures
from parity.judge import FP32_JUDGE
from parity.results import CaseResult, RunResult, best_pairing

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
DEPTH_PNG = "error_vs_depth.png"
STEP_PNG = "error_vs_step.png"


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings. Four significant digits are plenty for an error and
    keep committed reports small."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def first_divergent_text(result: RunResult) -> str:
    found = result.first_divergent()
    if found is None:
        return "none"
    case, row = found
    if row is None:
        return f"{case.case} ({case.mode}): the case did not run: {(case.error or '').splitlines()[0]}"
    note = f" ({row.note})" if row.note else ""
    return f"`{row.label}` in {case.case} ({case.mode}){note}"


def to_json(result: RunResult) -> dict[str, Any]:
    summary = result.summary()
    found = result.first_divergent()
    return _finite(
        {
            "title": result.title,
            "passed": result.passed,
            "verdict_judge": result.verdict_judge,
            "first_divergent": None
            if found is None
            else {
                "case": found[0].case,
                "mode": found[0].mode,
                "layer": found[1].path if found[1] else None,
                "key": found[1].key if found[1] else None,
                "output": found[1].output if found[1] else None,
                "note": found[1].note if found[1] else found[0].error,
            },
            "settings": result.settings,
            "tolerance": result.tolerance,
            "pairings": {"summary": summary, "best": best_pairing(summary)},
            "environment": result.environment,
            "cases": [_case_json(c, result.verdict_judge) for c in result.cases],
        }
    )


def _case_json(case: CaseResult, judge: str) -> dict[str, Any]:
    return {
        "case": case.case,
        "covers": case.covers,
        "mode": case.mode,
        "passed": {j: case.passed(j) for j in case.judges},
        "first_divergent": {j: (r.key if (r := case.first_divergent(j)) else None) for j in case.judges},
        "error": case.error,
        "only_torch": case.only_torch,
        "steps": case.steps(),
        "rows": [row.as_dict() for row in case.rows],
    }


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}e}" if value != 0 else "0"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("ok" if ok else "**FAIL**")


def _layer_table(case: CaseResult) -> list[str]:
    judges = case.judges
    head = ["#", "layer", "kind", "max abs", "rel L2", "cosine", "p99 abs", ">1 ulp"]
    if judges == [FP32_JUDGE]:
        head += ["rel max", "pass"]
    else:
        head += ["err torch"]
        for j in judges:
            head += [f"err jax {j}", f"allowed {j}", f"pass {j}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(case.rows):
        m = row.torch
        cells = [str(i), f"`{row.label}`", row.kind]
        if m is None:
            cells += ["-"] * 5
        else:
            cells += [
                _num(m.max_abs),
                _num(m.rel_l2),
                f"{m.cosine:.6f}",
                _num(m.p99_abs),
                f"{m.share_over_1ulp:.3f}",
            ]
        if judges == [FP32_JUDGE]:
            cells += [_num(m.rel_max) if m else "-", _mark(row.passed.get(FP32_JUDGE))]
        else:
            cells += [_num(m.err) if m else "-"]
            for j in judges:
                jax_m = row.jax.get(j)
                cells += [
                    _num(jax_m.err) if jax_m else "-",
                    _num(row.allowance.get(j)),
                    _mark(row.passed.get(j)),
                ]
        if row.discrete:
            cells[2] += f" (exact; mismatches {row.mismatches})"
        if row.note:
            cells[1] += f" ({row.note})"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _steps_table(case: CaseResult, judge: str) -> list[str]:
    steps = case.steps()
    if not steps:
        return []
    metric = "torch_rel_max" if judge == FP32_JUDGE else "torch_err"
    lines = [
        "",
        f"Per Euler step ({case.mode}; {metric}, judged by {judge}):",
        "",
        "| step | state in | velocity | gaps | jax velocity | pass |",
        "|---|---|---|---|---|---|",
    ]
    for s in steps:
        state, velocity, gaps = (_num(s[w][metric]) if w in s else "-" for w in ("state", "velocity", "gaps"))
        jax_v = _num(s["velocity"]["jax_err"].get(judge)) if "velocity" in s and judge != FP32_JUDGE else "-"
        ok = all(s[w]["passed"].get(judge, False) for w in ("state", "velocity", "gaps") if w in s)
        lines.append(f"| {s['step']} | {state} | {velocity} | {gaps} | {jax_v} | {_mark(ok)} |")
    return lines


def _environment_lines(env: dict[str, Any]) -> list[str]:
    jax_env, torch_env = env["jax"], env["torch"]
    fp32 = ", ".join(f"{k} `{v}`" for k, v in torch_env["fp32_precision"].items())
    device = torch_env["device"] + (f" ({torch_env['cuda_device']})" if torch_env["cuda_device"] else "")
    return [
        f"- versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}",
        f"- platform: {env['platform']}",
        f"- JAX: backend `{jax_env['backend']}`, devices {jax_env['devices']}, default matmul precision "
        f"`{jax_env['default_matmul_precision']}`, x64 {jax_env['enable_x64']}, {jax_env['execution']}",
        f"- torch: device `{device}`, threads {torch_env['num_threads']}, fp32 precision {fp32}, "
        f"bf16 reduced-precision reduction {torch_env['allow_bf16_reduced_precision_reduction']}, "
        f"SDPA backend `{torch_env['sdpa_backend']}`, {torch_env['execution']}",
    ]


def to_markdown(result: RunResult, files: dict[str, str] | None = None) -> str:
    judge = result.verdict_judge
    s = result.settings
    out = [
        f"# Parity report: {result.title}",
        "",
        f"**Verdict: {'PASS' if result.passed else 'FAIL'}** (torch `{s['precision']}` judged against "
        f"`{judge}`). First divergent layer: {first_divergent_text(result)}.",
        "",
        "## Settings",
        "",
        f"- torch precision policy: `{s['precision']}`; JAX bf16 norm numerics measured: "
        f"{', '.join(f'`{n}`' for n in s['numerics']) or 'none (fp32 run)'}",
        f"- modes: {', '.join(s['modes'])}; device: `{s['device']}`; weight seed: {s['seed']}",
    ]
    for name, subject in s.get("subjects", {}).items():
        out.append(f"- `{name}`: {json.dumps(subject['config'])}")
    for key in ("orbax", "weights"):
        if key in s:
            out.append(f"- {key}: `{s[key]}`")
    for name, trace in s.get("traces", {}).items():  # a run judged from traces (parity/compare.py)
        layers = f", layers `{trace['trace_layers']}` only" if trace.get("trace_layers") else ""
        out.append(f"- {trace['side']} trace `{name}`: {trace['size']}{layers}")
    out += [f"- note: {note}" for note in s.get("notes", [])]
    t = result.tolerance
    out += [
        "",
        "## Tolerance model (parity/tolerance.py)",
        "",
        f"- reference: {t['bf16_error'].split('ref = ')[1]}",
        f"- fp32 layer: `{t['fp32_rule']}`, fp32_rel_max = {t['fp32_rel_max']}",
        f"- bf16 layer: `{t['bf16_rule']}`, with `{t['bf16_error'].split(',')[0]}`, "
        f"bf16_jax_factor = {t['bf16_jax_factor']}, bf16_ulp_factor = {t['bf16_ulp_factor']}",
        f"- discrete outputs: {t['discrete_rule']}",
    ]
    summary = result.summary()
    if any(j != FP32_JUDGE for j in summary):
        best = best_pairing(summary)
        out += [
            "",
            "## Which flax-era numerics this policy matches",
            "",
            "| torch policy | JAX norm numerics | layer outputs passing | cases passing | "
            "elements identical to JAX (isolated) | median max\\|torch-jax\\|/rms(ref) (isolated) | "
            "median err(torch)/err(jax) | max err(torch)/err(jax) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for j, v in summary.items():
            out.append(
                f"| `{s['precision']}` | `{j}`{' (best)' if j == best else ''} | {v['passed']}/{v['rows']} | "
                f"{v['cases_passed']}/{v['cases']} | {_pct(v['identical'])} | {_num(v['median_distance'])} | "
                f"{_num(v['median_err_ratio'])} | {_num(v['max_err_ratio'])} |"
            )
    out += ["", "## Environment (pinned for the run)", "", *_environment_lines(result.environment)]
    if files:
        out += ["", "Figures: " + ", ".join(f"[{name}]({name})" for name in files.values())]
    out += ["", "## Cases", ""]
    out += ["| case | mode | covers | pass | first divergent |", "|---|---|---|---|---|"]
    for case in result.cases:
        row = case.first_divergent(judge)
        first = (
            "error: " + (case.error or "").splitlines()[0]
            if case.error
            else (f"`{row.label}`" if row else "none")
        )
        out.append(f"| {case.case} | {case.mode} | {case.covers} | {_mark(case.passed(judge))} | {first} |")
    for case in result.cases:
        out += ["", f"### {case.case} — {case.mode} — {'PASS' if case.passed(judge) else 'FAIL'}", ""]
        if case.error:
            out += ["```", case.error.strip(), "```"]
            continue
        out += _layer_table(case)
        out += _steps_table(case, judge)
        if case.only_torch:
            shown = ", ".join(f"`{k}`" for k in case.only_torch[:12])
            more = f" and {len(case.only_torch) - 12} more" if len(case.only_torch) > 12 else ""
            out += ["", f"Calls only torch made (not compared): {shown}{more}"]
    return "\n".join(out) + "\n"


def write(result: RunResult, directory: str | Path) -> dict[str, Path]:
    """Write every file of the report into `directory`; returns {what: path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {"depth": figures.error_vs_depth(result, directory / DEPTH_PNG)}
    step = figures.error_vs_step(result, directory / STEP_PNG)
    if step is not None:
        written["step"] = step
    (directory / REPORT_JSON).write_text(
        json.dumps(to_json(result), separators=(",", ":"), default=str) + "\n"
    )
    (directory / REPORT_MD).write_text(to_markdown(result, {k: p.name for k, p in written.items()}))
    written["json"] = directory / REPORT_JSON
    written["md"] = directory / REPORT_MD
    return written
