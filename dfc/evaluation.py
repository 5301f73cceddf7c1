"""Evaluating compression over a folder of videos: the numbers of the user's table, per clip.

Per clip (model-size frames), encoded once:
- all-frames MSE / PSNR / SSIM: every frame kept, latents stored as `latent_dtype` (what a file holds),
  and the all-frames MSE again with 8-bit latents, to show what `--latent-dtype u8` costs;
- Bernoulli: `draws` independent draws of the keep decision, each decoded: kept frames and MSE as
  mean +- std over draws; keep rate = mean kept / frames; temporal compression = frames / mean kept;
  combined = temporal x the spatial ratio (values, 8x at the published size) and, in bytes, temporal x
  (uint8 pixel bytes / stored latent bytes per frame);
- top-K for each K of `topk`: MSE, and the frames for the comparison GIF.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dfc.container import BYTES_PER_VALUE
from dfc.latent_values import stored_values
from dfc.metrics import ms_ssim, mse, psnr, ssim
from dfc.video import to_uint8

DEFAULT_TOPK = (16, 8, 4, 1)
DEFAULT_DRAWS = 16
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif")


@dataclass
class ClipEvaluation:
    video: str
    clip: int
    start: int
    frames: int
    kept_mean: float
    kept_std: float
    keep_rate: float
    temporal: float
    combined: float  # temporal x spatial, counting values (the user's "combined compression")
    combined_bytes: float  # temporal x per-frame byte ratio of the stored latent dtype
    mse_all: float
    psnr_all: float
    ssim_all: float
    mse_all_u8: float
    mse_bernoulli_mean: float
    mse_bernoulli_std: float
    psnr_bernoulli: float
    ssim_bernoulli: float
    mse_topk: dict[str, float] = field(default_factory=dict)
    keep_probability: list[float] = field(default_factory=list)
    ms_ssim_all: float = math.nan  # NaN: rows written before MS-SSIM was measured, or frames under 11 px

    @property
    def label(self) -> str:
        return (
            f"{Path(self.video).with_suffix('').as_posix().replace('/', '_')}_clip{self.clip}_{self.frames}f"
        )


@dataclass
class ClipPictures:
    """What the figures of one clip need, kept out of the table."""

    original: np.ndarray  # uint8 (T, h, w, 3)
    topk: dict[str, np.ndarray]  # "Top-16" -> uint8 frames
    topk_keeps: dict[str, np.ndarray]  # "Top-16" -> (T,) bool
    bernoulli_keeps: np.ndarray  # (draws, T) bool


def find_videos(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def bernoulli_draws(seed: int, clip_key: int | Sequence[int], draws: int, frames: int) -> np.ndarray:
    """Uniform noise `(draws, frames)` fixed by the seed and the clip's key (`dfc evaluate`: the video's
    name and the clip's number in it, so a video's draws do not depend on which other videos ran)."""
    key = [clip_key] if isinstance(clip_key, int) else list(clip_key)
    return np.random.default_rng([seed, *key]).random((draws, frames), dtype=np.float32)


def evaluate_clip(
    vae,
    frames: np.ndarray,
    *,
    video: str,
    clip: int,
    start: int,
    noise: np.ndarray,
    topk: Sequence[int] = DEFAULT_TOPK,
    latent_dtype: str = "bf16",
    batch_size: int = 4,
) -> tuple[ClipEvaluation, ClipPictures]:
    """Every number of one clip. `frames`: float32 `(T, h, w, 3)` in [0, 1] at the model size."""
    import torch

    from torch_impl.selection import select_frames

    length = len(frames)
    device = next(vae.parameters()).device
    video_tensor = torch.from_numpy(np.ascontiguousarray(frames))[None].to(device)
    valid = torch.ones(1, length, dtype=torch.bool, device=device)
    with torch.inference_mode():
        mean, _, selection = vae.encoder(video_tensor, valid)
    mean = mean[0].float().cpu().numpy()
    prob = selection[0, :, 0].float().cpu()

    def decode(keeps: torch.Tensor, dtype: str = latent_dtype) -> np.ndarray:
        return decode_keeps(vae, stored_values(mean, dtype), keeps, batch_size)

    def choose(mode: str, rows: int, **kw) -> torch.Tensor:
        return select_frames(prob.expand(rows, length), valid.cpu().expand(rows, length), mode, **kw)

    everything = torch.ones(1, length, dtype=torch.bool)
    all_frames = decode(everything)[0]
    all_frames_u8 = decode(everything, "u8")[0]
    bernoulli_keeps = choose("bernoulli", len(noise), noise=torch.from_numpy(noise))
    bernoulli = decode(bernoulli_keeps)
    bernoulli_mse = np.array([mse(frames, recon) for recon in bernoulli])
    kept = bernoulli_keeps.sum(dim=1).numpy().astype(np.float64)
    topk_keeps = {f"Top-{k}": choose("topk", 1, k=k) for k in topk}
    topk_frames = {label: decode(keep)[0] for label, keep in topk_keeps.items()}

    spatial = vae.config.patch_dim / vae.config.latent_dim
    byte_ratio = vae.config.patch_dim / (vae.config.latent_dim * BYTES_PER_VALUE[latent_dtype])
    temporal = length / kept.mean()
    result = ClipEvaluation(
        video=video,
        clip=clip,
        start=start,
        frames=length,
        kept_mean=float(kept.mean()),
        kept_std=float(kept.std()),
        keep_rate=float(kept.mean() / length),
        temporal=float(temporal),
        combined=float(temporal * spatial),
        combined_bytes=float(temporal * byte_ratio),
        mse_all=mse(frames, all_frames),
        psnr_all=psnr(frames, all_frames),
        ssim_all=ssim(frames, np.clip(all_frames, 0, 1)),
        ms_ssim_all=ms_ssim(frames, np.clip(all_frames, 0, 1)),
        mse_all_u8=mse(frames, all_frames_u8),
        mse_bernoulli_mean=float(bernoulli_mse.mean()),
        mse_bernoulli_std=float(bernoulli_mse.std()),
        psnr_bernoulli=float(np.mean([psnr(frames, recon) for recon in bernoulli])),
        ssim_bernoulli=float(np.mean([ssim(frames, np.clip(recon, 0, 1)) for recon in bernoulli])),
        mse_topk={label: mse(frames, recon) for label, recon in topk_frames.items()},
        keep_probability=[round(float(p), 4) for p in prob],
    )
    pictures = ClipPictures(
        original=to_uint8(frames),
        topk={label: to_uint8(recon) for label, recon in topk_frames.items()},
        topk_keeps={label: keep[0].numpy() for label, keep in topk_keeps.items()},
        bernoulli_keeps=bernoulli_keeps.numpy(),
    )
    return result, pictures


def decode_keeps(vae, latents: np.ndarray, keeps, batch_size: int) -> np.ndarray:
    """Decode one clip's latents `(T, P, L)` under each keep mask of `keeps (N, T)`: `(N, T, h, w, 3)`.

    Goes through the real file path - pack the kept frames, then place them among fill tokens - so what
    is measured is what `compress` + `decompress` produce.
    """
    import torch

    from torch_impl.selection import Compressed, pack_kept

    device = next(vae.parameters()).device
    source = torch.from_numpy(latents)
    out = []
    for start in range(0, len(keeps), batch_size):
        keep = keeps[start : start + batch_size]
        kept, gaps, kept_valid = pack_kept(source.expand(len(keep), *source.shape), keep)
        packed = Compressed(
            kept.to(device, vae.compute_dtype), gaps.to(device), kept_valid.to(device), len(latents)
        )
        out.append(vae.decompress(packed).float().cpu().numpy())
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------ tables


@dataclass
class Summary:
    clips: int
    frames: float  # mean frames per clip
    mse_all: float
    mse_bernoulli: float
    kept_mean: float
    keep_rate: float
    temporal: float
    combined: float
    combined_bytes: float
    psnr_all: float
    ssim_all: float
    ms_ssim_all: float
    mse_all_u8: float


def summarize(results: Sequence[ClipEvaluation]) -> Summary:
    """Means over clips; temporal = mean frames / mean kept, as the user's table computes it (32/5.9)."""
    frames = float(np.mean([r.frames for r in results]))
    kept = float(np.mean([r.kept_mean for r in results]))
    temporal = frames / kept
    first = results[0]
    spatial = first.combined / first.temporal
    byte_ratio = first.combined_bytes / first.temporal
    return Summary(
        clips=len(results),
        frames=frames,
        mse_all=float(np.mean([r.mse_all for r in results])),
        mse_bernoulli=float(np.mean([r.mse_bernoulli_mean for r in results])),
        kept_mean=kept,
        keep_rate=float(np.mean([r.keep_rate for r in results])),
        temporal=temporal,
        combined=temporal * spatial,
        combined_bytes=temporal * byte_ratio,
        psnr_all=float(np.mean([r.psnr_all for r in results])),
        ssim_all=float(np.mean([r.ssim_all for r in results])),
        ms_ssim_all=float(np.mean([r.ms_ssim_all for r in results])),
        mse_all_u8=float(np.mean([r.mse_all_u8 for r in results])),
    )


def table_rows(results: Sequence[ClipEvaluation]) -> list[dict[str, object]]:
    """Flat rows for the CSV: one per clip, a column per top-K MSE."""
    rows = []
    for r in results:
        row = {k: v for k, v in asdict(r).items() if k not in ("mse_topk", "keep_probability")}
        row |= {f"mse_{label.lower().replace('-', '')}": value for label, value in r.mse_topk.items()}
        rows.append(row)
    return rows


def to_csv(results: Sequence[ClipEvaluation]) -> str:
    rows = table_rows(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def to_json(results: Sequence[ClipEvaluation], settings: dict[str, object]) -> str:
    document = {
        "settings": settings,
        "summary": asdict(summarize(results)),
        "clips": [asdict(r) for r in results],
    }
    return json.dumps(document, indent=2, allow_nan=True) + "\n"


def markdown_table(results: Sequence[ClipEvaluation]) -> str:
    """The per-clip table in the layout of the user's description, plus PSNR/SSIM and a summary."""
    header = (
        "| Clip | Frames | Kept frames | Keep rate | Compression | Combined | MSE (Bernoulli) | MSE (all) "
        "| PSNR | SSIM |"
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in results:
        lines.append(
            f"| {r.label} | {r.frames} | {r.kept_mean:.1f} ± {r.kept_std:.1f} | {r.keep_rate:.1%} "
            f"| {r.temporal:.1f}x | {r.combined:.0f}x "
            f"| {r.mse_bernoulli_mean:.4f} ± {r.mse_bernoulli_std:.4f} "
            f"| {r.mse_all:.4f} | {_db(r.psnr_all)} | {r.ssim_all:.3f} |"
        )
    s = summarize(results)
    lines += [
        "",
        f"All-frames MSE {s.mse_all:.4f} (8-bit latents {s.mse_all_u8:.4f}); "
        f"Bernoulli MSE {s.mse_bernoulli:.4f}; "
        f"mean keep rate {s.keep_rate:.1%} ({s.kept_mean:.1f}/{s.frames:.1f}); temporal {s.temporal:.1f}x; "
        f"combined {s.combined:.0f}x in values, {s.combined_bytes:.0f}x in bytes; PSNR {_db(s.psnr_all)}; "
        f"SSIM {s.ssim_all:.3f}; MS-SSIM {_ms_ssim(s.ms_ssim_all)} ({s.clips} clips)",
    ]
    return "\n".join(lines)


def _ms_ssim(value: float) -> str:
    return "n/a (frames under 11 px)" if math.isnan(value) else f"{value:.3f}"


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f} dB"
