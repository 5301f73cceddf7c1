"""Which weights a model came from, as a short stable string stored in every `.dfc` file.

The identity is `sha256:<first 16 hex digits>` of the weight file's bytes - all of them, so two models
of the same shape but different values never share one (a header-only hash would: safetensors
headers hold names and shapes, not values). Hashing runs at about 0.5 GB/s on one core, 1.3 s for the
published 652 MB VAE, against a model load that reads the same bytes anyway. Weights split into shards
hash the shards in index order. `config.json` is not part of the identity: a config that does not fit the
tensors fails to load.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from torch_impl.loading import DEFAULT_REPO, _locate

IDENTITY_HEX_DIGITS = 16
_CHUNK = 1 << 20


def weights_files(source: str | os.PathLike = DEFAULT_REPO, model_type: str = "vae") -> list[Path]:
    """The files `load_vae`/`load_dit` would read for `source` (a hub repo id is fetched or found in the
    cache); raises `WeightsNotFoundError` with advice when there are none."""
    files, _ = _locate(source, model_type)
    return [Path(f) for f in files]


def file_identity(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:IDENTITY_HEX_DIGITS]}"


def weights_identity(source: str | os.PathLike = DEFAULT_REPO, model_type: str = "vae") -> str:
    """`sha256:...` of the weights behind `source`; equal for a file, its directory and a copy of either."""
    return file_identity(weights_files(source, model_type))
