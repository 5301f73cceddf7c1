"""Real Orbax checkpoints in the training code's layouts, for tests and benchmarks (orbax writes them).

The training code calls `StandardCheckpointer().save(path, {"model": state, "optimizer": opt_state})` with
numpy fp32 leaves (MODEL_SPEC section 6). We rebuild those trees without the training code: the model tree
comes from `flax_leaf_shapes` (checked against the published ground truth files by the tests), the optimizer
subtrees are added per flax layout:

- `flax-0.10`: `optimizer/model/...` (a second copy of the model), `optimizer/opt_state/1/0/{mu,nu}/...`
  (Adam moments of the parameters: RoPE caches are `nnx.Variable`s, not `Param`s, so they have none),
  `optimizer/opt_state/1/0/count` and `optimizer/step`;
- `flax-0.12`: the same without the model copy;
- `model-only`: `{"model": ...}` (the DiT checkpoints).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from common.config import DiTConfig, VAEConfig
from common.rope import rope_tables
from common.trees import nest_flat

LAYOUTS = ("flax-0.10", "flax-0.12", "model-only")


def _factored_attention(prefix: str, width: int, cfg, spatial_len: int) -> dict[str, tuple]:
    """One FactoredAttention block: attention + MLP, temporal and spatial."""
    q, hd, m = cfg.qkv_features, cfg.head_dim, cfg.mlp_dim
    out = {}
    for axis, length in (("Spatial", spatial_len), ("Temporal", cfg.max_temporal_len)):
        att, mlp = f"{prefix}{axis}Attention.", f"{prefix}{axis}MLP."
        out |= {
            f"{att}ROPE.cos_cached": (1, length, 1, hd),
            f"{att}ROPE.sin_cached": (1, length, 1, hd),
            f"{att}input_norm.bias": (width,),
            f"{att}input_norm.scale": (width,),
            f"{att}k_norm.scale": (hd,),
            f"{att}out_projection.bias": (width,),
            f"{att}out_projection.kernel": (q, width),
            f"{att}q_norm.scale": (hd,),
            f"{att}qkv_projection.bias": (3 * q,),
            f"{att}qkv_projection.kernel": (width, 3 * q),
            f"{mlp}linear1.bias": (m,),
            f"{mlp}linear1.kernel": (width, m),
            f"{mlp}linear2.bias": (width,),
            f"{mlp}linear2.kernel": (m, width),
            f"{mlp}norm.bias": (width,),
            f"{mlp}norm.scale": (width,),
        }
    return out


def _linear(name: str, fan_in: int, fan_out: int) -> dict[str, tuple]:
    return {f"{name}.bias": (fan_out,), f"{name}.kernel": (fan_in, fan_out)}


def _conv_block(name: str, kt: int, fan_in: int, fan_out: int) -> dict[str, tuple]:
    return {
        f"{name}.conv.bias": (fan_out,),
        f"{name}.conv.kernel": (kt, 3, 3, fan_in, fan_out),
        f"{name}.norm.bias": (fan_out,),
        f"{name}.norm.scale": (fan_out,),
    }


def _unet(prefix: str, cfg: VAEConfig) -> dict[str, tuple]:
    kt, base, levels, cin = (
        cfg.unet_temporal_kernel,
        cfg.unet_base_features,
        cfg.unet_num_levels,
        cfg.unet_channels,
    )
    out = {f"{prefix}patch_mixer.bias": (cin,), f"{prefix}patch_mixer.kernel": (kt, 7, 7, cin, cin)}
    width = cin
    for i in range(levels):
        out |= _conv_block(f"{prefix}encoders.{i}.conv1", kt, width, base * 2**i)
        out |= _conv_block(f"{prefix}encoders.{i}.conv2", kt, base * 2**i, base * 2**i)
        width = base * 2**i
    out |= _conv_block(f"{prefix}bottleneck1", kt, width, base * 2**levels)
    out |= _conv_block(f"{prefix}bottleneck2", kt, base * 2**levels, base * 2**levels)
    for j, i in enumerate(range(levels - 1, -1, -1)):
        up, here = base * 2 ** (i + 1), base * 2**i
        out |= {
            f"{prefix}decoders.{j}.upsample.bias": (here,),
            f"{prefix}decoders.{j}.upsample.kernel": (1, 2, 2, up, here),
        }
        out |= _conv_block(f"{prefix}decoders.{j}.conv1", kt, 2 * here, here)
        out |= _conv_block(f"{prefix}decoders.{j}.conv2", kt, here, here)
    out |= {
        f"{prefix}final_conv.bias": (cfg.channels,),
        f"{prefix}final_conv.kernel": (1, 1, 1, base, cfg.channels),
    }
    return out


def vae_leaf_shapes(cfg: VAEConfig) -> dict[str, tuple]:
    d, lat, hw = cfg.patch_dim, cfg.latent_dim, cfg.num_patches
    out: dict[str, tuple] = {}
    for i in range(cfg.decoder_depth):
        out |= _factored_attention(f"decoder.layers.{i}.", d, cfg, hw)
    out |= _linear("decoder.patch_unembedding.downsample", cfg.unet_channels, cfg.channels)
    out |= _linear("decoder.patch_unembedding.linear", d, d)
    out |= _linear("decoder.patch_unembedding.upsample", d, d * cfg.unembedding_upsample_rate)
    out |= _linear("decoder.spatial_decompression", lat, d)
    out |= _unet("decoder.unet.", cfg)
    for i in range(cfg.encoder_depth):
        out |= _factored_attention(f"encoder.layers.{i}.", d, cfg, hw)
    out |= _linear("encoder.patch_embedding.linear", d, d)
    out |= {"encoder.patch_embedding.norm.bias": (d,), "encoder.patch_embedding.norm.scale": (d,)}
    out |= _linear("encoder.selection_layer1", lat, 1)
    out |= _linear("encoder.selection_layer2", hw, 1)
    out |= _linear("encoder.spatial_compression", d, lat)
    out |= _linear("encoder.variance_estimator", d, lat)
    out["fill_token"] = (1, 1, 1, lat)
    return out


def dit_leaf_shapes(cfg: DiTConfig) -> dict[str, tuple]:
    r = cfg.residual_dim
    out: dict[str, tuple] = {}
    out |= _linear("down_proj", r, cfg.compressed_channel_dim)
    for i in range(cfg.depth):
        out |= _factored_attention(f"layers.{i}.", r, cfg, cfg.hw)
    out |= _linear("spacing_pred1", r, 1)
    out |= _linear("spacing_pred2", cfg.hw, 1)
    out |= _linear("timestep_proj", 1, r)
    out |= _linear("up_proj", cfg.compressed_channel_dim, r)
    return out


def flax_leaf_shapes(cfg: VAEConfig | DiTConfig) -> dict[str, tuple]:
    """Dotted Flax name -> shape of every leaf of `nnx.state(model)` (parameters and RoPE caches)."""
    return vae_leaf_shapes(cfg) if isinstance(cfg, VAEConfig) else dit_leaf_shapes(cfg)


def is_rope_cache(name: str) -> bool:
    return name.endswith(("ROPE.cos_cached", "ROPE.sin_cached"))


def random_model(cfg: VAEConfig | DiTConfig, seed: int = 0, scale: float = 0.05) -> dict[str, np.ndarray]:
    """A model state with random fp32 parameters and the true RoPE caches (as a trained model has them)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in flax_leaf_shapes(cfg).items():
        if is_rope_cache(name):
            cos, sin = rope_tables(shape[1], shape[3])
            flat[name] = cos if name.endswith("cos_cached") else sin
        else:
            flat[name] = (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)
    return flat


