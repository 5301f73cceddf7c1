"""What a conversion is asked to do (`Options`) and what it reports back (`Report`, `Check`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.tables.base import Table
from convert import safetensors_io as st

DEFAULT_BATCH_BYTES = 32 << 20
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype("bfloat16")}
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class ConvertError(Exception):
    """Anything that stops a conversion, as one line for a person."""


FLAX_KINDS = ("nnx", "linen")


@dataclass
class Options:
    model: str | None = None  # a key of `common.tables.TABLES`; detected when None
    # a table of the caller's (`common.tables.load_table`): the model is what it says, with no
    # configuration to infer or check (a registered table is given as `model` instead)
    table: Table | None = None
    flax: str = "nnx"  # the Orbax output's tree: "nnx" ({'model': state}) or "linen" ({'params': ...})
    config: str | None = None  # preset name, JSON file or directory with config.json
    dtype: str | None = None  # "float32" | "bfloat16"; None keeps every bit
    step: int | None = None
    force: bool = False
    verify_forward: bool = False  # needs a forward check from the caller (`convert.checks.Checks`)
    # fsync the output and its directory before the rename: survives a power cut (the weights are mostly
    # on the disk already, written through as they go: `safetensors_io._WriteThrough`). Without it a
    # failed conversion still leaves nothing: that is the rename's doing.
    sync: bool = False
    max_shard_bytes: int = st.DEFAULT_MAX_SHARD_BYTES
    batch_bytes: int = DEFAULT_BATCH_BYTES


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str


@dataclass
class Report:
    source: str
    source_format: str
    destination: Path | None = None
    destination_format: str = ""
    layout: str = ""
    step: int | None = None
    model_type: str = ""
    config: object | None = None  # the model's configuration dataclass (`common.config`)
    config_source: str = ""
    assumed: dict[str, str] = field(default_factory=dict)
    dtype: str = ""
    converted: dict[str, str] = field(default_factory=dict)  # source name -> destination name
    dropped: dict[str, str] = field(default_factory=dict)  # source name -> reason
    not_read: dict[str, int] = field(default_factory=dict)  # other subtree -> leaves
    files: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    checks: list[Check] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return all(c.ok is not False for c in self.checks)


Progress = Callable[[int], None]  # called with the number of bytes just converted
Log = Callable[[str], None]


def quiet(_: object) -> None:
    pass


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dynamic-frame-compression")
    except PackageNotFoundError:
        return "unknown"
