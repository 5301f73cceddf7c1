"""The child process of `dfc.convert_checks`: the checks that import torch or jax, one JSON line out.

`python -m dfc.convert_child shapes CONFIG_JSON [--cache FILE]` prints torch_impl's keys and shapes;
`python -m dfc.convert_child forward CONFIG_JSON --reference ... --converted ...` runs the forward check:
the JAX reference (`jax_ref`) gets the weights of one side (an Orbax checkpoint, or a PyTorch-format file
mapped back through the table), `torch_impl` loads the other side, both run fp32 on a small seeded input,
and every output must agree within `FORWARD_TOLERANCE` of the reference's scale.

The answer is `{"ok": true, ...}`, `{"ok": false, "error": ...}` or `{"skipped": why}`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.atomic import atomic_output

# The original's own JAX/PyTorch comparison: fp32 on both sides, a flat 1e-3 (MODEL_SPEC section 7). Here
# relative to the largest reference value, so that the check does not depend on the weights' scale.
FORWARD_TOLERANCE = 1e-3


def _shapes(config_json: str, cache: str | None) -> dict:
    from common.config import config_from_json

    try:
        from torch_impl.loading import expected_state_shapes
    except ImportError as err:
        return {"skipped": f"torch_impl is not importable ({err})"}
    shapes = expected_state_shapes(config_from_json(config_json))
    answer = {"ok": True, "shapes": {k: list(v) for k, v in shapes.items()}}
    if cache:
        store_answer(Path(cache), answer)
    answer["source"] = "built on the meta device in a child process"
    return answer


def store_answer(path: Path, answer: dict) -> None:
    """Write a cache entry atomically; a cache that cannot be written is only a slower next run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(answer), encoding="utf-8")
    except OSError:
        pass


# The forward check's imports are made where they are needed: the shapes child stays light (it is
# started while the parent converts), importing torch_impl alone.


def _flax_weights(path: Path, fmt: str, config) -> dict:
    """Flax-named arrays (RoPE caches included) from an Orbax checkpoint or a PyTorch-format file."""
    from common.tables import TABLES
    from convert.orbax_io import read_model_arrays
    from convert.tables import torch_to_flax

    if fmt == "orbax":
        return read_model_arrays(path)
    return torch_to_flax(TABLES[config.model_type], _torch_format_arrays(path, fmt), config)


def _torch_format_arrays(path: Path, fmt: str) -> dict:
    import numpy as np

    from common.torch_file import read_torch_state
    from convert.safetensors_io import SafetensorsReader

    if fmt == "safetensors":
        reader = SafetensorsReader(path)
        return {k: np.array(reader.tensor(k)) for k in reader.tensors}
    return {k: v.float().numpy() for k, v in read_torch_state(path).items()}


def _torch_model(path: Path, fmt: str, config):
    import torch_impl

    if fmt == "orbax":  # the torch side always reads a PyTorch-format file
        raise ValueError("the PyTorch side of the forward check needs safetensors or a .pt")
    load = torch_impl.load_vae if config.model_type == "vae" else torch_impl.load_dit
    return load(path, config=config, precision="fp32")


def _inputs(config, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = 2
    if config.model_type == "vae":
        video = rng.uniform(0, 1, (1, frames, config.height, config.width, config.channels)).astype(
            np.float32
        )
        return {"video": video, "mask": np.ones((1, frames), bool)}
    latent = rng.standard_normal((1, frames, config.hw, config.compressed_channel_dim)).astype(np.float32)
    return {"latent": latent, "mask": np.ones((1, frames), bool), "time": np.full((1, 1), 0.5, np.float32)}


def _run_jax(model_type: str, config, flat: dict, inputs: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import jax_ref

    jax.config.update("jax_default_matmul_precision", "highest")
    cls = jax_ref.VideoVAE if model_type == "vae" else jax_ref.VideoDiT
    # Shapes only, then the checkpoint's values: no time spent drawing random weights.
    model = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32))
    jax_ref.load_flat(model, flat)

    # One compiled program: op-by-op dispatch compiles every distinct op first, several times slower.
    @nnx.jit
    def vae(model, video, mask):
        mean, variance, selection = model.encoder(video, mask)
        return {
            "mean": mean,
            "variance": variance,
            "selection": selection,
            "decoded": model.decoder(mean, mask),
        }

    @nnx.jit
    def dit(model, latent, mask, time):
        velocity, gaps = model(latent, mask, time)
        return {"velocity": velocity, "gaps": gaps}

    args = {k: jnp.asarray(v) for k, v in inputs.items()}
    out = vae(model, **args) if model_type == "vae" else dit(model, **args)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _run_torch(model_type: str, model, inputs: dict) -> dict:
    import torch

    with torch.inference_mode():
        t = {k: torch.from_numpy(v) for k, v in inputs.items()}
        if model_type == "vae":
            mean, variance, selection = model.encoder(t["video"], t["mask"])
            video = model.decoder(mean, t["mask"])
            out = {"mean": mean, "variance": variance, "selection": selection, "decoded": video}
        else:
            velocity, gaps = model(t["latent"], t["mask"], t["time"])
            out = {"velocity": velocity, "gaps": gaps}
    return {k: v.double().numpy() for k, v in out.items()}


def _forward(args) -> dict:
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy by name)
    import numpy as np

    from common.config import config_from_json

    config = config_from_json(args.config)
    try:
        import jax_ref  # noqa: F401
        import torch_impl  # noqa: F401
    except ImportError as err:
        return {"skipped": f"needs both jax_ref and torch_impl ({err})"}
    flat = _flax_weights(Path(args.reference), args.reference_format, config)
    if args.round_reference_to:
        rounded = np.dtype(args.round_reference_to)
        flat = {
            k: v if "ROPE" in k or v.dtype != np.float32 else v.astype(rounded).astype(np.float32)
            for k, v in flat.items()
        }
    inputs = _inputs(config)
    reference = _run_jax(config.model_type, config, flat, inputs)
    del flat
    model = _torch_model(Path(args.converted), args.converted_format, config)
    got = _run_torch(config.model_type, model, inputs)
    parts, ok = [], True
    for name, ref in reference.items():
        scale = max(float(np.max(np.abs(ref))), 1e-30)
        rel = float(np.max(np.abs(got[name] - ref))) / scale
        ok = ok and rel <= FORWARD_TOLERANCE
        parts.append(f"{name} {rel:.1e}")
    detail = (
        f"fp32 on a {'x'.join(map(str, next(iter(inputs.values())).shape))} input: "
        "max|torch - jax| / max|jax| "
        f"{', '.join(parts)} (tolerance {FORWARD_TOLERANCE:g})"
    )
    return {"ok": ok, "detail": detail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dfc.convert_child", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    shapes = sub.add_parser("shapes")
    shapes.add_argument("config")
    shapes.add_argument("--cache", help="also store the answer in this file")
    forward = sub.add_parser("forward")
    forward.add_argument("config")
    forward.add_argument("--reference", required=True)
    forward.add_argument("--reference-format", choices=("orbax", "safetensors", "torch"), required=True)
    forward.add_argument("--converted", required=True)
    forward.add_argument("--converted-format", choices=("safetensors", "torch"), required=True)
    forward.add_argument("--round-reference-to", choices=("bfloat16",))
    args = parser.parse_args(argv)
    try:
        result = _shapes(args.config, args.cache) if args.what == "shapes" else _forward(args)
    except Exception as err:  # the parent reports it as one line
        result = {
            "ok": False,
            "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
        }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