def training_tree(model: Mapping[str, np.ndarray], layout: str, seed: int = 1, step: int = 1000) -> dict:
    """The pytree the training code hands to Orbax for `layout` (one of LAYOUTS)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}")
    tree = {"model": nest_flat(model)}
    if layout == "model-only":
        return tree
    rng = np.random.default_rng(seed)
    params = {k: v for k, v in model.items() if not is_rope_cache(k)}

    def moments():
        return nest_flat(
            {k: rng.standard_normal(v.shape, dtype=np.float32) * np.float32(1e-3) for k, v in params.items()}
        )

    adam = {"count": {"value": np.array(step, np.int32)}, "mu": moments(), "nu": moments()}
    optimizer = {"opt_state": {"1": {"0": adam}}, "step": {"value": np.array(step, np.uint32)}}
    if layout == "flax-0.10":
        # An exact copy, as the optimizer of flax 0.10 held a reference to the very same model.
        optimizer["model"] = nest_flat({k: v.copy() for k, v in model.items()})
    return {"model": tree["model"], "optimizer": optimizer}


def save_orbax(path: str | os.PathLike, tree: dict) -> Path:
    """`StandardCheckpointer().save` as the training code calls it (OCDBT, zarr v2)."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, tree)
    checkpointer.wait_until_finished()
    checkpointer.close()
    return path


def write_training_checkpoint(
    path: str | os.PathLike, model: Mapping[str, np.ndarray], layout: str, step: int = 1000
) -> Path:
    return save_orbax(path, training_tree(model, layout, step=step))


def write_manager_root(
    root: str | os.PathLike, models_by_step: Mapping[int, Mapping[str, np.ndarray]], layout: str = "flax-0.12"
) -> Path:
    """A CheckpointManager directory (`root/<step>/default/...`), one step per entry."""
    import orbax.checkpoint as ocp

    root = Path(root).absolute()
    with ocp.CheckpointManager(root) as manager:
        for step, model in models_by_step.items():
            manager.save(step, args=ocp.args.StandardSave(training_tree(model, layout, step=step)))
        manager.wait_until_finished()
    return root
