"""The user's cache folder for dfc: `$DFC_CACHE_DIR`, else `$XDG_CACHE_HOME/dfc`, else `~/.cache/dfc`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("DFC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dfc"
    )
    return Path(root)
