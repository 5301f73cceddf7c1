"""What a checkpoint holds, without reading its arrays: every leaf's path, shape, dtype and bytes.

Works on an Orbax checkpoint (tree from `_METADATA`, shapes from the array headers), a safetensors file or
directory (the JSON headers) and a `.pt` (memory-mapped, so no tensor data is read). For an Orbax
checkpoint each leaf says whether it belongs to the model subtree that `dfc convert` reads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.infer import detect_model_type
from convert import safetensors_io as st
from convert.orbax_io import (
    LAYOUT_DESCRIPTIONS,
    ArrayStore,
    find_model_subtree,
    read_tree_paths,
    resolve_checkpoint,
)


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    in_model: bool


@dataclass
class Listing:
    kind: str  # orbax | safetensors | pt
    location: Path
    leaves: list[Leaf]
    layout: str = ""
    step: int | None = None
    model_prefix: tuple[str, ...] = ()
    model_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # what the table rules see: Flax names (Orbax, without prefix and `value`) or PyTorch names
    names: dict[tuple[str, ...], str] = field(default_factory=dict)
    torch_names: bool = False

    @property
    def model_bytes(self) -> int:
        return sum(leaf.nbytes for leaf in self.leaves if leaf.in_model)


def describe(path: str | os.PathLike, step: int | None = None) -> Listing:
    from convert.pipeline import source_format

    path = Path(path)
    kind = source_format(path)
    if kind == "orbax":
        return _describe_orbax(path, step)
    if kind == "safetensors":
        return _describe_safetensors(path)
    return _describe_pt(path)


def _describe_orbax(path: Path, step: int | None) -> Listing:
    location = resolve_checkpoint(path, step)
    paths = read_tree_paths(location.step_dir)
    subtree = find_model_subtree(paths)
    model_paths = set(subtree.leaves.values())
    infos = ArrayStore(location.step_dir).infos(paths)
    leaves = [
        Leaf(info.path, info.shape, _dtype_name(info.dtype), info.nbytes, info.path in model_paths)
        for info in infos
    ]
    return Listing(
        kind="orbax",
        location=location.step_dir,
        leaves=leaves,
        layout=subtree.layout,
        step=location.step,
        model_prefix=subtree.prefix,
        model_type=detect_model_type(subtree.leaves),
        names={path: name for name, path in subtree.leaves.items()},
    )


def _describe_safetensors(path: Path) -> Listing:
    reader = st.SafetensorsReader(path)
    leaves = [
        Leaf(tuple(name.split(".")), t.shape, _dtype_name(t.dtype), t.nbytes, True)
        for name, t in sorted(reader.tensors.items())
    ]
    return Listing(
        kind="safetensors",
        location=path,
        leaves=leaves,
        layout=f"{len(reader.files)} file(s)",
        model_type=reader.metadata.get("model_type") or _torch_model_type(leaves),
        metadata=dict(reader.metadata),
        names={leaf.path: ".".join(leaf.path) for leaf in leaves},
        torch_names=True,
    )


def _describe_pt(path: Path) -> Listing:
    from convert.torch_source import load_pt

    state = load_pt(path)
    leaves = []
    for name, tensor in sorted(state.items()):
        shape = tuple(tensor.shape)
        leaves.append(
            Leaf(
                tuple(name.split(".")),
                shape,
                str(tensor.dtype).replace("torch.", ""),
                math.prod(shape) * tensor.element_size(),
                True,
            )
        )
    return Listing(
        kind="pt",
        location=path,
        leaves=leaves,
        layout="state dict",
        model_type=_torch_model_type(leaves),
        names={leaf.path: ".".join(leaf.path) for leaf in leaves},
        torch_names=True,
    )


def _torch_model_type(leaves: list[Leaf]) -> str | None:
    from convert.options import ConvertError
    from convert.resolve import torch_named_model

    try:
        return torch_named_model(None, {".".join(leaf.path): leaf.shape for leaf in leaves})[0]
    except ConvertError:
        return None


def _dtype_name(dtype: np.dtype) -> str:
    return np.dtype(dtype).name


def layout_description(listing: Listing) -> str:
    return LAYOUT_DESCRIPTIONS.get(listing.layout, listing.layout)


@dataclass
class Node:
    """A subtree: its leaves' count and bytes, and children by name."""

    name: str
    leaves: int = 0
    nbytes: int = 0
    in_model: bool = False
    children: dict[str, Node] = field(default_factory=dict)
    leaf: Leaf | None = None


def build_tree(leaves: list[Leaf]) -> Node:
    root = Node("")
    for leaf in leaves:
        node = root
        node.leaves += 1
        node.nbytes += leaf.nbytes
        node.in_model |= leaf.in_model
        for part in leaf.path:
            node = node.children.setdefault(part, Node(part))
            node.leaves += 1
            node.nbytes += leaf.nbytes
            node.in_model |= leaf.in_model
        node.leaf = leaf
    return root
