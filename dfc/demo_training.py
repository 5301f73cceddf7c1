"""The demo's own model: a small `jax_ref` VAE, briefly trained on the demo clip, saved as the training code
saves its checkpoints (`StandardCheckpointer`, `{"model": ..., "optimizer": ...}`, every leaf under
`value`), so that `dfc convert` and `dfc parity` see a real Orbax checkpoint.

Training runs a fixed number of Adam steps (not a time budget, so the demo gives the same model on any
machine) on short random crops of the clip: a few dozen are enough for the reconstruction to show the
picture instead of noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRAIN_CLIP_FRAMES = 8  # short crops: a step costs ~2 s at 64x64 on 2 cores, 16 frames cost 4x that
# Warm-up then cosine decay: a constant 2e-3 reached MSE ~0.07 in 24 steps, this schedule with a 6e-3 peak
# diverged, and with a 2.5e-3 peak it reaches ~0.013 in 36 steps (the demo clip, vae-small, seed 0).
PEAK_LEARNING_RATE = 2.5e-3


@dataclass
class TrainingResult:
    checkpoint: Path
    steps: int
    seconds: float
    first_loss: float | None
    last_loss: float | None


def build_and_train(
    config,
    frames: np.ndarray,
    checkpoint_dir: Path,
    *,
    steps: int,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> TrainingResult:
    """Build `jax_ref.VideoVAE(config)`, train it for `steps` steps on `frames` (float32 `(T, h, w, 3)` at
    the model size), and save the checkpoint to `checkpoint_dir/checkpoint_step_<steps>`."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import jax_ref

    start = time.monotonic()
    # float32 compute for training; the parameter tree (what the checkpoint holds) is the same in any dtype
    model = jax_ref.VideoVAE(config, rngs=nnx.Rngs(seed), dtype=jnp.float32)
    optimizer = nnx.Optimizer(
        model, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(_schedule(steps))), wrt=nnx.Param
    )

    @nnx.jit
    def train_step(model, optimizer, video):
        def loss_fn(model):
            return jnp.mean((_reconstruct(model, video).astype(jnp.float32) - video) ** 2)

        error, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return error

    rng = np.random.default_rng(seed)
    length = min(TRAIN_CLIP_FRAMES, len(frames))
    losses: list[float] = []
    for _ in range(steps):
        first = int(rng.integers(0, len(frames) - length + 1))
        losses.append(float(train_step(model, optimizer, jnp.asarray(frames[None, first : first + length]))))
        if len(losses) == 1 or len(losses) % 5 == 0:
            log(f"training  step {len(losses)}: reconstruction MSE {losses[-1]:.4f}")
    path = save_training_checkpoint(checkpoint_dir / f"checkpoint_step_{len(losses)}", model, optimizer)
    return TrainingResult(
        path,
        len(losses),
        time.monotonic() - start,
        losses[0] if losses else None,
        losses[-1] if losses else None,
    )


def _schedule(steps: int):
    """The learning rate per step: an eighth of the steps warming up (large early steps blow up the
    randomly initialised decoder), then cosine decay so the last steps refine instead of oscillate."""
    import optax

    warmup = max(1, steps // 8)
    # optax needs decay steps beyond the warm-up, also for the 0- and 1-step runs of quick demos
    return optax.warmup_cosine_decay_schedule(
        0.0, PEAK_LEARNING_RATE, warmup, max(steps, warmup + 1), PEAK_LEARNING_RATE * 0.05
    )


def _reconstruct(model, video):
    """Encode and decode every frame through the mean latent, the path compression takes for a kept frame.

    Not the full training objective (no latent noise, no frame dropping): in a few dozen steps the full
    objective teaches mostly the fill token, and kept frames decode worse than dropped ones; this one
    teaches the path a user sees. The selection head and the fill token keep their initial values.
    """
    import jax.numpy as jnp

    mask = jnp.ones(video.shape[:2], bool)
    mean, _, _ = model.encoder(video, mask)
    return model.decoder(mean, mask)


def save_training_checkpoint(path: Path, model, optimizer) -> Path:
    """`{"model": nnx.state(model), "optimizer": nnx.state(optimizer)}` as numpy arrays, saved by Orbax."""
    from flax import nnx

    from common.trees import nest_flat
    from convert.orbax_io import write_orbax
    from jax_ref import state_to_flat

    model_tree = nest_flat(
        {name: np.asarray(value, np.float32) for name, value in state_to_flat(model).items()}
    )
    optimizer_state = nnx.state(optimizer).to_pure_dict()
    optimizer_state.pop("model", None)  # flax 0.11+ keeps no model copy in the optimizer
    write_orbax(path, {"model": model_tree, "optimizer": _wrap_leaves(optimizer_state)})
    return path


def _wrap_leaves(tree):
    """Every leaf as `{"value": numpy array}`, the way nnx variables reach Orbax."""
    if isinstance(tree, dict):
        return {str(k): _wrap_leaves(v) for k, v in tree.items()}
    return {"value": np.asarray(tree)}
