"""How a `.dfc` file stores latent values: bfloat16 bit patterns and per-channel 8-bit codes, in numpy
(no ml_dtypes), and what a reader gets back (`stored_values`). The file layout is dfc/container.py's."""

from __future__ import annotations

import numpy as np


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest, ties to even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():  # rounding could carry a NaN's payload into infinity; keep it a (quiet) NaN
        out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return out


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (exact: every bf16 value is a float32 value)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def quantize_u8(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel affine 8-bit codes of a clip's latents `(K, hw, L)`: `(codes uint8, scale (L,), low (L,))`.

    Each latent channel gets its own range (channels differ in scale), spread over 256 levels; the
    error per value is at most half a step, `scale / 2`.
    """
    low = latents.min(axis=(0, 1)).astype(np.float32)
    scale = ((latents.max(axis=(0, 1)) - low) / np.float32(255)).astype(np.float32)
    step = np.where(scale > 0, scale, np.float32(1))
    codes = np.clip(np.rint((latents - low) / step), 0, 255).astype(np.uint8)
    return codes, scale, low


def dequantize_u8(codes: np.ndarray, scale: np.ndarray, low: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * scale + low


def stored_values(latents: np.ndarray, latent_dtype: str) -> np.ndarray:
    """The float32 latents a reader gets back after storing `latents` as `latent_dtype`."""
    if latent_dtype == "f32":
        return np.asarray(latents, np.float32)
    if latent_dtype == "bf16":
        return bf16_bits_to_float32(float32_to_bf16_bits(latents))
    return dequantize_u8(*quantize_u8(np.asarray(latents, np.float32)))
