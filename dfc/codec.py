"""Whole videos in and out of the VAE, and DiT samples out to videos: the Python API behind `dfc`.

`compress_video` reads a video, splits it into clips, fits it to the model and encodes clips of equal
length as one batch (`compress_fitted`), returning a `dfc.container.CompressedVideo`; each of those steps
runs once, in that order (`dfc compress` runs the same steps itself, keeping the fitted frames to
measure against). `decompress_video` turns one back into frames at the source's size and frame rate.
`generate` samples latents and gaps with the DiT and decodes each sample at its predicted length.

Clips of different lengths are never padded into one batch: GroupNorm mixes statistics over every
frame of a clip, so padding would change what the model computes (MODEL_SPEC section 2).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from dfc.container import (
    ClipLatents,
    CompressedVideo,
    ContainerError,
    KeepSettings,
    ModelInfo,
    check_weights,
)
from dfc.latent_values import stored_values
from dfc.video import Crop, fit_to_model, read_video, restore_frames, split_clips, to_uint8
from torch_impl.dit import VideoDiT
from torch_impl.sampling import gaps_to_positions, sample
from torch_impl.selection import MODES, Compressed
from torch_impl.vae import VideoVAE

DEFAULT_CLIP_FRAMES = 32
DEFAULT_BATCH = 4
DEFAULT_FPS = 25.0


class Decompressed(NamedTuple):
    frames: np.ndarray  # uint8 (T, H, W, 3) at the source resolution
    fps: float


@dataclass
class GeneratedVideo:
    seed: int
    frames: np.ndarray  # uint8 (total, H, W, 3)
    positions: np.ndarray  # (N,) frame index of each generated latent frame
    gaps: np.ndarray  # (N,) the DiT's raw (unrounded) gap predictions
    total: int
    squeezed_from: int | None = None  # the predicted length, when it exceeded what the VAE decodes

    @property
    def num_frames(self) -> int:
        return self.total


def model_info(vae: VideoVAE, weights_id: str) -> ModelInfo:
    cfg = vae.config
    return ModelInfo(cfg.height, cfg.width, cfg.num_patches, cfg.latent_dim, weights_id, cfg.to_dict())


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="clip", disable=not enabled, leave=False)


def _batches_by_length(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by equal length, at most `batch_size` per group, in first-seen order."""
    groups: dict[int, list[int]] = defaultdict(list)
    for index, length in enumerate(lengths):
        groups[length].append(index)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            yield members[start : start + batch_size]


def keep_count(num_frames: int, k: int | None, keep_rate: float | None) -> int | None:
    """Top-K budget of one clip: `k` as given, or `keep_rate` of its frames (at least one)."""
    if keep_rate is not None:
        return min(num_frames, max(1, round(keep_rate * num_frames)))
    return k


def bernoulli_noise(seed: int, clip_index: int, num_frames: int) -> np.ndarray:
    """Uniform draws for one clip, fixed by `(seed, clip_index)`: the same whatever the batching."""
    return np.random.default_rng([seed, clip_index]).random(num_frames, dtype=np.float32)


def check_keep(mode: str, k: int | None, keep_rate: float | None) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown keep mode {mode!r}; choose one of {', '.join(MODES)}")
    if k is not None and keep_rate is not None:
        raise ValueError("give either k or keep_rate, not both")
    if mode == "topk" and k is None and keep_rate is None:
        raise ValueError("topk keeps the K most important frames: give k or keep_rate")
    if mode != "topk" and (k is not None or keep_rate is not None):
        raise ValueError(f"k and keep_rate choose a top-K budget; they mean nothing in {mode} mode")
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if keep_rate is not None and not 0 < keep_rate <= 1:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")


def compress_frames(
    vae: VideoVAE,
    video: np.ndarray,
    spans: Sequence[tuple[int, int]],
    *,
    mode: str = "threshold",
    k: int | None = None,
    keep_rate: float | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
) -> list[ClipLatents]:
    """Model-size float frames `(T, h, w, 3)` in [0, 1] and their clips (`dfc.video.split_clips`) -> the
    kept latents of each clip (float32)."""
    check_keep(mode, k, keep_rate)
    clips: list[ClipLatents | None] = [None] * len(spans)
    with _progress(len(spans), "compressing", progress) as bar:
        for members in _batches_by_length([stop - start for start, stop in spans], batch_size):
            batch = [(i, spans[i][0], video[slice(*spans[i])]) for i in members]
            for index, clip in zip(members, compress_clip_batch(vae, batch, mode, k, keep_rate, seed)):
                clips[index] = clip
            bar.update(len(members))
    return clips  # type: ignore[return-value]


