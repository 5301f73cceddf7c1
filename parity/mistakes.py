"""Real porting mistakes, planted in a copy of a torch model, so tests can prove the suite catches them.

Each mistake lives in one module (`target`), and the suite must name exactly that module as the first
divergent layer in isolated mode. The plants here fit any model; a suite adds its own (the VAE/DiT
catalogue is `parity.suites.vae_dit.mistakes`):

- ConvTranspose kernel transposed but not mirrored (flax's is a correlation, torch's the adjoint);
- a square Linear kernel copied without the transpose (shapes agree, so loading cannot notice);
- a LayerNorm epsilon left at torch's 1e-5 instead of flax's 1e-6: shows only when the variance is small.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Mistake:
    name: str
    target: str  # path of the module the mistake is in: the layer the suite must name
    plant: Callable[[nn.Module], None]  # applied to that module, in place
    why_visible: str  # what the inputs need for the mistake to show

    def planted_copy(self, model: nn.Module) -> nn.Module:
        """A deep copy of `model` with the mistake planted; `model` itself is untouched."""
        broken = copy.deepcopy(model)
        self.plant(broken.get_submodule(self.target))
        return broken


def unflipped_conv_transpose(module: nn.ConvTranspose3d) -> None:
    # undo the mirror of the conversion table: the kernel is then just transposed, as flax stores it
    with torch.no_grad():
        module.weight.copy_(module.weight.flip(2, 3, 4))


def untransposed_square_kernel(module: nn.Linear) -> None:
    with torch.no_grad():
        module.weight.copy_(module.weight.T.clone())


def layernorm_epsilon(eps: float = 1e-5) -> Callable[[nn.Module], None]:
    def plant(module: nn.LayerNorm) -> None:
        module.eps = eps

    return plant
