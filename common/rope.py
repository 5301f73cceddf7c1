"""Rotary position tables, computed once in float32 numpy so every framework uses the same numbers."""

from __future__ import annotations

import numpy as np

ROPE_BASE = 10_000.0
ROPE_ALPHA = 1.0


def rope_tables(max_len: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """`(cos, sin)`, each float32 `(1, max_len, 1, head_dim)`: position on axis 1, broadcast over heads.

    NTK-scaled base `base * alpha ** (hd / (hd - 2))`; the frequencies are repeated for both halves
    (`concat(freqs, freqs)`), matching `rotate_half`.
    """
    ntk_base = np.float32(ROPE_BASE * ROPE_ALPHA ** (head_dim / (head_dim - 2)))
    inv_freq = np.float32(1.0) / ntk_base ** (
        np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    )
    freqs = np.outer(np.arange(max_len, dtype=np.float32), inv_freq).astype(np.float32)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb)[None, :, None, :], np.sin(emb)[None, :, None, :]