def compress_clip_batch(
    vae: VideoVAE,
    batch: Sequence[tuple[int, int, np.ndarray]],
    mode: str,
    k: int | None,
    keep_rate: float | None,
    seed: int,
) -> list[ClipLatents]:
    """Clips of equal length `[(clip index, first frame, frames (T, h, w, 3))]`, encoded as one batch."""
    length = len(batch[0][2])
    frames = torch.from_numpy(np.stack([clip for _, _, clip in batch])).to(_device(vae))
    noise = None
    if mode == "bernoulli":
        noise = torch.from_numpy(np.stack([bernoulli_noise(seed, i, length) for i, _, _ in batch]))
    budget = keep_count(length, k, keep_rate) if mode == "topk" else None
    packed = vae.compress(frames, mode=mode, k=budget, noise=noise)
    kept = packed.kept.float().cpu().numpy()
    gaps = packed.gaps.cpu().numpy().astype(np.int32)
    counts = packed.kept_valid.sum(dim=1).tolist()
    return [
        ClipLatents(start, length, kept[row, : counts[row]].copy(), gaps[row, : counts[row]].copy())
        for row, (_, start, _) in enumerate(batch)
    ]


def compress_video(
    vae: VideoVAE,
    source: str | os.PathLike | np.ndarray,
    *,
    weights_id: str,
    fps: float | None = None,
    mode: str = "threshold",
    k: int | None = None,
    keep_rate: float | None = None,
    seed: int = 0,
    clip_frames: int = DEFAULT_CLIP_FRAMES,
    fit: str = "crop",
    latent_dtype: str = "bf16",
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
    source_name: str | None = None,
    extra: dict | None = None,
) -> CompressedVideo:
    """A video file (anything ffmpeg reads, a PNG folder) or uint8 frames `(T, H, W, 3)` -> `CompressedVideo`.

    Frames are fitted to the model (`fit`: "crop" = shorter side resized and centre-cropped, "stretch"),
    split into clips of `clip_frames` (the last one keeps its true length) and encoded. `mode` picks the
    kept frames: "threshold" (p > 0.5), "bernoulli" (draws fixed by `seed` and the clip index) or "topk"
    (`k` frames per clip, or `keep_rate` of each clip's frames). `weights_id` identifies the weights
    (`torch_impl.loading.weights_identity`) so that decoding with other weights is refused.
    """
    if isinstance(source, np.ndarray):
        frames, fps = source, float(fps or DEFAULT_FPS)
    else:
        frames, info = read_video(source)
        fps, source_name = float(fps or info.fps), source_name or Path(source).name
    spans = split_clips(len(frames), clip_frames, vae.config.max_temporal_len)  # a bad length fails first
    fitted, crop = fit_to_model(frames, vae.config.height, vae.config.width, fit)
    del frames  # the full-resolution copy is no longer needed; long videos are large
    return compress_fitted(
        vae, fitted, crop, spans, weights_id=weights_id, fps=fps, clip_frames=clip_frames, mode=mode, k=k,
        keep_rate=keep_rate, seed=seed, latent_dtype=latent_dtype, batch_size=batch_size, progress=progress,
        source_name=source_name, extra=extra,
    )  # fmt: skip


