"""Rate-distortion results: mean curve, BD-rate, entropy-coding gain, CSV/JSON/Markdown and PNG curves.

BD-rate (Bjontegaard) is the `bjontegaard` package's (`bd_rate`, piecewise cubic "pchip" interpolation of
log-rate over quality, averaged over the quality range both curves cover): the average change in bytes
of the `.dfc` curve against a baseline at equal quality, in percent (negative: the `.dfc` needs fewer).
Each curve is first reduced to its efficient points (sorted by rate, a point stays only if its quality
beats every cheaper point), since a rate-quality curve must rise. Where the quality ranges of the two
curves do not overlap, or a curve has fewer than two efficient points, there is no BD-rate and the
report says why.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from dfc.rd import RDPoint

NO_OVERLAP = "n/a: the quality ranges do not overlap"
TOO_FEW = "n/a: fewer than two points that rise in quality"
QUALITY = {"psnr": "PSNR (dB)", "ms_ssim": "MS-SSIM"}


def mean_points(points: Sequence[RDPoint]) -> list[RDPoint]:
    """The mean curve: each operating point (codec + setting) averaged over the clips that have it."""
    groups: dict[tuple[str, str], list[RDPoint]] = defaultdict(list)
    for p in points:
        groups[(p.codec, p.setting)].append(p)
    means = []
    for members in groups.values():
        first = members[0]
        values = {
            name: float(np.mean([getattr(p, name) for p in members]))
            for name in ("bytes", "bpp", "psnr", "ssim", "ms_ssim")
        }
        means.append(
            RDPoint(
                "mean",
                first.codec,
                first.setting,
                **values,
                frames=sum(p.frames for p in members),
                k=first.k,
                latent_dtype=first.latent_dtype,
                latent_coding=first.latent_coding,
                crf=first.crf,
            )  # fmt: skip
        )
    return means


def efficient(rates: Sequence[float], qualities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The points of a curve that rise: sorted by rate, each better in quality than all cheaper ones."""
    kept_r, kept_q = [], []
    for r, q in sorted(zip(rates, qualities)):
        if not (math.isfinite(r) and math.isfinite(q) and r > 0):
            continue
        if not kept_q or q > kept_q[-1]:
            if kept_r and r == kept_r[-1]:
                kept_r.pop(), kept_q.pop()
            kept_r.append(r)
            kept_q.append(q)
    return np.array(kept_r), np.array(kept_q)


def bd_rate(
    anchor: tuple[Sequence[float], Sequence[float]], test: tuple[Sequence[float], Sequence[float]]
) -> float | str:
    """BD-rate in percent of `test` (rates, qualities) against `anchor`, or the reason there is none."""
    import matplotlib

    matplotlib.use("Agg")  # bjontegaard imports pyplot
    import bjontegaard

    (ra, qa), (rt, qt) = efficient(*anchor), efficient(*test)
    if not len(ra) or not len(rt):
        return TOO_FEW
    low, high = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    if low > high:
        return NO_OVERLAP
    if len(ra) < 2 or len(rt) < 2:
        return TOO_FEW
    if low == high:
        return NO_OVERLAP
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = bjontegaard.bd_rate(
            ra, qa, rt, qt, method="pchip", require_matching_points=False, min_overlap=0
        )
    return float(value)


def bd_rates(points: Sequence[RDPoint], baselines: Sequence[str]) -> dict[str, dict[str, float | str]]:
    """For every `.dfc` curve: its BD-rate against each baseline, on PSNR and on MS-SSIM."""
    curves: dict[str, list[RDPoint]] = defaultdict(list)
    for p in points:
        curves[p.curve].append(p)
    table: dict[str, dict[str, float | str]] = {}
    for name, members in curves.items():
        if not name.startswith("dfc"):
            continue
        row: dict[str, float | str] = {}
        for baseline in baselines:
            for metric in QUALITY:
                anchor = curves.get(baseline)
                key = f"{baseline} {metric}"
                if not anchor:
                    row[key] = f"n/a: no {baseline} points (this ffmpeg has no lib{baseline})"
                    continue
                row[key] = bd_rate(
                    ([p.bytes for p in anchor], [getattr(p, metric) for p in anchor]),
                    ([p.bytes for p in members], [getattr(p, metric) for p in members]),
                )
        table[name] = row
    return table


