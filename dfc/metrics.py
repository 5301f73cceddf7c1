"""Reconstruction quality of a video against its original: MSE, PSNR, SSIM and MS-SSIM.

Videos are `(T, H, W, C)` floats in `[0, 1]` (uint8 frames are scaled first). PSNR, SSIM and MS-SSIM
come from torchmetrics (Lightning AI's maintained metric library; imported only when a score is asked
for). PSNR is over the whole clip (its mean squared error); SSIM and MS-SSIM are means over frames.

SSIM: Gaussian window 11 / sigma 1.5 (Wang et al. 2004), shrunk to the frame on frames under 11 px.
MS-SSIM: five scales with the weights of Wang et al. (2003) need frames of at least 176 px (torchmetrics'
rule for an 11-px window at the coarsest scale); smaller frames get as many scales as fit, with the
first weights renormalised to sum to 1 (`ms_ssim_scales` says how many), and frames under 11 px get
no MS-SSIM at all (NaN, shown as n/a).
"""

from __future__ import annotations

import math

import numpy as np

WINDOW = 11
SIGMA = 1.5
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_FRAMES_PER_BATCH = 16  # frames scored together: bounds memory at large sizes


def as_unit_float(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.dtype == np.uint8:
        return video.astype(np.float64) / 255.0
    return video.astype(np.float64)


def mse(original: np.ndarray, reconstruction: np.ndarray) -> float:
    a, b = as_unit_float(original), as_unit_float(reconstruction)
    _check_same_shape(a, b)
    return float(np.mean((a - b) ** 2))


def psnr(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for a peak of 1; infinite for identical videos."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _tensors(original, reconstruction)
    return float(peak_signal_noise_ratio(b, a, data_range=1.0))


def ssim(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Mean structural similarity over frames (1 for identical frames)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _tensors(original, reconstruction, float32=True)
    window = _window(min(a.shape[-2:]))
    return _mean_over_frames(
        a,
        b,
        lambda x, y: structural_similarity_index_measure(
            y, x, data_range=1.0, kernel_size=window, sigma=SIGMA, reduction="none"
        ),
    )


def ms_ssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales frames of this size allow (5 from 176 px; 0: too small for any)."""
    side = min(height, width)
    for scales in range(len(MS_SSIM_WEIGHTS), 1, -1):
        if side >= 2**scales and side // (scales - 1) ** 2 > WINDOW - 1:
            return scales
    return 0


def ms_ssim_note(height: int, width: int) -> str:
    """How MS-SSIM is computed at this frame size, in words."""
    scales = ms_ssim_scales(height, width)
    if scales == 0:
        return "n/a: frames under 11 px"
    if scales == len(MS_SSIM_WEIGHTS):
        return "at 5 scales"
    return f"at {scales} scales (frames under 176 px; first {scales} weights, renormalised)"


def ms_ssim(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Mean multi-scale SSIM over frames, at `ms_ssim_scales` scales; NaN for frames too small for two."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    a, b = _tensors(original, reconstruction, float32=True)
    scales = ms_ssim_scales(*a.shape[-2:])
    if scales == 0:
        return math.nan
    weights = np.array(MS_SSIM_WEIGHTS[:scales])
    betas = tuple(float(w) for w in weights / weights.sum())
    return _mean_over_frames(
        a,
        b,
        lambda x, y: multiscale_structural_similarity_index_measure(
            y,
            x,
            data_range=1.0,
            kernel_size=WINDOW,
            sigma=SIGMA,
            betas=betas,
            normalize="relu",
            reduction="none",
        ),  # fmt: skip
    )


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")


def _tensors(original: np.ndarray, reconstruction: np.ndarray, float32: bool = False):
    """`(T, C, H, W)` float64 tensors of two videos (a single frame `(H, W, C)` or `(H, W)` is one frame).

    float32 for the windowed scores: torch's float64 convolutions on CPU are about 10x slower.
    """
    import torch

    a, b = as_unit_float(original), as_unit_float(reconstruction)
    _check_same_shape(a, b)
    if a.ndim == 2:
        a, b = a[None, ..., None], b[None, ..., None]
    elif a.ndim == 3:
        a, b = a[None], b[None]
    dtype = np.float32 if float32 else np.float64
    return (torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2), dtype)) for v in (a, b))


def _window(side: int) -> int:
    size = min(WINDOW, side)
    return size - (1 - size % 2)  # odd, so the window has a centre


def _mean_over_frames(a, b, score) -> float:
    total = 0.0
    for start in range(0, a.shape[0], _FRAMES_PER_BATCH):
        stop = start + _FRAMES_PER_BATCH
        total += float(score(a[start:stop], b[start:stop]).sum())
    return total / a.shape[0]