def compress_fitted(
    vae: VideoVAE,
    fitted: np.ndarray,
    crop: Crop,
    spans: Sequence[tuple[int, int]],
    *,
    weights_id: str,
    fps: float,
    clip_frames: int,
    mode: str = "threshold",
    k: int | None = None,
    keep_rate: float | None = None,
    seed: int = 0,
    latent_dtype: str = "bf16",
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
    source_name: str | None = None,
    extra: dict | None = None,
) -> CompressedVideo:
    """Frames already fitted to the model (`dfc.video.fit_to_model`: `fitted`, `crop`) and split into
    clips of `clip_frames` (`dfc.video.split_clips`: `spans`) -> `CompressedVideo`; the other arguments
    as `compress_video`'s."""
    clips = compress_frames(
        vae, fitted, spans, mode=mode, k=k, keep_rate=keep_rate, seed=seed, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    return compressed_video(
        vae, weights_id, clips, fps=fps, num_frames=len(fitted), crop=crop, clip_frames=clip_frames,
        mode=mode, k=k, keep_rate=keep_rate, seed=seed, latent_dtype=latent_dtype,
        source_name=source_name, extra=extra,
    )  # fmt: skip


def compressed_video(
    vae: VideoVAE,
    weights_id: str,
    clips: list[ClipLatents],
    *,
    fps: float,
    num_frames: int,
    crop: Crop,
    clip_frames: int,
    mode: str,
    k: int | None,
    keep_rate: float | None,
    seed: int,
    latent_dtype: str,
    source_name: str | None,
    extra: dict | None,
    latent_coding: str = "none",
) -> CompressedVideo:
    """The `CompressedVideo` of encoded `clips` and the settings that made them, for every compress route:
    the seed is recorded only where it drew the frames (Bernoulli), a keep rate among the notes."""
    notes = dict(extra or {})
    if keep_rate is not None:
        notes["keep_rate"] = keep_rate
    return CompressedVideo(
        fps=fps,
        num_frames=num_frames,
        crop=crop,
        model=model_info(vae, weights_id),
        keep=KeepSettings(mode=mode, k=k, seed=seed if mode == "bernoulli" else None),
        clips=clips,
        clip_frames=clip_frames,
        latent_dtype=latent_dtype,
        source_name=source_name,
        extra=notes,
        latent_coding=latent_coding,
    )


def check_model_fits(vae: VideoVAE, cv: CompressedVideo) -> None:
    """The latents of `cv` must be decodable by `vae`: same frame size, patches and latent channels."""
    cfg = vae.config
    ours = (cfg.height, cfg.width, cfg.num_patches, cfg.latent_dim)
    theirs = (cv.model.height, cv.model.width, cv.model.num_patches, cv.model.latent_dim)
    if ours != theirs:
        raise ContainerError(
            f"the file was made by a {theirs[1]}x{theirs[0]} model with {theirs[2]} patches x {theirs[3]} "
            f"latent channels; the loaded VAE is {ours[1]}x{ours[0]} with {ours[2]} x {ours[3]}"
        )
    longest = max(clip.num_frames for clip in cv.clips)
    if longest > cfg.max_temporal_len:
        raise ContainerError(f"a clip has {longest} frames, the VAE decodes at most {cfg.max_temporal_len}")


def decode_clips(
    vae: VideoVAE,
    clips: Sequence[ClipLatents],
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
) -> np.ndarray:
    """Kept latents of consecutive clips -> float32 model-size frames `(sum of clip frames, h, w, 3)`."""
    device = _device(vae)
    decoded: list[np.ndarray | None] = [None] * len(clips)
    with _progress(len(clips), "decoding", progress) as bar:
        for members in _batches_by_length([c.num_frames for c in clips], batch_size):
            slots = max(clips[i].kept for i in members)
            cfg = vae.config
            kept = np.zeros((len(members), slots, cfg.num_patches, cfg.latent_dim), np.float32)
            gaps = np.zeros((len(members), slots), np.int32)
            valid = np.zeros((len(members), slots), bool)
            for row, index in enumerate(members):
                clip = clips[index]
                kept[row, : clip.kept], gaps[row, : clip.kept], valid[row, : clip.kept] = (
                    clip.latents,
                    clip.gaps,
                    True,
                )
            packed = Compressed(
                torch.from_numpy(kept).to(device, vae.compute_dtype),
                torch.from_numpy(gaps).to(device),
                torch.from_numpy(valid).to(device),
                clips[members[0]].num_frames,
            )
            video = vae.decompress(packed).float().cpu().numpy()
            for row, index in enumerate(members):
                decoded[index] = video[row]
            bar.update(len(members))
    return np.concatenate(decoded)  # type: ignore[arg-type]


def decompress_video(
    vae: VideoVAE,
    cv: CompressedVideo,
    *,
    weights_id: str | None = None,
    full_frame: bool = True,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
) -> Decompressed:
    """`CompressedVideo` -> uint8 frames at the source's frame count and resolution, and its fps.

    With `weights_id`, refuses latents made by other weights. A "crop" fit comes back at the source size
    with the bands that were never compressed left black (`full_frame=False`: just the cropped box).
    """
    if weights_id is not None:
        check_weights(cv, weights_id)
    check_model_fits(vae, cv)
    frames = decode_clips(vae, cv.clips, batch_size=batch_size, progress=progress)
    return Decompressed(restore_frames(frames, cv.crop, full_frame=full_frame), cv.fps)


def with_latent_dtype(cv: CompressedVideo, latent_dtype: str) -> list[ClipLatents]:
    """The clips of `cv` as a reader gets them back after storing the latents as `latent_dtype`."""
    return [
        ClipLatents(c.start, c.num_frames, stored_values(c.latents, latent_dtype), c.gaps) for c in cv.clips
    ]


# ------------------------------------------------------------------------------------------- generation


def squeeze_positions(positions: np.ndarray, max_frames: int) -> np.ndarray:
    """Positions scaled so the last fits in `max_frames`, kept strictly increasing (needs N <= max_frames)."""
    if positions[-1] < max_frames:
        return positions
    scaled = np.rint(positions * (max_frames - 1) / positions[-1]).astype(np.int64)
    for i in range(1, len(scaled)):
        scaled[i] = max(scaled[i], scaled[i - 1] + 1)
    for i in range(len(scaled) - 1, -1, -1):
        ceiling = max_frames - 1 if i == len(scaled) - 1 else scaled[i + 1] - 1
        scaled[i] = min(scaled[i], ceiling)
    return scaled


def check_pair(dit: VideoDiT, vae: VideoVAE, num_latent_frames: int) -> None:
    d, v = dit.config, vae.config
    if (d.hw, d.compressed_channel_dim) != (v.num_patches, v.latent_dim):
        raise ValueError(
            f"the DiT makes latents of {d.hw} patches x {d.compressed_channel_dim} channels, the VAE decodes "
            f"{v.num_patches} x {v.latent_dim}: they are not a pair"
        )
    limit = min(d.max_temporal_len, v.max_temporal_len)
    if not 1 <= num_latent_frames <= limit:
        raise ValueError(f"num_latent_frames must be between 1 and {limit}, got {num_latent_frames}")


def generate(
    dit: VideoDiT,
    vae: VideoVAE,
    *,
    num_latent_frames: int = 8,
    steps: int = 100,
    seeds: Sequence[int] = (0,),
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
    compile: bool = False,
) -> list[GeneratedVideo]:
    """One video per seed: DiT sampling -> predicted gaps -> frame positions -> VAE decode.

    Each sample's noise depends on its seed alone, so a seed gives the same video in any batch. The output
    length is the predicted one (last position + 1); a prediction longer than the VAE can decode in one
    clip is squeezed to fit, and `squeezed_from` records the predicted length.
    """
    check_pair(dit, vae, num_latent_frames)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    cfg = dit.config
    results: list[GeneratedVideo] = []
    device = _device(dit)
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start : start + batch_size])
        noise = torch.stack(
            [
                torch.randn(
                    (num_latent_frames, cfg.hw, cfg.compressed_channel_dim),
                    generator=torch.Generator().manual_seed(int(seed)),
                )
                for seed in chunk
            ]
        ).to(device)
        mask = torch.ones(noise.shape[:2], dtype=torch.bool, device=device)
        latents, gaps = sample(dit, noise, mask, steps, progress=progress, compile=compile)
        positions, totals = gaps_to_positions(gaps, mask)
        clips, placements = [], []
        for row in range(len(chunk)):
            predicted = positions[row].cpu().numpy()
            placed = squeeze_positions(predicted, vae.config.max_temporal_len)
            clip_gaps = np.diff(placed, prepend=0).astype(np.int32)
            clips.append(ClipLatents(0, int(placed[-1]) + 1, latents[row].float().cpu().numpy(), clip_gaps))
            placements.append((placed, int(totals[row]) if placed[-1] != predicted[-1] else None))
        # samples of equal length decode as one batch; each is its own clip
        frames = np.split(to_uint8(decode_clips(vae, clips)), np.cumsum([c.num_frames for c in clips])[:-1])
        for row, seed in enumerate(chunk):
            placed, squeezed = placements[row]
            results.append(
                GeneratedVideo(
                    int(seed), frames[row], placed, gaps[row].cpu().numpy(), clips[row].num_frames, squeezed
                )
            )
    return results
