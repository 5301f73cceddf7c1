"""Euler flow-matching sampler for the VideoDiT and the gap -> frame-position rule (MODEL_SPEC 5)."""

from __future__ import annotations

import torch

from torch_impl.dit import VideoDiT


def sample(
    dit: VideoDiT,
    noise: torch.Tensor,
    mask: torch.Tensor | None,
    num_steps: int,
    *,
    progress: bool = False,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate `dx/dt = v(x, t)` from `noise (B,T,P,L)` at t=0 with `num_steps` Euler steps.

    Step i uses `t = i / num_steps`. The state `x` stays float32 (the original port kept it in bf16, so
    each of the small updates was rounded); the model sees `x` cast to its compute dtype. The loop never
    waits for the device (no `.item()`, no host copies), so a GPU runs the steps back to back.
    `compile=True` runs the DiT through `torch.compile` (opt-in: the first call compiles for minutes
    on a CPU); on CUDA with mode "reduce-overhead", which replays each step as a CUDA graph.
    Returns `(x float32 (B,T,P,L), gaps float32 (B,T))`, the gaps from the last step.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    model = compiled(dit) if compile else dit
    steps = range(num_steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="sampling", unit="step")
    dtype = dit.compute_dtype
    batch = noise.shape[0]
    with torch.inference_mode():
        x = noise.float()
        gaps = None
        for i in steps:
            t = torch.full((batch, 1), i / num_steps, dtype=torch.float32, device=x.device)
            velocity, gaps = model(x.to(dtype), mask, t)
            x = x + velocity.float() / num_steps
        return x, gaps.float()


def compiled(dit: VideoDiT) -> torch.nn.Module:
    """`torch.compile(dit)` with static shapes; CUDA graphs on CUDA (every step has the same shapes)."""
    on_cuda = next(dit.parameters()).device.type == "cuda"
    return torch.compile(dit, dynamic=False, mode="reduce-overhead" if on_cuda else None)


def gaps_to_positions(
    gaps: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted gaps `(B,T)` -> `(positions (B,T) long, total (B,) long)`.

    Gaps are rounded (half to even, like jnp.round); the first is clamped to >= 0 and the rest to >= 1 so
    frames never collide; gaps where `mask` is False count 0. positions = cumsum; total = last valid
    position + 1 (0 for a row with no valid frame). [2,6,6,3,5,2,2,4] -> positions ending at 30, total 31.
    """
    rounded = torch.round(gaps.float())
    floor = torch.ones_like(rounded)
    floor[:, 0] = 0
    rounded = torch.maximum(rounded, floor).long()
    if mask is None:
        mask = torch.ones(gaps.shape, dtype=torch.bool, device=gaps.device)
    mask = mask.to(device=gaps.device, dtype=torch.bool)
    positions = torch.where(mask, rounded, 0).cumsum(dim=1)
    total = torch.where(mask, positions, -1).amax(dim=1) + 1
    return positions, total
