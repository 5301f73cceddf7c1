"""Stage 3: each scaled-dot-product-attention backend torch offers, judged separately by the parity suite.

`torch_impl.layers.Attention` calls `F.scaled_dot_product_attention(q, k, v, attn_mask=bias)` with an
additive float bias for the temporal key mask (None for spatial attention), on `(B, N, S, d)` in the
model's compute dtype. Each backend is pinned with `torch.nn.attention.sdpa_kernel` (parity's `--sdpa`
pin). Before a case runs, a probe asks torch whether the backend takes that dtype, head size and mask;
where it does not (flash attention takes no mask and no fp32), the case is n/a with torch's own reason.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

from bench.gpu_check.output import StageResult

BACKENDS = ("math", "flash", "efficient", "cudnn")
ENUM = {
    "math": "MATH",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}


def probe(
    backend: str, dtype: str, heads: int, head_dim: int, length: int, masked: bool, device: str
) -> str | None:
    """None when the backend runs SDPA on such inputs here; else torch's reason, in one line."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    tdtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    q = torch.randn(2, heads, length, head_dim, dtype=tdtype, device=device)
    bias = torch.zeros(2, 1, 1, length, dtype=tdtype, device=device) if masked else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([getattr(SDPBackend, ENUM[backend])]):
                F.scaled_dot_product_attention(q, q, q, attn_mask=bias)
            return None
        except RuntimeError as err:
            reasons = [str(w.message).strip() for w in caught]
            why = (
                "; ".join(dict.fromkeys(r.splitlines()[0] for r in reasons if r)) or str(err).splitlines()[0]
            )
            return why


def _cases(plan):
    from bench.gpu_check.cases import unmasked_block_case
    from parity.suites.vae_dit import cases as C

    shape = C.Shape(plan.batch, plan.frames)
    cases = [
        (C.block_case("dit-block", shape), True),
        (unmasked_block_case("dit-block", shape), False),
        (C.block_case("vae-block", shape), True),
    ]
    return [(c, m) for c, m in cases if plan.sdpa_cases is None or c.name in plan.sdpa_cases]


def _attention_shapes(subject, plan) -> list[tuple[int, int, int]]:
    """(heads, head_dim, length) of the block's two attentions: temporal over frames, spatial over patches."""
    cfg = subject.config
    patches = min(64, cfg.num_patches if hasattr(cfg, "num_patches") else cfg.hw)  # parity's block_inputs
    return [(cfg.num_heads, cfg.head_dim, plan.frames), (cfg.num_heads, cfg.head_dim, patches)]


def _margin(case_json: dict, judge: str) -> float | None:
    """Largest share of the allowance a layer used (1.0 = at the bound)."""
    worst = None
    for row in case_json["rows"]:
        torch_m = row.get("torch") or {}
        if judge == "fp32":
            value = torch_m.get("rel_max")
            limit = 1e-5
        else:
            value, limit = torch_m.get("err"), (row.get("allowance") or {}).get(judge)
        if isinstance(value, int | float) and isinstance(limit, int | float) and limit > 0:
            worst = max(worst or 0.0, value / limit)
    return worst


def run(ctx) -> StageResult:
    from bench.gpu_check.parity_stage import settings_for
    from common.config import PRESETS
    from parity import report
    from parity.environment import PINNED
    from parity.runner import run as run_parity
    from parity.suites.vae_dit.subjects import block_subject

    plan = ctx.plan
    subjects = {s.name: s for s in (block_subject(PRESETS[plan.dit]), block_subject(PRESETS[plan.vae]))}
    rows: list[dict[str, Any]] = []
    for backend in BACKENDS:
        for precision in plan.sdpa_precisions:
            settings = settings_for(plan, precision)
            settings = replace(settings, pins=PINNED.with_sdpa(backend), modes=("isolated",))
            runnable = []
            for case, masked in _cases(plan):
                (name,) = case.models
                reasons = [
                    probe(backend, precision, h, d, n, masked and i == 0, plan.device)
                    for i, (h, d, n) in enumerate(_attention_shapes(subjects[name], plan))
                ]
                why = next((r for r in reasons if r), None)
                if why:
                    rows.append(
                        {
                            "backend": backend,
                            "precision": precision,
                            "case": case.name,
                            "status": "n/a",
                            "reason": why,
                        }
                    )
                else:
                    runnable.append(case)
            if not runnable:
                continue
            if not ctx.allows(15):
                rows += [
                    {
                        "backend": backend,
                        "precision": precision,
                        "case": c.name,
                        "status": "skipped",
                        "reason": "time budget",
                    }
                    for c in runnable
                ]
                continue
            ctx.log(f"{backend} {precision}: {', '.join(c.name for c in runnable)}")
            used = {n for c in runnable for n in c.models}
            result = run_parity(
                {n: subjects[n] for n in used},
                runnable,
                settings,
                title=f"SDPA {backend}, torch {precision}, {plan.device}",
            )
            folder = ctx.folder / f"{backend}-{precision}"
            report.write(result, folder)
            judge = result.verdict_judge
            for c in report.to_json(result)["cases"]:
                error = c["error"]
                status = "ok" if c["passed"][judge] else "**FAIL**"
                if error and "No available kernel" in error:
                    status = "n/a"
                rows.append(
                    {
                        "backend": backend,
                        "precision": precision,
                        "case": c["case"],
                        "status": status,
                        "reason": error.splitlines()[0] if error else "",
                        "first_divergent": c["first_divergent"][judge],
                        "worst_share_of_bound": _margin(c, judge),
                        "report": f"{folder.name}/report.md",
                    }
                )
        ctx.partial({"rows": rows}, _markdown(rows), "")
    failed = [r for r in rows if r["status"] == "**FAIL**"]
    ran = [r for r in rows if r["status"] in ("ok", "**FAIL**")]
    verdict = (
        f"{len(ran) - len(failed)}/{len(ran)} backend runs pass; "
        f"{sum(r['status'] == 'n/a' for r in rows)} n/a"
    )
    return StageResult("sdpa", "ran", data={"rows": rows}, markdown=_markdown(rows), verdict=verdict)


def _markdown(rows) -> str:
    lines = [
        "# SDPA backends",
        "",
        "Each backend pinned with `torch.nn.attention.sdpa_kernel`, judged in isolated mode (every layer on "
        "the reference's inputs). 'share of bound': the largest err(torch)/allowed of any layer.",
        "",
        "| backend | precision | case | pass | share of bound | first divergent / reason |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = r.get("worst_share_of_bound")
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['case']} | {r['status']} | "
            f"{'-' if share is None else f'{share:.2f}'} | "
            f"{r.get('first_divergent') or r.get('reason') or ''} |"
        )
    return "\n".join(lines) + "\n"
