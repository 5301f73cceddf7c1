"""What jax_ref computes: norm numerics, attention, frame selection and packing, the models end to end."""

from __future__ import annotations

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from common.precision import NormNumerics
from common.rope import rope_tables
from jax_ref import (
    Attention,
    FactoredAttention,
    GroupNorm,
    GumbelSigmoidSTE,
    LayerNorm,
    VideoDiT,
    VideoVAE,
    gaps_to_positions,
    pack_kept,
    place_kept,
    randomize,
    sample,
    select_frames,
    state_to_flat,
)

F32 = dict(dtype=jnp.float32, param_dtype=jnp.float32)
HYPOTHESIS = settings(max_examples=40, deadline=None)


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * scale)


# --- norms -------------------------------------------------------------------------------------------


def _norm_pair(make, dtype):
    a, b = (make(dtype=dtype, numerics=n) for n in NormNumerics)
    randomize(a, seed=1)
    randomize(b, seed=1)
    return a, b


@pytest.mark.parametrize("make", [lambda **kw: LayerNorm(24, **kw), lambda **kw: GroupNorm(24, 8, **kw)])
def test_norm_numerics_agree_in_float32_and_differ_in_bfloat16(make):
    x = _normal(0, (2, 3, 4, 24), scale=3.0) + 1.5
    old, new = _norm_pair(make, jnp.float32)
    np.testing.assert_array_equal(np.asarray(old(x)), np.asarray(new(x)))
    old, new = _norm_pair(make, jnp.bfloat16)
    assert old(x).dtype == new(x).dtype == jnp.bfloat16
    assert not np.array_equal(np.asarray(old(x), np.float32), np.asarray(new(x), np.float32))


