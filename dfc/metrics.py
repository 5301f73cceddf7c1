"""Reconstruction quality of a video against its original: MSE, PSNR and SSIM, in numpy.

Videos are `(T, H, W, C)` floats in `[0, 1]` (uint8 frames are scaled first). Scores are averaged over
frames, so a clip of any length gives one number each.
"""

from __future__ import annotations

import numpy as np

# SSIM constants of Wang et al. (2004) for a dynamic range of 1.
_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


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
    error = mse(original, reconstruction)
    return float("inf") if error == 0 else float(10.0 * np.log10(1.0 / error))


def ssim(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Mean structural similarity: Gaussian window 11 / sigma 1.5 per channel, averaged over frames."""
    a, b = as_unit_float(original), as_unit_float(reconstruction)
    _check_same_shape(a, b)
    if a.ndim == 3:
        a, b = a[..., None], b[..., None]
    blur = _gaussian_blur
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + _SSIM_C1) * (2 * cov + _SSIM_C2)
    denominator = (mu_a**2 + mu_b**2 + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    return float(np.mean(numerator / denominator))


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _gaussian_blur(video: np.ndarray) -> np.ndarray:
    """Separable blur over H and W of `(T, H, W, C)`; edges reflect, so small frames still get a score."""
    size = min(_SSIM_WINDOW, video.shape[1], video.shape[2])
    size -= 1 - size % 2  # odd, so the window has a centre
    kernel = _gaussian_kernel(size, _SSIM_SIGMA)
    pad = size // 2
    out = video
    for axis in (1, 2):
        widths = [(0, 0)] * out.ndim
        widths[axis] = (pad, pad)
        padded = np.pad(out, widths, mode="reflect")
        out = sum(
            kernel[i] * np.take(padded, np.arange(i, i + out.shape[axis]), axis=axis) for i in range(size)
        )
    return out