def coding_gain(points: Sequence[RDPoint]) -> dict[str, float]:
    """Bytes saved by entropy coding at equal quality (coded and plain decode alike), per latent dtype:
    1 - coded bytes / plain bytes, summed over the operating points."""
    plain = {(p.clip, p.k, p.latent_dtype): p.bytes for p in points if p.latent_coding == "none"}
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for p in points:
        key = (p.clip, p.k, p.latent_dtype)
        if p.codec == "dfc" and p.latent_coding not in (None, "none") and key in plain:
            totals[f"{p.latent_dtype} {p.latent_coding}"][0] += p.bytes
            totals[f"{p.latent_dtype} {p.latent_coding}"][1] += plain[key]
    return {name: 1 - coded / raw for name, (coded, raw) in totals.items()}


# ------------------------------------------------------------------------------------------------ files


def to_csv(points: Sequence[RDPoint]) -> str:
    buffer = io.StringIO()
    names = [f.name for f in fields(RDPoint)]
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for p in points:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in asdict(p).items()})
    return buffer.getvalue()


def to_json(points, bd: dict[str, dict], gain: dict[str, float], settings: dict) -> str:
    document = {
        "settings": settings,
        "bd_rate_percent": bd,
        "coding_gain": gain,
        "points": [asdict(p) for p in points],
    }
    return json.dumps(document, indent=2, allow_nan=True) + "\n"


def _cell(value: float | str) -> str:
    return f"{value:+.1f}%" if isinstance(value, float) else value


def summary_lines(bd_mean: dict[str, dict[str, float | str]], gain: dict[str, float]) -> list[str]:
    """What `evaluate --rd` prints: the mean curve's BD-rates, a line per .dfc curve, and the coding gain."""
    lines, reasons = [], []
    for curve, row in bd_mean.items():
        cells = []
        for key, value in row.items():
            if isinstance(value, str):
                reasons.append(value)
                value = "n/a"
            cells.append(f"{key.replace('psnr', 'PSNR').replace('ms_ssim', 'MS-SSIM')} {_cell(value)}")
        lines.append(f"rd       {curve}: BD-rate " + (", ".join(cells) if cells else "(no baseline)"))
    for reason in dict.fromkeys(reasons):
        lines.append(f"rd       {reason}")
    lines.append(
        "rd       entropy coding saves "
        + ", ".join(f"{share:.1%} ({name})" for name, share in gain.items())
        + " of the file bytes at equal quality"
    )
    return lines


def demo_line(dfc: RDPoint, baseline: Sequence[RDPoint]) -> str:
    """One line: the .dfc point, the baseline's range, and the baseline's rate at the .dfc's PSNR."""
    name = baseline[0].codec
    low, high = min(baseline, key=lambda p: p.bpp), max(baseline, key=lambda p: p.bpp)
    text = (
        f".dfc {dfc.bpp:.3f} bpp at PSNR {dfc.psnr:.1f} dB; {name} {low.bpp:.3f}-{high.bpp:.3f} bpp at "
        f"{low.psnr:.1f}-{high.psnr:.1f} dB ({low.setting.upper()}-{high.setting.split()[-1]})"
    )
    rates, quality = efficient([p.bpp for p in baseline], [p.psnr for p in baseline])
    if len(rates) < 2 or not quality[0] <= dfc.psnr <= quality[-1]:
        return text + f"; at equal PSNR {NO_OVERLAP.removeprefix('n/a: ')}"
    needed = 10 ** float(np.interp(dfc.psnr, quality, np.log10(rates)))
    return text + f"; {name} needs {needed:.3f} bpp at that PSNR (.dfc: {dfc.bpp / needed:.2f}x its bytes)"


