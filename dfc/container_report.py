"""What a compressed video's bytes are: where they go (`size_report`) and what storing the latents in a
smaller dtype costs (`quantization_effect`)."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from common import safetensors_header as framing
from dfc.container import (
    BYTES_PER_VALUE,
    LATENT_DTYPES,
    CompressedVideo,
    check_choice,
    encode_container,
)
from dfc.latent_values import stored_values


class QuantizationTally:
    """What storing latents as `latent_dtype` costs, summed clip by clip (`add` each clip's float32
    latents as the encoder made them) so that no clip needs to be kept; `result()` as
    `quantization_effect` returns it."""

    def __init__(self, latent_dtype: str = "u8"):
        check_choice("latent_dtype", latent_dtype, LATENT_DTYPES)
        self.latent_dtype = latent_dtype
        self.squared, self.count, self.worst, self.energy = 0.0, 0, 0.0, 0.0
        self.per_clip: list[float] = []

    def add(self, latents: np.ndarray) -> None:
        original = np.asarray(latents, np.float32)
        error = stored_values(original, self.latent_dtype) - original
        clip_worst = float(np.abs(error).max(initial=0.0))
        self.per_clip.append(clip_worst)
        self.squared += float(np.square(error, dtype=np.float64).sum())
        self.energy += float(np.square(original - original.mean(), dtype=np.float64).sum())
        self.count += error.size
        self.worst = max(self.worst, clip_worst)

    def result(self) -> dict[str, Any]:
        count = max(self.count, 1)
        mse = self.squared / count
        variance = self.energy / count
        return {
            "latent_dtype": self.latent_dtype,
            "values": self.count,
            "rmse": math.sqrt(mse),
            "max_abs_error": self.worst,
            "max_abs_error_per_clip": self.per_clip,
            "latent_std": math.sqrt(variance),
            "snr_db": 10 * math.log10(variance / mse) if mse > 0 and variance > 0 else math.inf,
            "latent_bytes": self.count * BYTES_PER_VALUE[self.latent_dtype],
            "latent_bytes_bf16": self.count * BYTES_PER_VALUE["bf16"],
        }


def quantization_effect(cv: CompressedVideo, latent_dtype: str = "u8") -> dict[str, Any]:
    """What storing these latents as `latent_dtype` costs: errors against float32 and bytes saved.

    Call it before writing (on the encoder's float32 latents): after reading, latents already are
    the stored values and the error would show as zero.
    """
    tally = QuantizationTally(latent_dtype)
    for clip in cv.clips:
        tally.add(clip.latents)
    return tally.result()


def size_report(
    cv: CompressedVideo,
    input_path: str | os.PathLike | None = None,
    written: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Where the bytes go. Every ratio is in bytes (stored file against uint8 RGB frames), not in values.
    `written`: the `.dfc` file of `cv`, when it is written (its header says it all); else the file's
    bytes are made in memory."""
    if written is not None:
        table, _, data_start = framing.read_table(written)
        container_bytes = os.path.getsize(written)
    else:
        data = encode_container(cv)
        container_bytes = len(data)
        table = framing.tensor_table(*_header_and_size(data))
    # entropy-coded latents take what their coded tensors take
    stored_latent_bytes = sum(entry.nbytes for name, entry in table.items() if ".latents" in name)
    per_value = BYTES_PER_VALUE[cv.latent_dtype]
    latent_frame_bytes = cv.model.num_patches * cv.model.latent_dim * per_value
    pixel_frame_bytes = cv.model.height * cv.model.width * 3
    raw_original = cv.num_frames * cv.width * cv.height * 3
    raw_model = cv.num_frames * pixel_frame_bytes
    input_bytes = os.path.getsize(input_path) if input_path is not None else None
    kept = cv.kept_frames
    values_ratio = pixel_frame_bytes / (cv.model.num_patches * cv.model.latent_dim)
    return {
        "container_bytes": container_bytes,
        "latent_bytes": stored_latent_bytes,
        "latent_bytes_uncoded": kept * latent_frame_bytes,
        "latent_coding": cv.latent_coding,
        "overhead_bytes": container_bytes - stored_latent_bytes,
        "raw_bytes_original": raw_original,
        "raw_bytes_model": raw_model,
        "input_bytes": input_bytes,
        "ratio_vs_raw_original": raw_original / container_bytes,
        "ratio_vs_raw_model": raw_model / container_bytes,
        "ratio_vs_input": input_bytes / container_bytes if input_bytes else None,
        "num_frames": cv.num_frames,
        "kept_frames": kept,
        "frames_per_clip": [clip.num_frames for clip in cv.clips],
        "kept_per_clip": [clip.kept for clip in cv.clips],
        "temporal_ratio": cv.num_frames / kept,
        "latent_dtype": cv.latent_dtype,
        "latent_frame_bytes": latent_frame_bytes,
        "pixel_frame_bytes": pixel_frame_bytes,
        "per_kept_frame_byte_ratio": pixel_frame_bytes / latent_frame_bytes,
        "per_kept_frame_value_ratio": values_ratio,
        "note": (
            f"ratios are in bytes: a kept latent frame stored as {cv.latent_dtype} is "
            f"{latent_frame_bytes:,} B against {pixel_frame_bytes:,} B of uint8 pixels at the model size "
            f"({pixel_frame_bytes / latent_frame_bytes:.1f}x; {values_ratio:.1f}x counting values)"
        ),
    }


def _header_and_size(data: bytes) -> tuple[dict[str, Any], int]:
    header, start = framing.parse(data)
    return header, len(data) - start
