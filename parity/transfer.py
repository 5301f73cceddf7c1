"""One set of fp32 weights into every model of a parity run, moved to torch only through the conversion table.

The reference gets seeded random values for every parameter (zero-initialised ones included, or a
conversion bug in them would hide) unless weights are given; the bf16 runs get the reference's exact
leaves. The torch model gets the same leaves through `flax_to_torch` with the subject's table, the one
name/layout table of the model, and loads them strictly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from convert.tables import flax_to_torch
from parity.jax_models import jax_model, random_weights

__all__ = ["cast_torch", "jax_model", "reference_weights", "torch_model"]


def reference_weights(subject, seed: int) -> dict[str, np.ndarray]:
    """Seeded random fp32 leaves of the subject's JAX model."""
    return random_weights(subject, seed)


def cast_torch(subject, model, precision: str):
    """The torch model under the policy named `precision`: the subject's own policies, or fp32 / bf16."""
    import torch

    name = getattr(precision, "value", precision)
    if name not in subject.precisions:
        known = ", ".join(subject.precisions)
        raise ValueError(f"subject {subject.name}: no torch precision policy {name!r} (it knows {known})")
    if subject.cast_torch is not None:
        return subject.cast_torch(model, name)
    return model.float() if name == "fp32" else model.to(torch.bfloat16)


def _on_meta(model) -> list[str]:
    return [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]


def torch_model(subject, flat: Mapping[str, np.ndarray], precision: str, device: str = "cpu"):
    """The subject's torch model holding `flat` (converted by its table), cast to `precision`, in eval mode.

    Built on the meta device and assigned in place (nothing is allocated twice); what the weights do not
    give (buffers computed at construction) is the subject's `prepare_torch` to recompute. A model that
    still has such buffers is built again normally and loaded by copy.
    """
    import torch

    state, _dropped = flax_to_torch(subject.table, flat, subject.prefix)
    # arrays the table laid out afresh are handed over without a copy; views of `flat` are copied
    tensors = {k: torch.from_numpy(v) if v.flags.writeable else torch.tensor(v) for k, v in state.items()}
    del state
    with torch.device("meta"):
        model = subject.build_torch()
    model.load_state_dict(tensors, strict=True, assign=True)
    if subject.prepare_torch is not None:
        subject.prepare_torch(model)
    if _on_meta(model):
        model = subject.build_torch()
        model.load_state_dict(tensors, strict=True)
        if subject.prepare_torch is not None:
            subject.prepare_torch(model)
    return cast_torch(subject, model, precision).to(device).eval()
