"""Which frames to keep, and the packed format of the kept ones (MODEL_SPEC section 4).

All batched tensor ops: no Python loop over frames. Shapes use the one legend of
docs/ARCHITECTURE.md (K: kept slots, the largest kept count of the batch).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

MODES = ("threshold", "bernoulli", "topk")


class Compressed(NamedTuple):
    """A compressed batch: kept latent frames in time order plus the gaps that place them.

    `kept` `(B,K,P,L)` (zero in padding slots), `gaps` `(B,K)` int32 (`gaps[0]` = index of the first
    kept frame, `gaps[i]` = distance from kept frame i-1), `kept_valid` `(B,K)` bool, `num_frames` the
    frame count T of the input clip, i.e. of the decoded output.
    """

    kept: torch.Tensor
    gaps: torch.Tensor
    kept_valid: torch.Tensor
    num_frames: int


def _uniform(
    shape: torch.Size, noise: torch.Tensor | torch.Generator | None, device: torch.device
) -> torch.Tensor:
    if isinstance(noise, torch.Tensor):
        if noise.shape != shape:
            raise ValueError(f"bernoulli noise must have shape {tuple(shape)}, got {tuple(noise.shape)}")
        return noise.to(device)
    return torch.rand(shape, generator=noise, device=device)


def _topk(score: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """The k highest scores of each row; a stable sort sends ties to the earlier frame."""
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    ranks = torch.arange(score.shape[1], device=score.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ranks)
    k = torch.as_tensor(k, device=score.device).reshape(-1, 1)
    return rank < k


def select_frames(
    prob: torch.Tensor,
    valid: torch.Tensor,
    mode: str = "threshold",
    k: int | torch.Tensor | None = None,
    noise: torch.Tensor | torch.Generator | None = None,
) -> torch.Tensor:
    """Keep decision `(B,T)` bool from keep probabilities `prob (B,T)` and `valid (B,T)` bool.

    threshold: `p > 0.5`. bernoulli: `noise < p`, `noise` uniform [0,1) `(B,T)` (pass the same draws to
    both frameworks), a `torch.Generator`, or None for the global RNG. topk: the `k` (int or `(B,)`)
    most probable valid frames. Padded frames are never kept; a row that would keep nothing keeps its
    most probable valid frame (ties to the earlier one), so `gaps[0]` is always defined.
    """
    if mode not in MODES:
        raise ValueError(f"unknown selection mode {mode!r}; choose one of {', '.join(MODES)}")
    valid = valid.to(device=prob.device, dtype=torch.bool)
    score = prob.float().masked_fill(~valid, float("-inf"))
    if mode == "threshold":
        keep = prob > 0.5
    elif mode == "bernoulli":
        keep = _uniform(prob.shape, noise, prob.device) < prob
    else:
        if k is None:
            raise ValueError("topk selection needs k")
        keep = _topk(score, k)
    keep = keep & valid
    # argmax returns the first maximum: ties go to the earlier frame.
    best = torch.nn.functional.one_hot(score.argmax(dim=1), prob.shape[1]).bool()
    rescue = ~keep.any(dim=1, keepdim=True) & valid.any(dim=1, keepdim=True)
    return keep | (rescue & best)


def pack_kept(latent: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`latent (B,T,P,L)`, `keep (B,T)` -> `(kept (B,K,P,L), gaps (B,K) int32, kept_valid (B,K) bool)`."""
    keep = keep.to(device=latent.device, dtype=torch.bool)
    count = keep.sum(dim=1)
    num_slots = int(count.max()) if keep.numel() else 0
    # A stable sort of "dropped?" moves the kept frames to the front, still in time order.
    index = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :num_slots]
    kept_valid = torch.arange(num_slots, device=latent.device) < count[:, None]
    rows = torch.arange(latent.shape[0], device=latent.device)[:, None]
    kept = latent[rows, index] * kept_valid[..., None, None].to(latent.dtype)
    previous = torch.nn.functional.pad(index[:, :-1], (1, 0))
    gaps = torch.where(kept_valid, index - previous, 0).to(torch.int32)
    return kept, gaps, kept_valid


def place_kept(
    kept: torch.Tensor,
    gaps: torch.Tensor,
    kept_valid: torch.Tensor,
    num_frames: int,
    fill_token: torch.Tensor,
) -> torch.Tensor:
    """`(B, num_frames, P, L)` full of `fill_token` with each valid kept frame at `cumsum(gaps)`.

    The output has `kept`'s dtype. Raises ValueError when a position falls outside `[0, num_frames)`
    or two kept frames would share one (a gap after the first below 1).
    """
    batch, _, patches, channels = kept.shape
    kept_valid = kept_valid.to(device=kept.device, dtype=torch.bool)
    gaps = gaps.to(device=kept.device, dtype=torch.long)
    positions = gaps.cumsum(dim=1)
    if bool((kept_valid[:, 1:] & (gaps[:, 1:] < 1)).any()):
        raise ValueError("gaps after the first must be >= 1 where kept_valid")
    rows, slots = kept_valid.nonzero(as_tuple=True)
    frames = positions[rows, slots]
    if frames.numel() and (int(frames.min()) < 0 or int(frames.max()) >= num_frames):
        raise ValueError(
            f"kept frames at positions {int(frames.min())}..{int(frames.max())} do not fit in "
            f"{num_frames} frames"
        )
    fill = fill_token.to(device=kept.device, dtype=kept.dtype).reshape(1, 1, 1, channels)
    out = fill.expand(batch, num_frames, patches, channels).clone()
    out[rows, frames] = kept[rows, slots]
    return out
