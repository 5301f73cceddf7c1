"""The frame mask's two accepted layouts, one rule for both implementations (docs/ARCHITECTURE.md)."""

from __future__ import annotations


def frame_mask_is_key_layout(shape: tuple[int, ...], batch: int, frames: int) -> bool:
    """Whether a frame mask of `shape` comes as `(B,1,1,T)` (the original port's key-mask layout, MODEL_SPEC
    section 2) rather than `(B,T)`; both mean the same. Any other shape is a `ValueError` naming both."""
    shape = tuple(shape)
    if shape == (batch, frames):
        return False
    if shape == (batch, 1, 1, frames):
        return True
    raise ValueError(
        f"mask must be (B, T) = ({batch}, {frames}) or (B, 1, 1, T) = ({batch}, 1, 1, {frames}), got {shape}"
    )
