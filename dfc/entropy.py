"""Lossless entropy coding of a `.dfc` file's stored latents (format version 2, docs/FORMAT.md).

`zstd`: a clip's stored latent values (bf16 bit patterns, float32 or 8-bit codes, little-endian) are laid
out channel by channel, then split into byte planes - every value's first byte, then every value's
second byte, ... - and compressed as one Zstandard frame (level `LEVEL`, content size recorded in the
frame). Byte planes put the predictable bytes (sign and exponent of floats) together, away from the
mantissa bytes that are close to noise; channel-major order puts values of one distribution together.
docs/FORMAT.md gives the measurements this choice rests on.

Decoding checks the size the frame declares against the size the tensor's shape needs and against
`MAX_DECODED_BYTES` before anything is allocated, and refuses a frame that is not exactly one whole
frame. The `zstandard` package is imported only when a coded file is written or read.
"""

from __future__ import annotations

import math

import numpy as np

CODINGS = ("none", "zstd")
LEVEL = 19
# 256 MiB of decoded latents per clip: the published model's longest clip needs 6.3 MB (64 x 256 x 96 float32)
MAX_DECODED_BYTES = 256 * 1024 * 1024
FRAME_HEADER_MAX = 18  # bytes: a zstd frame header is never longer (ZSTD_FRAMEHEADERSIZE_MAX)


class EntropyError(ValueError):
    """Coded latents that cannot be decoded as they are; the message is one line."""


def encode(stored: np.ndarray, coding: str = "zstd") -> bytes:
    """The coded bytes of one clip's stored latents `(K, hw, L)` (bf16 bits, float32 or 8-bit codes)."""
    if coding != "zstd":
        raise ValueError(f"unknown latent coding {coding!r}; choose one of {', '.join(CODINGS[1:])}")
    import zstandard

    return zstandard.ZstdCompressor(level=LEVEL, write_content_size=True).compress(_planes(stored))


def check_frame(head: bytes, dtype: np.dtype, shape: tuple[int, int, int], coding: str = "zstd") -> int:
    """The decoded size latents of `shape` need, after checking it against `MAX_DECODED_BYTES` and against
    the size the frame declares (`head`: the coded bytes, or at least their first `FRAME_HEADER_MAX`)."""
    if coding != "zstd":
        raise EntropyError(f"unknown latent coding {coding!r}")
    expected_bytes = math.prod(shape) * dtype.itemsize
    if expected_bytes > MAX_DECODED_BYTES:
        raise EntropyError(
            f"the latents would take {expected_bytes:,} B decoded, more than the limit of "
            f"{MAX_DECODED_BYTES:,} B per clip"
        )
    import zstandard

    try:
        declared = zstandard.frame_content_size(head)
    except zstandard.ZstdError:
        raise EntropyError("the coded latents are not a zstd frame") from None
    if declared != expected_bytes:
        said = "no size" if declared < 0 else f"{declared:,} B"
        raise EntropyError(
            f"the coded latents declare {said} decoded, their shape needs {expected_bytes:,} B"
        )
    return expected_bytes


def decode(coded: bytes, dtype: np.dtype, shape: tuple[int, int, int], coding: str = "zstd") -> np.ndarray:
    """The stored latents `(K, hw, L)` back, when `coded` is one whole frame of exactly their size."""
    expected_bytes = check_frame(coded, dtype, shape, coding)
    import zstandard

    decoder = zstandard.ZstdDecompressor().decompressobj()
    try:
        planes = decoder.decompress(coded)
    except zstandard.ZstdError as err:
        raise EntropyError(f"the coded latents do not decode ({err})") from None
    if not decoder.eof or decoder.unused_data or len(planes) != expected_bytes:
        raise EntropyError("the coded latents are not exactly one whole zstd frame")
    return _unplanes(planes, dtype, shape)


def _planes(stored: np.ndarray) -> bytes:
    """Channel-major `(L, K, hw)`, then byte plane by byte plane."""
    channel_major = np.ascontiguousarray(stored.transpose(2, 0, 1))
    return np.frombuffer(channel_major.tobytes(), np.uint8).reshape(-1, stored.dtype.itemsize).T.tobytes()


def _unplanes(planes: bytes, dtype: np.dtype, shape: tuple[int, int, int]) -> np.ndarray:
    values = np.frombuffer(planes, np.uint8).reshape(dtype.itemsize, -1).T.tobytes()
    kept, patches, channels = shape
    return np.frombuffer(values, dtype).reshape(channels, kept, patches).transpose(1, 2, 0).copy()
