"""The two pictures of a report: error against depth (every layer in execution order) and against
sampler step. Small on purpose: reports are committed, so PNGs stay well under 200 KB."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parity.judge import FP32_JUDGE
from parity.results import RunResult
from parity.tolerance import FP32_REL_MAX

_DPI = 56
# carried errors accumulate along the run, so a line; isolated ones are per layer (often exactly 0), so dots
_STYLE = {"carried": "-", "isolated": "."}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _floor(values) -> np.ndarray:
    # a log axis cannot show an exact match; put it on the floor of the plot instead
    return np.maximum(np.asarray(values, dtype=np.float64), 1e-12)


def error_vs_depth(result: RunResult, path: str | Path) -> Path:
    plt = _plt()
    names = list(dict.fromkeys(c.case for c in result.cases))
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.9 * len(names)), squeeze=False)
    judge = result.verdict_judge
    for ax, name in zip(axes[:, 0], names):
        for case in (c for c in result.cases if c.case == name):
            rows = [r for r in case.rows if r.torch is not None and not r.discrete]
            if not rows:
                continue
            x = np.arange(len(rows))
            style = _STYLE.get(case.mode, "-")
            if case.mode == "isolated":
                x = x + 0.5  # side by side with the carried line, not on top of it
            if judge == FP32_JUDGE:
                ax.plot(
                    x,
                    _floor([r.torch.rel_max for r in rows]),
                    style,
                    color="C0",
                    lw=1,
                    ms=2,
                    label=f"torch rel max ({case.mode})",
                )
            else:
                ax.plot(
                    x,
                    _floor([r.torch.err for r in rows]),
                    style,
                    color="C0",
                    lw=1,
                    ms=2,
                    label=f"torch ({case.mode})",
                )
                for i, j in enumerate(case.judges):
                    ax.plot(
                        x,
                        _floor([r.jax[j].err if j in r.jax else np.nan for r in rows]),
                        style,
                        color=f"C{i + 1}",
                        lw=0.8,
                        ms=2,
                        label=f"jax {j} ({case.mode})",
                    )
                if case.mode == "isolated":
                    ax.plot(
                        x,
                        _floor([r.allowance.get(judge, np.nan) for r in rows]),
                        "_",
                        color="grey",
                        ms=3,
                        label=f"allowance {judge} (isolated)",
                    )
            bad = [i for i, r in enumerate(rows) if not r.passed.get(judge, False)]
            if bad:
                values = [rows[i].torch.rel_max if judge == FP32_JUDGE else rows[i].torch.err for i in bad]
                ax.plot(x[bad], _floor(values), "x", color="red", ms=6, label=f"fails ({case.mode})")
        if judge == FP32_JUDGE:
            ax.axhline(FP32_REL_MAX, color="grey", lw=0.6, ls="--", label="fp32 limit")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("max|x-ref|/max|ref|" if judge == FP32_JUDGE else "max|x-ref|/rms(ref)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, ncol=3, loc="upper left")
    axes[-1, 0].set_xlabel("layer output, in execution order (see report.md for names)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return Path(path)


def error_vs_step(result: RunResult, path: str | Path) -> Path | None:
    """None when the run had no sampler case."""
    sampled = [c for c in result.cases if c.steps()]
    if not sampled:
        return None
    plt = _plt()
    names = list(dict.fromkeys(c.case for c in sampled))
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.4 * len(names)), squeeze=False)
    judge = result.verdict_judge
    metric = "torch_rel_max" if judge == FP32_JUDGE else "torch_err"
    for ax, name in zip(axes[:, 0], names):
        for case in (c for c in sampled if c.case == name):
            steps = case.steps()
            x = [s["step"] for s in steps]
            style = "-" if case.mode == "carried" else ":"
            for what, color in (("velocity", "C0"), ("state", "C3")):
                values = [s[what][metric] if what in s else np.nan for s in steps]
                if not np.all(np.isnan(values)):
                    ax.plot(
                        x,
                        _floor(values),
                        style + "o",
                        color=color,
                        ms=3,
                        lw=1,
                        label=f"torch {what} ({case.mode})",
                    )
            if judge != FP32_JUDGE:
                values = [
                    s["velocity"]["jax_err"].get(judge, np.nan) if "velocity" in s else np.nan for s in steps
                ]
                ax.plot(
                    x,
                    _floor(values),
                    style + "s",
                    color="C1",
                    ms=3,
                    lw=0.8,
                    label=f"jax {judge} velocity ({case.mode})",
                )
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("Euler step", fontsize=8)
        ax.set_xticks(sorted({s["step"] for c in sampled if c.case == name for s in c.steps()}))
        ax.set_ylabel("max|x-ref|/max|ref|" if judge == FP32_JUDGE else "max|x-ref|/rms(ref)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return Path(path)
