"""A round trip alone proves little (an identity passes it): the converted weights must compute what the
original checkpoint computes in the JAX reference. Needs jax_ref and torch_impl."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import PRESETS
from convert.options import Options
from dfc.convert_checks import convert
from jax_ref.checkpoints import random_model, write_training_checkpoint

pytest.importorskip("jax_ref")
pytest.importorskip("torch_impl")


def _jax_ref_weights(config, seed):
    """Weights at the scale jax_ref uses for its own parity tests (random values everywhere, no zeros)."""
    import jax.numpy as jnp
    from flax import nnx

    import jax_ref

    cls = jax_ref.VideoVAE if config.model_type == "vae" else jax_ref.VideoDiT
    model = cls(config, rngs=nnx.Rngs(seed), dtype=jnp.float32)
    jax_ref.randomize(model, seed)
    return jax_ref.state_to_flat(model)


@pytest.mark.parametrize(
    "preset, layout, dtype", [("vae-tiny", "flax-0.10", None), ("dit-tiny", "model-only", "bfloat16")]
)
def test_forward_of_the_converted_weights_matches_jax_ref_on_the_checkpoint(tmp_path, preset, layout, dtype):
    """With --dtype bfloat16 the reference runs on the same rounded weights: the check is of the layout."""
    config = PRESETS[preset]
    ck = write_training_checkpoint(tmp_path / "ck", _jax_ref_weights(config, seed=5), layout)
    report = convert(ck, tmp_path / "st", Options(verify_forward=True, dtype=dtype))
    forward = next(c for c in report.checks if c.name == "forward vs jax_ref")
    assert forward.ok is True, forward.detail
    assert "tolerance" in forward.detail


def test_a_wrong_layout_is_caught_by_the_forward_check(tmp_path, monkeypatch):
    """The check has teeth: transposing a square kernel the wrong way keeps every shape and fails it."""
    from common.kinds import Kind
    from convert import layout

    config = PRESETS["dit-tiny"]
    ck = write_training_checkpoint(tmp_path / "ck", _jax_ref_weights(config, seed=6), "model-only")
    real = layout.to_torch

    def forgets_to_transpose_square_kernels(kind, array):
        if kind is Kind.LINEAR and array.shape[0] == array.shape[1]:
            return array
        return real(kind, array)

    monkeypatch.setattr(layout, "to_torch", forgets_to_transpose_square_kernels)
    with pytest.raises(Exception, match="forward check failed"):
        convert(ck, tmp_path / "st", Options(verify_forward=True))
    assert not (tmp_path / "st").exists()


def test_a_jax_user_restores_our_orbax_into_jax_ref(tmp_path):
    """safetensors -> Orbax, then the documented recipe: restore with the model's state as the target."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    from flax import nnx

    import jax_ref

    config = PRESETS["vae-tiny"]
    weights = random_model(config, seed=9)
    ck = write_training_checkpoint(tmp_path / "ck", weights, "flax-0.12")
    convert(ck, tmp_path / "st")
    convert(tmp_path / "st", tmp_path / "orbax")
    model = jax_ref.VideoVAE(config, rngs=nnx.Rngs(0), dtype=jnp.float32)
    restored = ocp.StandardCheckpointer().restore(
        (tmp_path / "orbax").absolute(), {"model": nnx.state(model)}
    )
    nnx.update(model, restored["model"])
    flat = jax_ref.state_to_flat(model)
    assert set(flat) == set(weights)
    for name, value in weights.items():
        if "ROPE" in name:
            np.testing.assert_allclose(flat[name], value, atol=1e-6)
        else:
            assert np.array_equal(flat[name].view(np.uint32), value.view(np.uint32)), name
