"""What one run measures at which sizes: the published models on a GPU, the tiny ones on a CPU."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Plan:
    device: str  # torch device: "cuda" or "cpu"
    config: str  # "published" or "tiny"
    vae: str  # preset of the parity and benchmark VAE
    dit: str
    batch: int  # clips per parity case (the last one has a padded frame)
    frames: int
    steps: int  # Euler steps of the sampling trajectory
    small_vae: str  # the discrete-output stage's sizes ("a small size": many seeds at once)
    small_dit: str
    seeds: int  # 64 wherever a GPU runs (the figure); a CPU run checks plumbing on fewer
    discrete_steps: int
    bench_frames: int  # DiT latent frames and VAE frames of the benchmarks
    bench_batches: tuple[int, ...]
    compile_legs: bool  # torch.compile legs of the DiT benchmark (minutes on a CPU: GPU only)
    matmul: tuple[int, int, int]  # the bf16 matmul whose rate is the MFU's peak
    target_s: float  # seconds of timed runs per benchmark figure
    budget_s: float  # the whole run
    # a CPU run exercises every stage's plumbing on the fewest cases (None: every case)
    parity_cases: tuple[str, ...] | None = None
    distance_cases: tuple[str, ...] | None = None
    sdpa_cases: tuple[str, ...] | None = None
    sdpa_precisions: tuple[str, ...] = ("bf16", "fp32")
    layer_steps: str = "first, middle, last"  # sampler steps captured layer by layer ("first": step 0)
    # frames per clip of the discrete stage (None: 16 VAE frames, 8 DiT latent frames); a CPU run takes the
    # parity shape (`batch` seeds of `frames`), so JAX's per-shape compilations of the DiT are reused
    discrete_frames: int | None = None
    bench_vae: tuple[str, ...] = ("encode", "decode")  # the VAE benchmarks (a CPU run: decode alone)

    def as_dict(self) -> dict:
        return asdict(self)


def make_plan(device: str, config: str, budget_s: float | None = None) -> Plan:
    if config not in ("published", "tiny"):
        raise ValueError(f"--config must be 'published' or 'tiny', not {config!r}")
    published = config == "published"
    gpu = device == "cuda"
    batch, frames = (2, 4) if gpu or not published else (1, 3)
    few = {}
    if not gpu and not published:
        block = ("dit-block.factored_attention",)
        few = dict(
            parity_cases=block,
            distance_cases=block,
            sdpa_cases=block,
            sdpa_precisions=("bf16",),
            layer_steps="first",
            # the discrete stage on the parity stage's DiT shape: one seed per clip of the batch
            seeds=batch,
            discrete_frames=frames,
            bench_vae=("decode",),
        )
    return Plan(
        device=device,
        config=config,
        vae="vae-256" if published else "vae-tiny",
        dit="dit-256" if published else "dit-tiny",
        batch=batch,
        frames=frames,
        steps=100 if published else (6 if gpu else 2),
        small_vae="vae-small" if published else "vae-tiny",
        small_dit="dit-small" if published else "dit-tiny",
        seeds=few.pop("seeds", 64),
        discrete_steps=100 if published else (6 if gpu else 2),
        bench_frames=8 if published else 4,
        bench_batches=(1, 8) if published else ((1, 2) if gpu else (1,)),
        compile_legs=gpu,
        matmul=(8192, 8192, 8192) if gpu else (256, 256, 256),
        target_s=1.0 if gpu else 0.05,
        budget_s=budget_s if budget_s is not None else (300.0 if gpu else 3600.0),  # a CPU run: plumbing
        **few,
    )


class Clock:
    """The global time budget: every stage and every long loop asks it before starting more work."""

    def __init__(self, budget_s: float):
        self.start = time.monotonic()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds
