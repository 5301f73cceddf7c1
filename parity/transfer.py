"""One set of fp32 weights into every model of a parity run, moved to torch only through `convert.tables`.

The JAX models are built abstractly (`nnx.eval_shape`: no initialiser runs, which in eager JAX would
compile one kernel per shape) and then filled: the reference with seeded random values for every
parameter (zero-initialised ones included, or a conversion bug in them would hide), the bf16 runs with
the reference's exact leaves. The torch model gets the same leaves through `flax_to_torch`, the one
name/layout table of the project, and loads them strictly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from common.precision import NormNumerics, Precision
from common.rope import rope_tables
from common.tables import ROPE_LEAVES, Table
from convert.tables import flax_to_torch

JaxBuilder = Callable[..., object]  # (dtype, numerics) -> nnx.Module
TorchBuilder = Callable[[], object]  # () -> torch.nn.Module


def abstract_jax_model(build: JaxBuilder, dtype, numerics: NormNumerics):
    from flax import nnx

    return nnx.eval_shape(lambda: build(dtype, numerics))


def _fill_rope_caches(module) -> None:
    """RoPE caches are a pure function of their shape `(1, max_len, 1, head_dim)`."""
    import jax
    import jax.numpy as jnp

    from jax_ref.params import variables

    for name, var in variables(module):
        leaf = name.rpartition(".")[2]
        if leaf in ROPE_LEAVES and not isinstance(var.value, jax.Array):
            _, max_len, _, head_dim = var.value.shape
            cos, sin = rope_tables(max_len, head_dim)
            var.value = jnp.asarray(cos if leaf == "cos_cached" else sin)


def reference_weights(build: JaxBuilder, seed: int) -> dict[str, np.ndarray]:
    """Seeded random fp32 leaves of the model `build` makes (every Param random, true RoPE caches)."""
    import jax.numpy as jnp

    from jax_ref.params import randomize, state_to_flat

    module = abstract_jax_model(build, jnp.float32, NormNumerics.FLAX_0_10)
    randomize(module, seed)
    _fill_rope_caches(module)
    return state_to_flat(module)


def jax_model(build: JaxBuilder, flat: Mapping[str, np.ndarray], dtype, numerics: NormNumerics):
    """A JAX model in compute `dtype` (params fp32) holding exactly `flat`."""
    from jax_ref.params import load_flat

    module = abstract_jax_model(build, dtype, numerics)
    load_flat(module, flat)
    return module


def torch_model(
    build: TorchBuilder,
    flat: Mapping[str, np.ndarray],
    table: Table,
    prefix: str,
    precision: Precision,
    device: str = "cpu",
):
    """A torch model holding `flat` (converted by `table`), cast to `precision`, in eval mode.

    `prefix` places a lone block inside its model (`"encoder.layers.0."`) so the model's rules apply.
    Built on the meta device and assigned in place; RoPE caches are then recomputed by the model.
    """
    import torch

    from torch_impl.precision import apply_precision

    state, _dropped = flax_to_torch(table, flat, prefix)
    with torch.device("meta"):
        model = build()
    # arrays the table laid out afresh are handed over without a copy; views of `flat` are copied
    tensors = {k: torch.from_numpy(v) if v.flags.writeable else torch.tensor(v) for k, v in state.items()}
    del state
    model.load_state_dict(tensors, strict=True, assign=True)
    for module in model.modules():
        if hasattr(module, "reset_caches"):
            module.reset_caches()
    return apply_precision(model, precision).to(device).eval()
