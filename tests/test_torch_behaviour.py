"""Behaviour of torch_impl: selection, packing, gap rules, masked attention, tiny end-to-end runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_impl import (
    Attention,
    Conv3d,
    GumbelSigmoidSTE,
    LayerNorm,
    Linear,
    VideoDiT,
    VideoVAE,
    apply_precision,
    gaps_to_positions,
    pack_kept,
    place_kept,
    sample,
    select_frames,
)

REPO = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=60, deadline=None)


# --- gaps_to_positions -------------------------------------------------------------------------------


def test_gaps_example_from_the_description():
    positions, total = gaps_to_positions(
        torch.tensor([[2.0, 6, 6, 3, 5, 2, 2, 4]]), torch.ones(1, 8, dtype=torch.bool)
    )
    assert positions.tolist() == [[2, 8, 14, 17, 22, 24, 26, 30]]
    assert total.tolist() == [31]
    assert positions.dtype == total.dtype == torch.long


def _positions_oracle(gaps: list[float], mask: list[bool]) -> tuple[list[int], int]:
    position, positions, last = 0, [], -1
    for i, (gap, valid) in enumerate(zip(gaps, mask)):
        step = max(round(gap), 0 if i == 0 else 1) if valid else 0
        position += step
        positions.append(position)
        if valid:
            last = position
    return positions, last + 1


@FAST
@given(
    st.lists(st.tuples(st.floats(-3, 12, width=32), st.booleans()), min_size=1, max_size=12), st.booleans()
)
def test_gaps_to_positions_properties(items, bf16_input):
    gaps = torch.tensor([[g for g, _ in items]])
    mask = torch.tensor([[m for _, m in items]])
    if bf16_input:
        gaps = gaps.to(torch.bfloat16)
    positions, total = gaps_to_positions(gaps, mask)
    want_positions, want_total = _positions_oracle(gaps[0].float().tolist(), mask[0].tolist())
    assert positions[0].tolist() == want_positions
    assert total.item() == want_total
    valid = positions[0][mask[0]]
    assert bool((valid[1:] > valid[:-1]).all()), "valid frames never share a position"
    assert total.item() >= int(mask.sum())


# --- select_frames -----------------------------------------------------------------------------------


def _keep(prob, valid=None, mode="threshold", **kw):
    prob = torch.tensor([prob])
    valid = torch.ones_like(prob, dtype=torch.bool) if valid is None else torch.tensor([valid])
    return select_frames(prob, valid, mode, **kw)[0].tolist()


def test_threshold_is_strictly_above_half():
    assert _keep([0.5, 0.51, 0.9, 0.2]) == [False, True, True, False]


def test_nothing_kept_keeps_the_most_probable_earliest():
    assert _keep([0.1, 0.3, 0.2, 0.3]) == [False, True, False, False]


def test_padded_frames_are_never_kept():
    assert _keep([0.9, 0.9, 0.1], [False, True, True]) == [False, True, False]
    assert _keep([0.9, 0.1, 0.2], [False, True, True]) == [False, False, True]
    assert _keep([0.9, 0.9], [False, False]) == [False, False]
    assert _keep([0.9, 0.9, 0.1], [False, True, True], "topk", k=3) == [False, True, True]


def test_topk_ties_go_to_the_earlier_frame():
    assert _keep([0.5, 0.9, 0.5, 0.9, 0.1], mode="topk", k=1) == [False, True, False, False, False]
    assert _keep([0.5, 0.9, 0.5, 0.9, 0.1], mode="topk", k=3) == [True, True, False, True, False]
    assert _keep([0.2, 0.2, 0.2], mode="topk", k=0) == [True, False, False]


def test_topk_per_item_k():
    prob = torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    keep = select_frames(prob, torch.ones(2, 3, dtype=torch.bool), "topk", k=torch.tensor([1, 2]))
    assert keep.tolist() == [[False, False, True], [True, True, False]]


def test_bernoulli_uses_the_given_draws():
    assert _keep([0.3, 0.3, 0.8], mode="bernoulli", noise=torch.tensor([[0.2, 0.4, 0.79]])) == [
        True,
        False,
        True,
    ]
    prob, valid = torch.full((4, 32), 0.5), torch.ones(4, 32, dtype=torch.bool)
    a = select_frames(prob, valid, "bernoulli", noise=torch.Generator().manual_seed(3))
    b = select_frames(prob, valid, "bernoulli", noise=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and 0 < int(a.sum()) < a.numel()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown selection mode"):
        _keep([0.5], mode="random")
    with pytest.raises(ValueError, match="needs k"):
        _keep([0.5], mode="topk")
    with pytest.raises(ValueError, match="shape"):
        _keep([0.5, 0.5], mode="bernoulli", noise=torch.rand(1, 3))


# --- pack_kept / place_kept --------------------------------------------------------------------------


@FAST
@given(st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=1, max_size=4))
def test_pack_then_place_puts_each_kept_frame_back(keep_rows):
    keep = torch.tensor(keep_rows)
    batch, frames = keep.shape
    # Every (item, frame) gets a distinct value so a misplaced frame cannot go unnoticed.
    latent = (
        (torch.arange(batch * frames, dtype=torch.float32) + 1)
        .reshape(batch, frames, 1, 1)
        .expand(-1, -1, 2, 3)
    )
    kept, gaps, kept_valid = pack_kept(latent, keep)
    assert kept.shape == (batch, int(keep.sum(1).max()), 2, 3) and gaps.dtype == torch.int32
    assert kept_valid.sum(1).tolist() == keep.sum(1).tolist()
    assert bool((kept[~kept_valid] == 0).all()) and bool((gaps[~kept_valid] == 0).all())
    fill = torch.full((1, 1, 1, 3), -7.0)
    out = place_kept(kept, gaps, kept_valid, frames, fill)
    want = torch.where(keep[:, :, None, None], latent, fill)
    assert torch.equal(out, want)


def test_gaps_format():
    keep = torch.tensor([[False, False, True, False, True, True]])
    _, gaps, _ = pack_kept(torch.zeros(1, 6, 1, 1), keep)
    assert gaps.tolist() == [[2, 2, 1]]


def test_place_rejects_positions_outside_the_clip():
    kept, valid = torch.zeros(1, 2, 1, 1), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="do not fit"):
        place_kept(kept, torch.tensor([[2, 3]]), valid, 5, torch.zeros(1, 1, 1, 1))
    with pytest.raises(ValueError, match=">= 1"):
        place_kept(kept, torch.tensor([[1, 0]]), valid, 5, torch.zeros(1, 1, 1, 1))


# --- attention masking -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_masked_rows_average_uniformly(dtype):
    torch.manual_seed(0)
    attention = apply_precision(Attention(16, 2, 16, max_len=8), "fp32" if dtype == torch.float32 else "bf16")
    x = torch.randn(2, 5, 16, dtype=dtype)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[0] = False
    out = attention(x, mask)
    assert torch.isfinite(out).all()
    # Uniform weights: every query of item 0 sees the mean of all values.
    v = attention.qkv_projection(attention.input_norm(x[:1])).chunk(3, dim=-1)[2]
    want = attention.out_projection(v.float().mean(dim=1, keepdim=True).to(dtype)).expand(-1, 5, -1)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(out[:1], want, **tolerance)


def test_masked_keys_are_invisible():
    torch.manual_seed(0)
    attention = Attention(16, 2, 16, max_len=8)
    x = torch.randn(1, 6, 16)
    mask = torch.tensor([True, True, True, True, False, False]).reshape(1, 1, 1, 6)
    torch.testing.assert_close(attention(x, mask)[:, :4], attention(x[:, :4]), atol=1e-6, rtol=1e-5)


def test_layer_norm_computes_in_float32_and_returns_the_input_dtype():
    norm = LayerNorm(8)
    x = torch.randn(3, 8).to(torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16
    torch.testing.assert_close(norm(x).float(), norm(x.float()), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_bf16_layers_round_the_product_then_add_the_bias(layer):
    torch.manual_seed(0)
    if layer == "linear":
        module, x = Linear(32, 16), torch.randn(4, 32)
        product = lambda w: torch.nn.functional.linear(x.double(), w.double())  # noqa: E731
        bias_shape = (16,)
    else:
        module, x = Conv3d(4, 8, (3, 3, 3), padding="same"), torch.randn(1, 4, 2, 6, 6)
        product = lambda w: torch.nn.functional.conv3d(x.double(), w.double(), padding="same")  # noqa: E731
        bias_shape = (8, 1, 1, 1)
    torch.nn.init.normal_(module.bias)
    module = module.to(torch.bfloat16)
    x = x.to(torch.bfloat16)
    # flax's Linear/Conv(dtype=bf16): exact product rounded to bf16, then a bf16 bias add.
    want = product(module.weight).to(torch.bfloat16) + module.bias.reshape(bias_shape)
    got = module(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=0, rtol=2**-7)


def test_gumbel_sigmoid_ste():
    gumbel = GumbelSigmoidSTE()
    assert list(gumbel.parameters()) == []
    logits = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    hard = gumbel(logits, noise=torch.tensor([0.9, 0.2, 0.5]))
    # logit(p) + logistic(u) > 0  <=>  u > 1 - p
    assert hard.tolist() == [1.0, 0.0, 1.0]
    hard.sum().backward()
    assert bool((logits.grad > 0).all())
    assert gumbel.eval()(logits).tolist() == [0.0, 1.0, 1.0]


# --- tiny models end to end --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vae() -> VideoVAE:
    torch.manual_seed(0)
    return VideoVAE("vae-tiny").eval()


def test_vae_round_trip_keeps_the_frame_count(tiny_vae):
    video = torch.rand(2, 7, 32, 32, 3)
    for mode, k in [("threshold", None), ("topk", 2), ("bernoulli", None)]:
        compressed = tiny_vae.compress(video, mode=mode, k=k, noise=torch.Generator().manual_seed(0))
        assert compressed.num_frames == 7
        assert tiny_vae.decompress(compressed).shape == video.shape


def test_keeping_every_frame_decodes_the_mean(tiny_vae):
    video = torch.rand(1, 4, 32, 32, 3)
    compressed = tiny_vae.compress(video, mode="topk", k=4)
    assert compressed.gaps.tolist() == [[0, 1, 1, 1]]
    with torch.inference_mode():
        mean, _, _ = tiny_vae.encoder(video, None)
        want = tiny_vae.decoder(mean, None)
    torch.testing.assert_close(tiny_vae.decompress(compressed), want)


def test_vae_takes_the_original_ports_key_mask_layout_too(tiny_vae):
    """Callers of the original port pass the mask as (B,1,1,T): the same outputs as (B,T)."""
    video = torch.rand(2, 5, 32, 32, 3)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    key_mask = mask[:, None, None, :]
    with torch.inference_mode():
        encoded = tiny_vae.encoder(video, mask)
        for got, want in zip(tiny_vae.encoder(video, key_mask), encoded):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert not torch.equal(tiny_vae.encoder(video, None)[0][1], encoded[0][1])  # the mask is used
        decoded = tiny_vae.decoder(encoded[0], mask)
        torch.testing.assert_close(tiny_vae.decoder(encoded[0], key_mask), decoded, rtol=0, atol=0)
        forward = [tiny_vae(video, m, generator=torch.Generator().manual_seed(0)) for m in (mask, key_mask)]
        for got, want in zip(*forward):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    packed = [tiny_vae.compress(video, m, mode="topk", k=2) for m in (mask, key_mask)]
    assert packed[0].gaps.tolist() == packed[1].gaps.tolist()
    torch.testing.assert_close(packed[1].kept, packed[0].kept, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 1, 5), (2, 1, 1, 4), (1, 5), (2, 5, 1)])
def test_a_mask_of_another_shape_is_a_clear_error(tiny_vae, shape):
    video = torch.rand(2, 5, 32, 32, 3)
    expected = r"mask must be \(B, T\) = \(2, 5\) or \(B, 1, 1, T\) = \(2, 1, 1, 5\), got " + re.escape(
        str(shape)
    )
    with torch.inference_mode(), pytest.raises(ValueError, match=expected):
        tiny_vae.encoder(video, torch.ones(shape, dtype=torch.bool))


def test_vae_training_forward():
    vae = VideoVAE("vae-tiny").train()
    video, mask = torch.rand(2, 4, 32, 32, 3), torch.tensor([[True] * 4, [True, True, False, False]])
    out = vae(video, mask, generator=torch.Generator().manual_seed(0))
    assert out.reconstruction.shape == video.shape and out.keep.shape == (2, 4, 1)
    assert set(out.keep.flatten().tolist()) <= {0.0, 1.0}
    out.reconstruction.mean().backward()
    assert vae.fill_token.grad is not None


@pytest.mark.parametrize("precision", ["fp32", "bf16", "mixed"])
def test_dit_sample_dtype_and_shape(precision):
    torch.manual_seed(0)
    dit = apply_precision(VideoDiT("dit-tiny"), precision).eval()
    noise = torch.randn(2, 3, 16, 24)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    x, gaps = sample(dit, noise, mask, num_steps=3)
    assert x.dtype == torch.float32 and x.shape == noise.shape
    assert gaps.shape == (2, 3) and torch.isfinite(x).all()


@pytest.mark.slow
def test_compiled_sampling_follows_the_eager_trajectory():
    """`sample(..., compile=True)` (torch.compile; the first call compiles for a minute on a CPU)."""
    torch.manual_seed(0)
    dit = VideoDiT("dit-tiny").eval()
    noise = torch.randn(2, 3, 16, 24)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    x, gaps = sample(dit, noise, mask, num_steps=2)
    x_compiled, gaps_compiled = sample(dit, noise, mask, num_steps=2, compile=True)
    torch.testing.assert_close(x_compiled, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gaps_compiled, gaps, rtol=1e-5, atol=1e-5)


def test_import_does_not_pull_in_jax():
    code = "import sys, torch_impl; print([m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