def markdown(points, bd_by_clip: dict[str, dict[str, dict]], gain: dict[str, float], settings: dict) -> str:
    """The summary: what was compared, BD-rates per clip and for the mean, coding gain, the mean points."""
    lines = [
        "# Rate and distortion: .dfc against x264/x265",
        "",
        f"- ffmpeg: {settings['ffmpeg']} ({settings['ffmpeg_path']})",
        *(
            f"- {name}: `{' '.join(args)} -crf <CRF>`, CRF {settings['crfs']}"
            for name, args in settings["baselines"].items()
        ),
        *(f"- {name}: {why}" for name, why in settings["missing"].items()),
        f"- .dfc: top-K {settings['topk']} x latent dtype {settings['dtypes']} x coding "
        f"{settings['codings']}, weights {settings['weights_identity']}",
        f"- frames at the model's size ({settings['model_size']}), as uint8; bytes are whole files; bits per "
        "pixel = 8 x bytes / (frames x height x width); MS-SSIM " + settings["ms_ssim_note"],
        "- BD-rate: average change in bytes of the .dfc curve at equal quality (negative = fewer bytes), "
        "bjontegaard pchip",
        "",
    ]
    baseline_cols = [key for key in next(iter(next(iter(bd_by_clip.values())).values()), {})]
    header = "| Clip | .dfc curve | " + " | ".join(f"BD-rate vs {c}" for c in baseline_cols) + " |"
    lines += [header, "|---" * (header.count("|") - 1) + "|"]
    for clip, table in bd_by_clip.items():
        for curve, row in table.items():
            lines.append(f"| {clip} | {curve} | " + " | ".join(_cell(row[c]) for c in baseline_cols) + " |")
    lines += [
        "",
        "Entropy coding (lossless, so at equal quality): "
        + "; ".join(f"{name} saves {share:.1%} of the file bytes" for name, share in gain.items()),
        "",
        "## Mean curve",
        "",
        "| Codec | Setting | Bytes | bpp | PSNR | SSIM | MS-SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        if p.clip == "mean":
            lines.append(
                f"| {p.codec} | {p.setting} | {p.bytes:,.0f} | {p.bpp:.4f} | {p.psnr:.2f} | {p.ssim:.4f} "
                f"| {'n/a' if math.isnan(p.ms_ssim) else f'{p.ms_ssim:.4f}'} |"
            )
    return "\n".join(lines) + "\n"


def curves_png(path: str | Path, title: str, points: Sequence[RDPoint]) -> None:
    """Bits per pixel against PSNR and MS-SSIM, one line per curve (codec, or .dfc dtype + coding)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    curves: dict[str, list[RDPoint]] = defaultdict(list)
    for p in points:
        curves[p.curve].append(p)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (metric, label) in zip(axes, QUALITY.items()):
        for name, members in curves.items():
            members = sorted(members, key=lambda p: p.bpp)
            style = "o-" if name.startswith("dfc") else "s--"
            values = [getattr(p, metric) for p in members]
            ax.plot([p.bpp for p in members], values, style, label=name, markersize=4)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks collide
        ax.set_xlabel("bits per pixel (whole file)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", linewidth=0.3)
    axes[0].set_title(title)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(
    folder: Path,
    points: Sequence[RDPoint],
    *,
    baselines: Sequence[str],
    crfs: Sequence[int],
    topk: Sequence[int],
    weights_identity: str | None,
    model_size: Sequence[int] | None,
    figures: bool = True,
) -> list[str]:
    """`rd.csv`, `rd.json`, `rd.md` and `curves/` in `folder` (each replaced whole); the lines to print."""
    from common.atomic import atomic_output
    from dfc.container import LATENT_DTYPES
    from dfc.entropy import CODINGS
    from dfc.metrics import ms_ssim_note
    from dfc.rd import BASELINE_ARGS, ffmpeg_facts, missing_baselines

    exe, version, _ = ffmpeg_facts()
    missing = missing_baselines(baselines)
    height, width = model_size or (0, 0)
    settings = {
        "ffmpeg": version,
        "ffmpeg_path": exe,
        "baselines": {name: BASELINE_ARGS[name] for name in baselines if name not in missing},
        "missing": {name: f"n/a: this ffmpeg has no lib{name}" for name in missing},
        "crfs": list(crfs),
        "topk": list(topk),
        "dtypes": list(LATENT_DTYPES),
        "codings": list(CODINGS),
        "weights_identity": weights_identity,
        "model_size": f"{width}x{height}",
        "ms_ssim_note": ms_ssim_note(height, width),
    }
    means = mean_points(points)
    per_clip: dict[str, list[RDPoint]] = defaultdict(list)
    for p in points:
        per_clip[p.clip].append(p)
    bd = {label: bd_rates(members, baselines) for label, members in per_clip.items()}
    bd["mean"] = bd_rates(means, baselines)
    gain = coding_gain(points)
    everything = [*points, *means]
    texts = {
        "rd.csv": to_csv(everything),
        "rd.json": to_json(everything, bd, gain, settings),
        "rd.md": markdown(everything, bd, gain, settings),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        with atomic_output(folder / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    if figures:
        with atomic_output(folder / "curves", is_dir=True) as curves:
            curves.mkdir(exist_ok=True)
            for label, members in per_clip.items():
                curves_png(curves / f"rd_{label}.png", label, members)
            curves_png(curves / "rd_mean.png", f"mean of {len(per_clip)} clip(s)", means)
    return summary_lines(bd["mean"], gain)
