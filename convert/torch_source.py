"""A published `.pt` state dict as numpy arrays (memory-mapped where the file allows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.torch_file import TorchFileError, read_torch_state
from convert.options import ConvertError


def load_pt(src: Path) -> dict:
    """`{name: torch.Tensor}`; a file that is not a plain, non-empty state dict is a ConvertError."""
    try:
        return read_torch_state(src)
    except TorchFileError as err:
        raise ConvertError(str(err)) from None


def tensor_to_numpy(tensor) -> np.ndarray:
    """A view of a (memory-mapped) CPU tensor; bfloat16 through its bits, which numpy cannot name."""
    import torch

    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.dtype("bfloat16"))
    return tensor.numpy()


def load_pt_arrays(src: Path) -> dict[str, np.ndarray]:
    return {k: tensor_to_numpy(v) for k, v in load_pt(src).items()}