def test_norms_are_bit_identical_to_the_installed_flax_of_the_same_era():
    major_minor_patch = tuple(int(p) for p in flax.__version__.split(".")[:3])
    numerics = NormNumerics.FLAX_0_12_1 if major_minor_patch >= (0, 12, 1) else NormNumerics.FLAX_0_10
    x = _normal(0, (2, 3, 4, 4, 16), scale=2.0) + 0.5
    kw = dict(epsilon=1e-6, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    pairs = [
        (LayerNorm(16, numerics=numerics, dtype=jnp.bfloat16), nnx.LayerNorm(16, **kw)),
        (GroupNorm(16, 4, numerics=numerics, dtype=jnp.bfloat16), nnx.GroupNorm(16, num_groups=4, **kw)),
    ]
    for ours, theirs in pairs:
        randomize(ours, seed=2)
        nnx.update(theirs, nnx.state(ours))
        np.testing.assert_array_equal(np.asarray(ours(x), np.float32), np.asarray(theirs(x), np.float32))


# --- attention ---------------------------------------------------------------------------------------


def _numpy_attention(flat, x, mask, heads):
    """Attention written out in numpy float64 from the flat parameters: the spec, not the code."""

    def norm(v, scale, bias=0.0):
        mean, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mean) / np.sqrt(var + 1e-6) * scale + bias

    h = norm(x, flat["input_norm.scale"], flat["input_norm.bias"])
    qkv = h @ flat["qkv_projection.kernel"] + flat["qkv_projection.bias"]
    b, s, _ = x.shape
    q, k, v = (part.reshape(b, s, heads, -1) for part in np.split(qkv, 3, axis=-1))
    cos, sin = (t[:, :s].astype(np.float64) for t in rope_tables(16, q.shape[-1]))
    half = q.shape[-1] // 2
    rope = lambda t: t * cos + np.concatenate([-t[..., half:], t[..., :half]], -1) * sin  # noqa: E731
    q, k = rope(norm(q, flat["q_norm.scale"])), rope(norm(k, flat["k_norm.scale"]))
    logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(mask[:, :, :, :], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bnqk,bknh->bqnh", weights, v).reshape(b, s, -1)
    return out @ flat["out_projection.kernel"] + flat["out_projection.bias"]


@nnx.jit
def _run_block(block, x, mask):
    return block(x, mask)


def test_attention_splits_q_k_v_in_order_and_rotates_by_sequence_index():
    block = Attention(12, 2, 16, 16, rngs=nnx.Rngs(0), **F32)
    randomize(block, seed=4)
    x = _normal(5, (2, 7, 12))
    mask = np.ones((2, 1, 1, 7), bool)
    mask[1, ..., 5:] = False
    flat = {k: v.astype(np.float64) for k, v in state_to_flat(block).items()}
    x64 = np.asarray(x, np.float64)
    got = np.asarray(_run_block(block, x, jnp.asarray(mask)))
    np.testing.assert_allclose(got, _numpy_attention(flat, x64, mask, 2), atol=2e-5)
    unmasked = np.asarray(_run_block(block, x, None))
    np.testing.assert_allclose(unmasked, _numpy_attention(flat, x64, np.ones_like(mask), 2), atol=2e-5)


def test_padded_frames_do_not_change_valid_frames_of_a_factored_attention_block():
    block = FactoredAttention(16, 2, 16, 32, 8, 4, rngs=nnx.Rngs(0), **F32)
    randomize(block, seed=3)
    x = _normal(0, (2, 5, 4, 16))
    mask = jnp.array([[True] * 5, [True] * 3 + [False] * 2])
    key_mask = mask[:, None, None, :]
    other = x.at[1, 3:].set(_normal(1, (2, 4, 16), scale=10.0))
    a, b = _run_block(block, x, key_mask), _run_block(block, other, key_mask)
    np.testing.assert_allclose(np.asarray(a[1, :3]), np.asarray(b[1, :3]), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.allclose(np.asarray(a[1, 3:]), np.asarray(b[1, 3:]))  # padded outputs are still computed


def test_gumbel_sigmoid_is_a_bernoulli_draw_with_a_straight_through_gradient():
    ste = GumbelSigmoidSTE()
    logits = jnp.full((4000,), np.log(0.3 / 0.7), jnp.float32)
    np.testing.assert_array_equal(np.asarray(ste(jnp.array([-0.1, 0.1]))), [0.0, 1.0])
    draws = np.asarray(ste(logits, key=jax.random.key(0)))
    assert set(np.unique(draws)) <= {0.0, 1.0} and abs(draws.mean() - 0.3) < 0.03
    grad = jax.grad(lambda z: ste(z, key=jax.random.key(1)).sum())(logits)
    assert np.all(np.asarray(grad) > 0)


# --- gaps and positions ------------------------------------------------------------------------------


def test_the_users_example_spans_31_frames():
    gaps = jnp.array([[2, 6, 6, 3, 5, 2, 2, 4]], jnp.float32)
    positions, total = gaps_to_positions(gaps, jnp.ones((1, 8), bool))
    np.testing.assert_array_equal(np.asarray(positions), [[2, 8, 14, 17, 22, 24, 26, 30]])
    assert total.dtype == jnp.int32 and int(total[0]) == 31


def test_gaps_are_rounded_clamped_and_ignored_where_masked():
    gaps = jnp.array([[0.2, 0.3, 2.6, -4.0, 9.0], [-1.0, 1.0, 1.0, 50.0, 50.0]])
    mask = jnp.array([[True] * 4 + [False], [True] * 3 + [False] * 2])
    positions, total = gaps_to_positions(gaps, mask)
    np.testing.assert_array_equal(np.asarray(positions), [[0, 1, 4, 5, 5], [0, 1, 2, 2, 2]])
    np.testing.assert_array_equal(np.asarray(total), [6, 3])


@HYPOTHESIS
@given(
    st.lists(st.floats(-3, 12, allow_nan=False), min_size=8, max_size=8),
    st.integers(1, 8),
)
def test_positions_follow_the_rule_for_any_gaps(gaps, valid):
    mask = np.arange(8) < valid
    positions, total = gaps_to_positions(jnp.array([gaps], jnp.float32), jnp.array([mask]))
    expected, position = [], 0
    for i, gap in enumerate(np.round(np.float32(gaps[:valid]))):
        position += max(int(gap), 0 if i == 0 else 1)
        expected.append(position)
    np.testing.assert_array_equal(np.asarray(positions[0, :valid]), expected)
    assert int(total[0]) == expected[-1] + 1


# --- frame selection and packing ---------------------------------------------------------------------


def _keep(prob, valid, mode, **kw):
    return np.asarray(select_frames(jnp.array([prob]), jnp.array([valid]), mode, **kw))[0].tolist()


def test_select_frames_edge_cases():
    all_valid = [True] * 4
    assert _keep([0.5, 0.9, 0.5, 0.5], all_valid, "topk", k=2) == [True, True, False, False]  # tie: earlier
    assert _keep([0.1, 0.2, 0.3, 0.9], [True, True, True, False], "topk", k=10) == [True, True, True, False]
    assert _keep([0.9, 0.9, 0.9, 0.9], [True, True, False, False], "threshold") == [True, True, False, False]
    assert _keep([0.1, 0.1, 0.1, 0.1], all_valid, "threshold") == [True, False, False, False]  # one kept
    assert _keep([0.1, 0.3, 0.3, 0.9], [True, True, True, False], "threshold") == [False, True, False, False]
    noise = jnp.array([[0.5, 0.5, 0.05, 0.5]])
    assert _keep([0.6, 0.4, 0.1, 0.7], all_valid, "bernoulli", noise=noise) == [True, False, True, True]
    with pytest.raises(ValueError, match="noise"):
        _keep([0.5] * 4, all_valid, "bernoulli")
    with pytest.raises(ValueError, match="mode"):
        _keep([0.5] * 4, all_valid, "sometimes")


@HYPOTHESIS
@given(st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=2, max_size=2))
def test_pack_then_place_puts_every_kept_frame_back_at_its_index(keep_rows):
    keep = np.array(keep_rows)
    latent = jnp.arange(2 * 6 * 3 * 2, dtype=jnp.float32).reshape(2, 6, 3, 2) + 1
    kept, gaps, kept_valid = pack_kept(latent, jnp.asarray(keep))
    assert kept.shape[1] == keep.sum(1).max() and gaps.dtype == jnp.int32
    assert not np.asarray(kept)[~np.asarray(kept_valid)].any()  # padding slots are zero
    fill = jnp.full((1, 1, 1, 2), -7.0)
    placed = np.asarray(place_kept(kept, gaps, kept_valid, 6, fill))
    expected = np.where(keep[:, :, None, None], np.asarray(latent), -7.0)
    np.testing.assert_array_equal(placed, expected)


# --- the models end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vae():
    # one block each and a one-level UNet: every code path, a fraction of the compile time
    model = VideoVAE("vae-tiny", encoder_depth=1, decoder_depth=1, unet_num_levels=1, rngs=nnx.Rngs(0))
    randomize(model, seed=0)
    return model


def _video(batch, frames, cfg):
    shape = (batch, frames, cfg.height, cfg.width, cfg.channels)
    return jnp.asarray(np.random.default_rng(0).uniform(size=shape).astype(np.float32))


def test_compress_then_decompress_returns_every_original_frame(tiny_vae):
    cfg = tiny_vae.config
    video = _video(2, 5, cfg)
    packed = tiny_vae.compress(video, mode="topk", k=2)
    assert packed.kept.shape == (2, 2, cfg.num_patches, cfg.latent_dim) and packed.num_frames == 5
    assert packed.gaps.dtype == jnp.int32 and bool(packed.kept_valid.all())
    restored = tiny_vae.decompress(packed)
    assert restored.shape == video.shape and bool(jnp.isfinite(restored).all())


def test_training_forward_drops_frames_to_the_fill_token(tiny_vae):
    cfg = tiny_vae.config
    mask = jnp.array([[True] * 5, [True, True, True, False, False]])
    out = tiny_vae(_video(2, 5, cfg), mask, key=jax.random.key(3))
    assert out["reconstruction"].shape == (2, 5, cfg.height, cfg.width, cfg.channels)
    assert out["mean"].shape == out["variance"].shape == (2, 5, cfg.num_patches, cfg.latent_dim)
    assert out["selection"].shape == out["keep"].shape == (2, 5, 1)
    assert set(np.unique(np.asarray(out["keep"]))) <= {0.0, 1.0}
    assert bool((out["variance"] > 0).all())


def test_vae_takes_the_original_ports_key_mask_layout_too(tiny_vae):
    """Callers of the original port pass the mask as (B,1,1,T): the same outputs as (B,T)."""
    cfg = tiny_vae.config
    video = _video(2, 5, cfg)
    mask = jnp.array([[True] * 5, [True, True, True, False, False]])
    key_mask = mask[:, None, None, :]
    encoded = tiny_vae.encoder(video, mask)
    for got, want in zip(tiny_vae.encoder(video, key_mask), encoded):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    unmasked = tiny_vae.encoder(video, jnp.ones((2, 5), bool))[0]
    assert not np.array_equal(np.asarray(unmasked[1]), np.asarray(encoded[0][1]))  # the mask is used
    decoded = tiny_vae.decoder(encoded[0], mask)
    np.testing.assert_array_equal(np.asarray(tiny_vae.decoder(encoded[0], key_mask)), np.asarray(decoded))
    forward = [tiny_vae(video, m, key=jax.random.key(3)) for m in (mask, key_mask)]
    for name in forward[0]:
        np.testing.assert_array_equal(
            np.asarray(forward[1][name]), np.asarray(forward[0][name]), err_msg=name
        )
    packed = [tiny_vae.compress(video, m, mode="topk", k=2) for m in (mask, key_mask)]
    np.testing.assert_array_equal(np.asarray(packed[1].gaps), np.asarray(packed[0].gaps))
    np.testing.assert_array_equal(np.asarray(packed[1].kept), np.asarray(packed[0].kept))


@pytest.mark.parametrize("shape", [(2, 1, 5), (2, 1, 1, 4), (1, 5), (2, 5, 1)])
def test_a_mask_of_another_shape_is_a_clear_error(tiny_vae, shape):
    video = _video(2, 5, tiny_vae.config)
    expected = r"mask must be \(B, T\) = \(2, 5\) or \(B, 1, 1, T\) = \(2, 1, 1, 5\), got " + re.escape(
        str(shape)
    )
    with pytest.raises(ValueError, match=expected):
        tiny_vae.encoder(video, jnp.ones(shape, bool))


def test_dit_sampling_keeps_a_float32_state_and_returns_gaps_per_frame():
    dit = VideoDiT("dit-tiny", depth=1, rngs=nnx.Rngs(0))
    randomize(dit, seed=0)
    cfg = dit.config
    noise = _normal(0, (2, 3, cfg.hw, cfg.compressed_channel_dim)).astype(jnp.bfloat16)
    x, gaps = sample(dit, noise, jnp.ones((2, 3), bool), num_steps=3)
    assert x.dtype == jnp.float32 and x.shape == noise.shape
    assert gaps.shape == (2, 3)
    assert not np.allclose(np.asarray(x), np.asarray(noise, np.float32))
