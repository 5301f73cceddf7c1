"""A user ports weights from the Flax reference to PyTorch and gets the same numbers, block by block.

Every case builds the Flax module, randomises every parameter (the zero-initialised UNet `final_conv` and
DiT `timestep_proj` included), moves the weights through the converter's table (`convert.tables`), runs
both frameworks on the same input in float32 and requires `max|torch - jax| / max|jax| <= 1e-5`.
Temporal inputs have at least 3 frames and padded frames in the mask, so positions beyond 0 count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_ref
import torch_impl
from common import load_config
from common.tables import TABLES
from convert.tables import flax_to_torch
from jax_ref.params import randomize, state_to_flat
from parity.tolerance import FP32_REL_MAX

VAE = load_config("vae-tiny")
DIT = load_config("dit-tiny")
PUBLISHED_VAE = load_config("vae-256")
PUBLISHED_DIT = load_config("dit-256")
FP32 = {"dtype": jnp.float32, "param_dtype": jnp.float32}


def port_weights(jax_module, torch_module, table: str, prefix: str = "", seed: int = 0) -> None:
    """Randomise the Flax module and load its weights into the torch module, strictly."""
    randomize(jax_module, seed)
    state, _ = flax_to_torch(TABLES[table], state_to_flat(jax_module), prefix)
    torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)


def rel_err(torch_out, jax_out) -> float:
    t = torch_out.detach().double().numpy()
    j = np.asarray(jax_out, dtype=np.float64)
    assert t.shape == j.shape, (t.shape, j.shape)
    assert np.isfinite(t).all()
    return float(np.abs(t - j).max() / max(np.abs(j).max(), 1e-30))


def frames_mask(batch: int, frames: int) -> np.ndarray:
    """(B, T) bool: the first clip complete, every later clip with its last frame(s) padded."""
    mask = np.ones((batch, frames), bool)
    for b in range(1, batch):
        mask[b, frames - b :] = False
    return mask


def randn(*shape, seed=0, scale=1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@dataclass
class Case:
    name: str
    jax_module: Callable[[], nnx.Module]
    torch_module: Callable[[], torch.nn.Module]
    inputs: Callable[[], tuple]
    table: str = "vae"
    prefix: str = ""
    # torch_impl's UNet blocks work in (B, C, T, H, W) for torch's convolutions; only the UNet itself is
    # channels last, like the original's public surface.
    channels_first: bool = False


def _blocks(cfg, prefix_layer: str, table: str):
    fa_kwargs = cfg.block_kwargs()
    dim, temporal_len, spatial_len = (
        fa_kwargs[k] for k in ("in_features", "max_temporal_len", "max_spatial_len")
    )
    heads, qkv, mlp, hd = cfg.num_heads, cfg.qkv_features, cfg.mlp_dim, cfg.head_dim
    mask = frames_mask(2, 4)
    return [
        Case(
            f"{table}/ROPE",
            lambda: jax_ref.ROPE(hd, temporal_len),
            lambda: torch_impl.ROPE(hd, temporal_len),
            lambda: (randn(6, 4, heads, hd),),
            table,
            f"{prefix_layer}TemporalAttention.ROPE.",
        ),
        Case(
            f"{table}/Attention/temporal-padded",
            lambda: jax_ref.Attention(dim, heads, qkv, temporal_len, rngs=nnx.Rngs(0), **FP32),
            lambda: torch_impl.Attention(dim, heads, qkv, temporal_len),
            lambda: (randn(2, 4, dim), mask[:, None, None, :]),
            table,
            f"{prefix_layer}TemporalAttention.",
        ),
        Case(
            f"{table}/Attention/spatial",
            lambda: jax_ref.Attention(dim, heads, qkv, spatial_len, rngs=nnx.Rngs(0), **FP32),
            lambda: torch_impl.Attention(dim, heads, qkv, spatial_len),
            lambda: (randn(3, spatial_len, dim),),
            table,
            f"{prefix_layer}SpatialAttention.",
        ),
        Case(
            f"{table}/MLP",
            lambda: jax_ref.MLP(dim, mlp, rngs=nnx.Rngs(0), **FP32),
            lambda: torch_impl.MLP(dim, mlp),
            lambda: (randn(2, 5, dim),),
            table,
            f"{prefix_layer}TemporalMLP.",
        ),
        Case(
            f"{table}/FactoredAttention",
            lambda: jax_ref.FactoredAttention(**fa_kwargs, rngs=nnx.Rngs(0), **FP32),
            lambda: torch_impl.FactoredAttention(**fa_kwargs),
            lambda: (randn(2, 4, spatial_len, dim), mask[:, None, None, :]),
            table,
            prefix_layer,
        ),
    ]


def _unet_cases():
    c, base = VAE.unet_channels, VAE.unet_base_features
    h, w = VAE.height, VAE.width
    return [
        Case(
            "vae/ConvBlock3D",
            lambda: jax_ref.ConvBlock3D(c, base, rngs=nnx.Rngs(0), **FP32),
            lambda: torch_impl.ConvBlock3D(c, base),
            lambda: (randn(2, 3, h, w, c),),
            prefix="decoder.unet.encoders.0.conv1.",
            channels_first=True,
        ),
        Case(
            "vae/DownBlock3D",
            lambda: jax_ref.DownBlock3D(c, base, rngs=nnx.Rngs(0), **FP32),
            lambda: torch_impl.DownBlock3D(c, base),
            lambda: (randn(2, 3, h, w, c),),
            prefix="decoder.unet.encoders.0.",
            channels_first=True,
        ),
        Case(
            "vae/UpBlock3D",
            lambda: jax_ref.UpBlock3D(2 * base, base, rngs=nnx.Rngs(0), **FP32),
            lambda: torch_impl.UpBlock3D(2 * base, base),
            lambda: (randn(2, 3, h // 2, w // 2, 2 * base), randn(2, 3, h, w, base, seed=1)),
            prefix=f"decoder.unet.decoders.{VAE.unet_num_levels - 1}.",
            channels_first=True,
        ),
        Case(
            "vae/UNet",
            lambda: jax_ref.UNet(c, VAE.channels, base, VAE.unet_num_levels, rngs=nnx.Rngs(0), **FP32),
            lambda: torch_impl.UNet(c, VAE.channels, base, VAE.unet_num_levels),
            lambda: (randn(2, 3, h, w, c),),
            prefix="decoder.unet.",
        ),
    ]


def _model_cases():
    mask = frames_mask(2, 5)
    t = VAE
    return [
        Case(
            "vae/PatchEmbedding",
            lambda: jax_ref.PatchEmbedding(t.patch_size, t.channels, rngs=nnx.Rngs(0), **FP32),
            lambda: torch_impl.PatchEmbedding(t.patch_size, t.channels),
            lambda: (np.random.default_rng(0).random((2, 3, t.height, t.width, t.channels), np.float32),),
            prefix="encoder.patch_embedding.",
        ),
        Case(
            "vae/PatchUnEmbedding",
            lambda: jax_ref.PatchUnEmbedding(
                t.height,
                t.width,
                t.patch_size,
                t.channels,
                t.unembedding_upsample_rate,
                rngs=nnx.Rngs(0),
                **FP32,
            ),
            lambda: torch_impl.PatchUnEmbedding(
                t.height, t.width, t.patch_size, t.channels, t.unembedding_upsample_rate
            ),
            lambda: (randn(2, 3, t.num_patches, t.patch_dim),),
            prefix="decoder.patch_unembedding.",
        ),
        Case(
            "vae/Encoder",
            lambda: jax_ref.Encoder(VAE, rngs=nnx.Rngs(0), **FP32),
            lambda: torch_impl.Encoder(VAE),
            lambda: (
                np.random.default_rng(0).random((2, 5, t.height, t.width, t.channels), np.float32),
                mask,
            ),
            prefix="encoder.",
        ),
        Case(
            "vae/Decoder",
            lambda: jax_ref.Decoder(VAE, rngs=nnx.Rngs(0), **FP32),
            lambda: torch_impl.Decoder(VAE),
            lambda: (randn(2, 5, t.num_patches, t.latent_dim), mask),
            prefix="decoder.",
        ),
        Case(
            "dit/VideoDiT",
            lambda: jax_ref.VideoDiT(DIT, rngs=nnx.Rngs(0), **FP32),
            lambda: torch_impl.VideoDiT(DIT),
            lambda: (
                randn(2, 5, DIT.hw, DIT.compressed_channel_dim),
                mask,
                np.array([[0.25], [0.7]], np.float32),
            ),
            table="dit",
        ),
    ]


CASES = [
    *_blocks(VAE, "encoder.layers.0.", "vae"),
    *_blocks(DIT, "layers.0.", "dit"),
    *_unet_cases(),
    *_model_cases(),
]


def _flatten(out) -> list:
    return list(out) if isinstance(out, tuple | list) else [out]


def _run_pair(case: Case):
    jm, tm = case.jax_module(), case.torch_module()
    port_weights(jm, tm, case.table, case.prefix)
    args = case.inputs()
    j_out = jm(*map(jnp.asarray, args))
    with torch.no_grad():
        t_args = [torch.from_numpy(np.asarray(a)) for a in args]
        if case.channels_first:
            t_args = [a.movedim(-1, 1) for a in t_args]
        t_out = _flatten(tm(*t_args))
        if case.channels_first:
            t_out = [o.movedim(1, -1) for o in t_out]
    return t_out, _flatten(j_out)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_block_matches_flax_in_fp32(case: Case):
    t_outs, j_outs = _run_pair(case)
    assert len(t_outs) == len(j_outs)
    for i, (t, j) in enumerate(zip(t_outs, j_outs)):
        err = rel_err(t, j)
        assert err <= FP32_REL_MAX, f"{case.name} output {i}: max|torch - jax| / max|jax| = {err:.3g}"


def test_randomised_weights_include_the_zero_initialised_layers():
    """A zero weight hides a conversion bug: randomise() must reach final_conv and timestep_proj."""
    vae = jax_ref.VideoVAE(VAE, rngs=nnx.Rngs(0), **FP32)
    dit = jax_ref.VideoDiT(DIT, rngs=nnx.Rngs(0), **FP32)
    assert not np.any(np.asarray(vae.decoder.unet.final_conv.kernel.value))
    assert not np.any(np.asarray(dit.timestep_proj.kernel.value))
    randomize(vae, 0)
    randomize(dit, 0)
    for leaf in ("decoder.unet.final_conv.kernel", "decoder.unet.final_conv.bias"):
        assert np.abs(state_to_flat(vae)[leaf]).min() > 0, leaf
    for leaf in ("timestep_proj.kernel", "timestep_proj.bias"):
        assert np.abs(state_to_flat(dit)[leaf]).min() > 0, leaf


@pytest.mark.parametrize(
    "table, cfg", [("vae", PUBLISHED_VAE), ("dit", PUBLISHED_DIT)], ids=["vae-256", "dit-256"]
)
def test_one_factored_attention_block_at_published_width(table, cfg):
    """head_dim, the RoPE lengths and a 256-token spatial sequence at their real sizes."""
    kwargs = cfg.block_kwargs()
    dim, spatial = kwargs["in_features"], kwargs["max_spatial_len"]
    prefix = "encoder.layers.0." if table == "vae" else "layers.0."
    jm = jax_ref.FactoredAttention(**kwargs, rngs=nnx.Rngs(0), **FP32)
    tm = torch_impl.FactoredAttention(**kwargs)
    port_weights(jm, tm, table, prefix)
    x, mask = randn(2, 3, spatial, dim), frames_mask(2, 3)[:, None, None, :]
    j = jm(jnp.asarray(x), jnp.asarray(mask))
    with torch.no_grad():
        t = tm(torch.from_numpy(x), torch.from_numpy(mask))
    assert rel_err(t, j) <= FP32_REL_MAX


@pytest.fixture(scope="module")
def vae_pair():
    jm = jax_ref.VideoVAE(VAE, rngs=nnx.Rngs(0), **FP32)
    tm = torch_impl.VideoVAE(VAE)
    port_weights(jm, tm, "vae")
    return jm, tm


@pytest.mark.parametrize("mode, k", [("threshold", None), ("bernoulli", None), ("topk", 2)])
def test_vae_compress_and_decompress_agree(vae_pair, mode, k):
    jm, tm = vae_pair
    video = np.random.default_rng(3).random((2, 6, VAE.height, VAE.width, VAE.channels), np.float32)
    mask = frames_mask(2, 6)
    noise = np.random.default_rng(4).random((2, 6), np.float32)
    kw = {"mode": mode, "k": k, "noise": noise if mode == "bernoulli" else None}
    jc = jm.compress(
        jnp.asarray(video),
        jnp.asarray(mask),
        **{**kw, "noise": None if kw["noise"] is None else jnp.asarray(noise)},
    )
    with torch.no_grad():
        tc = tm.compress(
            torch.from_numpy(video),
            torch.from_numpy(mask),
            **{**kw, "noise": None if kw["noise"] is None else torch.from_numpy(noise)},
        )
    np.testing.assert_array_equal(tc.gaps.numpy(), np.asarray(jc.gaps))
    np.testing.assert_array_equal(tc.kept_valid.numpy(), np.asarray(jc.kept_valid))
    assert rel_err(tc.kept, jc.kept) <= FP32_REL_MAX
    with torch.no_grad():
        t_video = tm.decompress(tc)
    j_video = jm.decompress(jc)
    assert t_video.shape[1] == 6
    assert rel_err(t_video, j_video) <= FP32_REL_MAX


def test_euler_sampling_agrees_step_for_step():
    jm = jax_ref.VideoDiT(DIT, rngs=nnx.Rngs(0), **FP32)
    tm = torch_impl.VideoDiT(DIT)
    port_weights(jm, tm, "dit")
    noise = randn(2, 4, DIT.hw, DIT.compressed_channel_dim, seed=7)
    mask = frames_mask(2, 4)
    jx, jg = jax_ref.sample(jm, jnp.asarray(noise), jnp.asarray(mask), 4)
    tx, tg = torch_impl.sample(tm, torch.from_numpy(noise), torch.from_numpy(mask), 4)
    assert tx.dtype == torch.float32
    assert rel_err(tx, jx) <= FP32_REL_MAX
    assert rel_err(tg, jg) <= FP32_REL_MAX
    jp, jt = jax_ref.gaps_to_positions(jg, jnp.asarray(mask))
    tp, tt = torch_impl.gaps_to_positions(tg, torch.from_numpy(mask))
    np.testing.assert_array_equal(tp.numpy(), np.asarray(jp))
    np.testing.assert_array_equal(tt.numpy(), np.asarray(jt))


def test_jax_matmul_precision_is_highest_for_the_reference():
    assert jax.config.jax_default_matmul_precision == "highest"
