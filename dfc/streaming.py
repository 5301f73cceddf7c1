"""Compressing a video clip by clip, so memory does not grow with its length (what `dfc compress` runs).

`dfc.video.open_video` + `fit_clips` read and fit one clip at a time; clips of equal length are encoded
`batch_size` at a time, and only the kept latents (the output) are kept: with a `ClipSpool`, not even
those (each clip is encoded and spooled to a temporary file as it is made, and the `.dfc` is written
from there). Quality (`measure`) and the cost of storing the latents (`quantization`) are summed per
clip, so they need no second copy of the video or of its latents either.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfc.container import ClipLatents, ClipSpool, CompressedVideo
from dfc.latent_values import stored_values
from dfc.video import VideoFrames, VideoInfo, check_clip_frames, fit_clips, open_video


@dataclass
class StreamedVideo:
    cv: CompressedVideo
    info: VideoInfo  # num_frames counted while reading
    quality: dict[str, dict[str, float]] = field(default_factory=dict)  # dtype -> {"mse", "psnr"}
    quantization: dict | None = None  # `container_report.quantization_effect`, when asked for
    warning: str | None = None  # the line printed about a file that did not decode cleanly (VideoFrames)


class _Squares:
    """Sum of squared errors over frames, for an MSE over the whole video."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, reference: np.ndarray, decoded: np.ndarray) -> None:
        diff = reference.astype(np.float64) - np.clip(decoded, 0, 1).astype(np.float64)
        self.total += float(np.sum(diff * diff))
        self.count += diff.size

    def result(self) -> dict[str, float]:
        error = self.total / self.count
        return {"mse": error, "psnr": float("inf") if error == 0 else float(10 * np.log10(1 / error))}


def compress_stream(
    vae,
    path: str | os.PathLike,
    *,
    opened: tuple[VideoInfo, VideoFrames] | None = None,
    weights_id: str,
    mode: str = "threshold",
    k: int | None = None,
    keep_rate: float | None = None,
    seed: int = 0,
    clip_frames: int = 32,
    fit: str = "crop",
    latent_dtype: str = "bf16",
    latent_coding: str = "none",
    spool: ClipSpool | None = None,
    quantization: bool = False,
    batch_size: int = 4,
    measure: Sequence[str] = (),
    max_frames: int | None = None,
    on_frames: Callable[[int], None] | None = None,
    extra: dict | None = None,
) -> StreamedVideo:
    """A video file (or PNG folder) -> `CompressedVideo`, reading and encoding `batch_size` clips at a time.

    The same latents as `codec.compress_video` (same clips, same Bernoulli draws per clip index).
    `measure`: latent dtypes whose decoded MSE/PSNR against the model-size input to report.
    `on_frames(n)` is called as each batch of `n` frames is done (progress). `opened`: what
    `dfc.video.open_video(path)` returned, when the caller opened the video already. `spool`: a
    `ClipSpool(latent_dtype, latent_coding, folder)` that takes each clip as it is made (then
    `write_container(out, streamed.cv, spool)`); `quantization`: report what storing the latents as
    `latent_dtype` costs (`container_report.quantization_effect`), measured before they are stored.
    """
    from dfc.codec import check_keep, compress_clip_batch, compressed_video, decode_clips
    from dfc.container_report import QuantizationTally

    check_keep(mode, k, keep_rate)
    if spool is not None and (spool.latent_dtype, spool.latent_coding) != (latent_dtype, latent_coding):
        raise ValueError("the spool stores latents otherwise than latent_dtype and latent_coding say")
    cfg = vae.config
    if opened is None:
        check_clip_frames(clip_frames, cfg.max_temporal_len)  # before ffmpeg starts
        opened = open_video(path, max_frames=max_frames)
    info, stream = opened
    crop, clips = fit_clips(
        stream, info, clip_frames, cfg.height, cfg.width, fit, max_len=cfg.max_temporal_len, source=path
    )
    squares = {dtype: _Squares() for dtype in measure}
    tally = QuantizationTally(latent_dtype) if quantization else None
    done: list[ClipLatents] = []
    pending: list[tuple[int, int, np.ndarray]] = []

    def flush() -> None:
        encoded = compress_clip_batch(vae, pending, mode, k, keep_rate, seed)
        for dtype, sums in squares.items():
            stored = [
                ClipLatents(c.start, c.num_frames, stored_values(c.latents, dtype), c.gaps) for c in encoded
            ]
            decoded = decode_clips(vae, stored, batch_size=batch_size)
            sums.add(np.concatenate([clip for _, _, clip in pending]), decoded)
        for clip in encoded:
            if tally is not None:
                tally.add(clip.latents)
            done.append(spool.add(clip) if spool is not None else clip)
        if on_frames is not None:
            on_frames(sum(len(clip) for _, _, clip in pending))
        pending.clear()

    for index, (start, frames) in enumerate(clips):
        if pending and (len(pending) == batch_size or len(frames) != len(pending[0][2])):
            flush()
        pending.append((index, start, frames))
    flush()
    num_frames = done[-1].start + done[-1].num_frames
    cv = compressed_video(
        vae, weights_id, done, fps=info.fps, num_frames=num_frames, crop=crop, clip_frames=clip_frames,
        mode=mode, k=k, keep_rate=keep_rate, seed=seed, latent_dtype=latent_dtype,
        source_name=Path(path).name, extra=extra, latent_coding=latent_coding,
    )  # fmt: skip
    counted = VideoInfo(num_frames, info.fps, info.width, info.height)
    quality = {dtype: sums.result() for dtype, sums in squares.items()}
    quantization = tally.result() if tally is not None else None
    return StreamedVideo(cv, counted, quality, quantization, stream.warning)
