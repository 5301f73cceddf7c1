"""Checks that need torch or jax, run in a child process so that the converter's memory bound holds.

- `shapes`: `torch_impl`'s state-dict keys and shapes for a configuration, from a model built on the meta
  device (nothing allocated). Started as soon as the configuration is known; it imports torch (~200 MB,
  about a second) while the parent converts.
- `forward`: the parity check of a conversion. The JAX reference (`jax_ref`) gets the weights of one side
  (an Orbax checkpoint, or a PyTorch-format file mapped back through the table), `torch_impl` loads the
  other side, both run fp32 on a small seeded input, and every output must agree within
  `FORWARD_TOLERANCE` of the reference's scale.

The child prints one JSON line: `{"ok": true, ...}`, `{"ok": false, "error": ...}` or `{"skipped": why}`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# The original's own JAX/PyTorch comparison: fp32 on both sides, a flat 1e-3 (MODEL_SPEC section 7). Here
# relative to the largest reference value, so that the check does not depend on the weights' scale.
FORWARD_TOLERANCE = 1e-3
_REPO = Path(__file__).resolve().parents[1]


class ChildCheck:
    """A check running in a child process; `result()` waits for its JSON answer."""

    def __init__(self, argv: list[str], timeout: float):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p)
        env.setdefault("JAX_PLATFORMS", "cpu")
        self.timeout = timeout
        self._process = subprocess.Popen(
            [sys.executable, "-m", "convert.verify_forward", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=_REPO,
        )

    def result(self) -> dict:
        try:
            out, err = self._process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            return {"ok": False, "error": f"no answer within {self.timeout:.0f} s"}
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if self._process.returncode != 0 or not lines:
            tail = (err.strip().splitlines() or [f"exited with status {self._process.returncode}"])[-1]
            return {"ok": False, "error": tail}
        return json.loads(lines[-1])

    def cancel(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.communicate()


class Answered:
    """A check whose answer is already known (from the cache)."""

    def __init__(self, answer: dict):
        self._answer = answer

    def result(self) -> dict:
        return self._answer

    def cancel(self) -> None:
        pass


def start_shape_check(config) -> ChildCheck | Answered:
    """torch_impl's keys and shapes for `config`: from the cache, or computed by a child process.

    The answer is a pure function of the configuration, the torch version and the source of torch_impl
    and common (the model's code), so it is cached under a hash of all of them; any change to that
    code is a new key. Computing it costs a torch import and a meta-device build (seconds of CPU, more
    than the whole conversion of the published VAE).
    """
    cache = shape_cache_file(config)
    if cache is not None and cache.is_file():
        try:
            answer = json.loads(cache.read_text(encoding="utf-8"))
            answer["source"] = f"cached for this torch_impl source ({cache.stem[:12]})"
            return Answered(answer)
        except (OSError, ValueError):
            pass
    argv = ["shapes", json.dumps(config.to_dict())]
    if cache is not None:
        argv += ["--cache", str(cache)]
    return ChildCheck(argv, timeout=600)


def cache_dir() -> Path:
    root = os.environ.get("DFC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dfc"
    )
    return Path(root)


def shape_cache_file(config) -> Path | None:
    """Where the shapes of `config` are cached; None when torch_impl or torch is not installed."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    try:
        torch_version = version("torch")
        spec = find_spec("torch_impl")
    except (PackageNotFoundError, ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    digest = hashlib.sha256()
    digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    digest.update(torch_version.encode())
    common = find_spec("common")
    folders = [Path(p) for p in spec.submodule_search_locations]
    folders += [Path(p) for p in (common.submodule_search_locations or [])] if common else []
    for folder in folders:
        for file in sorted(folder.glob("*.py")):
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return cache_dir() / "torch-shapes" / f"{digest.hexdigest()}.json"


def start_forward_check(
    config,
    reference: Path,
    reference_format: str,
    converted: Path,
    converted_format: str,
    round_reference_to: str | None = None,
) -> ChildCheck:
    """`round_reference_to="bfloat16"`: the converted weights were rounded on purpose, so the reference
    runs on the same rounding, and the check still tests the conversion, not the rounding."""
    argv = [
        "forward",
        json.dumps(config.to_dict()),
        "--reference",
        str(reference),
        "--reference-format",
        reference_format,
        "--converted",
        str(converted),
        "--converted-format",
        converted_format,
    ]
    if round_reference_to:
        argv += ["--round-reference-to", round_reference_to]
    return ChildCheck(argv, timeout=3600)


def expected_shapes_here(config) -> dict[str, tuple[int, ...]] | None:
    """In this process, for callers that have torch loaded anyway; None when torch_impl is unavailable."""
    try:
        from torch_impl.loading import expected_state_shapes
    except ImportError:
        return None
    return {k: tuple(v) for k, v in expected_state_shapes(config).items()}


# ------------------------------------------------------------------------------------------ the child


def _shapes(config_json: str, cache: str | None) -> dict:
    from common.config import config_from_json

    try:
        from torch_impl.loading import expected_state_shapes
    except ImportError as err:
        return {"skipped": f"torch_impl is not importable ({err})"}
    shapes = expected_state_shapes(config_from_json(config_json))
    answer = {"ok": True, "shapes": {k: list(v) for k, v in shapes.items()}}
    if cache:
        _store(Path(cache), answer)
    answer["source"] = "built on the meta device in a child process"
    return answer


def _store(path: Path, answer: dict) -> None:
    """Write the cache entry atomically; a cache that cannot be written is only a slower next run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(answer), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def _flax_weights(path: Path, fmt: str, config) -> dict:
    """Flax-named arrays (RoPE caches included) from an Orbax checkpoint or a PyTorch-format file."""
    from convert.tables import TABLES, torch_to_flax

    if fmt == "orbax":
        from convert.orbax_io import ArrayStore, find_model_subtree, read_tree_paths, resolve_checkpoint

        step_dir = resolve_checkpoint(path).step_dir
        subtree = find_model_subtree(read_tree_paths(step_dir))
        store = ArrayStore(step_dir)
        names = sorted(subtree.leaves)
        infos = store.infos([subtree.leaves[n] for n in names])
        arrays = store.read(infos)
        return {n: arrays[info.key] for n, info in zip(names, infos)}
    return torch_to_flax(TABLES[config.model_type], _torch_format_arrays(path, fmt), config)


def _torch_format_arrays(path: Path, fmt: str) -> dict:
    import numpy as np

    if fmt == "safetensors":
        from convert.safetensors_io import SafetensorsReader

        reader = SafetensorsReader(path)
        return {k: np.array(reader.tensor(k)) for k in reader.tensors}
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}


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
    parser = argparse.ArgumentParser(
        prog="python -m convert.verify_forward", description=__doc__.splitlines()[0]
    )
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
