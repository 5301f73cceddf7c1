"""Orbax checkpoints without the model or the optimizer: find the step, read the tree, read chosen arrays.

An Orbax `StandardCheckpointer` directory holds `_METADATA` (the tree: one entry per leaf path) and the
arrays as zarr v2 arrays inside an OCDBT key-value store (or, for checkpoints saved without OCDBT, one
directory per array). Each array is named by its tree path joined with `.`. We read `_METADATA` and the
small `.zarray` headers to learn every path, shape and dtype without touching array data, then read only
the arrays asked for, straight from tensorstore, in batches whose reads overlap the caller's work.
Importing this module needs numpy and tensorstore, not jax or orbax (they cost ~130 MB and a second).
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METADATA_FILE = "_METADATA"
OCDBT_MANIFEST = "manifest.ocdbt"
# A CheckpointManager saves a single item under this name inside each step directory.
DEFAULT_ITEM = "default"
# Orbax writes a step under a temporary name first; such a directory is an unfinished save.
_TMP_MARKER = ".orbax-checkpoint-tmp"
# `290000`, `checkpoint_step_290000`, `checkpoint_step_250000_master`, `ckpt_100` (a manager's step_prefix).
_STEP_NAME = re.compile(r"^(?:.*step[_-]?|[A-Za-z]+_)?(\d+)(?:_[A-Za-z]\w*)?$")

# (axis permutation or None, axes reversed after it): see `common.kinds.Kind.torch_axes`.
Layout = tuple[tuple[int, ...] | None, tuple[int, ...]]


class CheckpointError(Exception):
    """The checkpoint is missing, unreadable or not what it claims to be; the message names the culprit."""


@dataclass(frozen=True)
class CheckpointLocation:
    step_dir: Path
    step: int | None


@dataclass(frozen=True)
class ArrayInfo:
    path: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def key(self) -> str:
        """The array's name inside the checkpoint: its tree path joined with dots, as Orbax names it."""
        return ".".join(self.path)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def is_step_dir(path: Path) -> bool:
    return (path / METADATA_FILE).is_file() or (path / OCDBT_MANIFEST).is_file()


def _step_number(name: str) -> int | None:
    """The step a directory name states, or None."""
    if _TMP_MARKER in name:
        return None
    match = _STEP_NAME.match(name)
    return int(match.group(1)) if match else None


def _item_dir(step_path: Path) -> Path | None:
    """The checkpoint inside a step directory: itself, or its single item (`default` for a manager)."""
    if is_step_dir(step_path):
        return step_path
    if is_step_dir(step_path / DEFAULT_ITEM):
        return step_path / DEFAULT_ITEM
    items = [p for p in step_path.iterdir() if p.is_dir() and is_step_dir(p)] if step_path.is_dir() else []
    return items[0] if len(items) == 1 else None


def resolve_checkpoint(path: str | os.PathLike, step: int | None = None) -> CheckpointLocation:
    """A step directory as given, or the latest (or `step`) checkpoint under a CheckpointManager root."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not an Orbax checkpoint (a checkpoint is a directory)")
    direct = _item_dir(path)
    if direct is not None:
        found = _step_number(path.name)
        if found is None and direct != path and direct.parent == path:  # a root with a single step in it
            found = _step_number(direct.name)
        if step is not None and found != step and direct == path and found is not None:
            raise CheckpointError(f"{path} is the checkpoint of step {found}, not of --step {step}")
        if step is not None and found != step:
            held = f"steps: {found}" if found is not None else "one checkpoint whose name states no step"
            raise CheckpointError(f"{path}: no step {step} ({held})")
        return CheckpointLocation(direct, found)
    steps = {}
    for child in path.iterdir():
        number = _step_number(child.name)
        item = _item_dir(child) if number is not None and child.is_dir() else None
        if item is not None:
            steps[number] = item
    if not steps:
        raise CheckpointError(f"{path}: not an Orbax checkpoint (no {METADATA_FILE}, no step directories)")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise CheckpointError(f"{path}: no step {step} (steps: {', '.join(map(str, sorted(steps)))})")
    return CheckpointLocation(steps[step], step)


def _paths_from_metadata(data: dict) -> list[tuple[str, ...]]:
    tree = data.get("tree_metadata")
    if isinstance(tree, dict):
        paths = []
        for key, entry in tree.items():
            key_metadata = entry.get("key_metadata") if isinstance(entry, dict) else None
            if key_metadata:
                paths.append(tuple(str(k["key"]) for k in key_metadata))
            else:  # the stringified tuple is the only record of the path
                paths.append(tuple(str(k) for k in ast.literal_eval(key)))
        return paths
    # Older Orbax wrote the tree itself, nested dicts down to one metadata entry per leaf.
    paths: list[tuple[str, ...]] = []

    def walk(node, prefix):
        if isinstance(node, dict) and node and not _is_leaf_metadata(node):
            for k, v in node.items():
                walk(v, (*prefix, str(k)))
        else:
            paths.append(prefix)

    walk(data, ())
    return paths


def _is_leaf_metadata(node: dict) -> bool:
    return any(k in node for k in ("value_type", "skip_deserialize"))


def read_tree_paths(step_dir: Path) -> list[tuple[str, ...]]:
    """Every leaf path of the checkpoint, from `_METADATA`, or from the stored arrays when it is absent."""
    meta_file = step_dir / METADATA_FILE
    if meta_file.is_file():
        try:
            data = json.loads(meta_file.read_text(encoding="utf-8"))
            return sorted(_paths_from_metadata(data))
        except (ValueError, SyntaxError, TypeError, AttributeError, KeyError) as err:
            raise CheckpointError(f"{meta_file}: unreadable checkpoint metadata ({err})") from None
    return sorted(tuple(key.split(".")) for key in ArrayStore(step_dir).list_arrays())


@dataclass(frozen=True)
class ModelSubtree:
    """Where the model lives in a checkpoint, and what else the checkpoint holds (never read)."""

    layout: str
    prefix: tuple[str, ...]
    leaves: dict[str, tuple[str, ...]]
    """Dotted Flax name (no prefix, no `value` suffix) -> full checkpoint path."""
    not_read: dict[str, int]
    """Other top-level subtree -> number of leaves in it."""


LAYOUT_DESCRIPTIONS = {
    "flax-0.10": "model + optimizer holding a copy of the model and Adam moments (flax 0.10.x)",
    "flax-0.11+": "model + optimizer with Adam moments, no model copy (flax 0.11 / 0.12)",
    "model-only": "model only, under 'model'",
    "bare-model": "model state at the top level",
    "linen": "Flax Linen variables: the 'params' collection (other collections and training state not read)",
    "model-linen": "model only, under 'model', as Flax Linen variables (its 'params' collection)",
}
# A Flax Linen model's weights: the `params` collection of its variables (`{'params': ..., 'batch_stats':
# ...}`), saved alone, inside a TrainState (`{'step', 'params', 'opt_state'}`) or under 'model'.
LINEN_PARAMS = "params"


def find_model_subtree(paths: Sequence[tuple[str, ...]]) -> ModelSubtree:
    """Pick the model's leaves out of a training checkpoint (MODEL_SPEC section 6) by tree paths alone."""
    if not paths:
        raise CheckpointError("the checkpoint holds no arrays")
    tops = {p[0] for p in paths}
    if "model" in tops:
        prefix = ("model",)
        if "optimizer" in tops:
            has_copy = any(p[:2] == ("optimizer", "model") for p in paths)
            layout = "flax-0.10" if has_copy else "flax-0.11+"
        else:
            layout = "model-only"
    elif LINEN_PARAMS in tops:
        prefix, layout = (LINEN_PARAMS,), "linen"
    elif "optimizer" in tops:
        raise CheckpointError("unknown checkpoint layout: an 'optimizer' subtree but no 'model' subtree")
    else:
        prefix, layout = (), "bare-model"
    inside = {p[len(prefix)] for p in paths if p[: len(prefix)] == prefix and len(p) > len(prefix)}
    if prefix == ("model",) and inside == {LINEN_PARAMS}:
        prefix, layout = ("model", LINEN_PARAMS), "model-linen"
    model = [p for p in paths if p[: len(prefix)] == prefix]
    not_read: dict[str, int] = {}
    for p in paths:
        if p[: len(prefix)] != prefix:
            not_read[p[0]] = not_read.get(p[0], 0) + 1
    # nnx keeps each variable's array under `value`; a plain pytree of arrays has no such level.
    with_value = [p for p in model if len(p) > len(prefix) + 1 and p[-1] == "value"]
    if with_value and len(with_value) != len(model):
        odd = next(p for p in model if p not in set(with_value))
        raise CheckpointError(
            f"unknown checkpoint layout: leaf {'.'.join(odd)} does not end in 'value' like the rest"
        )
    end = -1 if with_value else None
    leaves = {".".join(p[len(prefix) : end]): p for p in model}
    if "" in leaves:
        raise CheckpointError("unknown checkpoint layout: the model subtree is a single array")
    return ModelSubtree(layout, prefix, leaves, not_read)


def _short(err: BaseException) -> str:
    """Tensorstore errors carry a long source-location tail; the first clause is what a person needs."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = re.sub(r"\s*\[source locations=.*$", "", text)
    return text if len(text) <= 240 else text[:237] + "..."


def _within_memory(info: ArrayInfo) -> ArrayInfo:
    """An array is read whole, so one that declares more bytes than this machine has available is refused
    before the read would allocate them. The bytes on disk cannot bound it: Orbax compresses, and an
    array of zeros rightly takes almost nothing."""
    from common.model_size import available_memory

    available = available_memory()
    if available is not None and info.nbytes > available:
        raise CheckpointError(
            f"{info.key}: declares {list(info.shape)} {info.dtype.name} ({info.nbytes / 1e9:,.1f} GB), more "
            f"than the {available / 1e9:,.1f} GB this machine has available (a damaged checkpoint?)"
        )
    return info


def _parse_zarray(key: str, raw: bytes) -> tuple[tuple[int, ...], np.dtype]:
    meta = json.loads(raw)
    if meta.get("zarr_format") != 2:
        raise CheckpointError(f"{key}: unsupported array format (zarr_format {meta.get('zarr_format')!r})")
    dtype = _zarr_dtype(meta["dtype"])
    return tuple(int(n) for n in meta["shape"]), dtype


def _zarr_dtype(name: str) -> np.dtype:
    """A zarr v2 dtype string; types numpy lacks (`bfloat16`) are written by their ml_dtypes name."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        if not hasattr(ml_dtypes, name):
            raise
        return np.dtype(getattr(ml_dtypes, name))


class ArrayStore:
    """The arrays of one Orbax step directory, read with tensorstore."""

    def __init__(self, step_dir: str | os.PathLike, io_threads: int = 8):
        import tensorstore as ts

        self._ts = ts
        self.step_dir = Path(step_dir).absolute()
        self.ocdbt = (self.step_dir / OCDBT_MANIFEST).is_file()
        # No chunk cache: every array is read once, and a cache would only hold on to memory.
        self._context = ts.Context(
            {
                "cache_pool": {"total_bytes_limit": 0},
                "file_io_concurrency": {"limit": io_threads},
                "data_copy_concurrency": {"limit": max(1, os.cpu_count() or 1)},
            }
        )
        base = {"driver": "file", "path": f"{self.step_dir}/"}
        self._base = {"driver": "ocdbt", "base": base} if self.ocdbt else base
        try:
            self._kvstore = ts.KvStore.open(self._base, context=self._context).result()
        except Exception as err:
            raise CheckpointError(f"{self.step_dir}: cannot open the array store ({_short(err)})") from None

    def list_arrays(self) -> list[str]:
        try:
            keys = self._kvstore.list().result()
        except Exception as err:
            raise CheckpointError(f"{self.step_dir}: cannot list the arrays ({_short(err)})") from None
        suffix = b"/.zarray"
        return sorted(k[: -len(suffix)].decode() for k in keys if k.endswith(suffix))

    def infos(self, paths: Iterable[tuple[str, ...]]) -> list[ArrayInfo]:
        """Shape and dtype of each array from its `.zarray` header; no array data is read."""
        paths = list(paths)
        keys = [".".join(p) for p in paths]
        futures = [self._kvstore.read(f"{k}/.zarray") for k in keys]
        infos = []
        for path, key, future in zip(paths, keys, futures):
            try:
                result = future.result()
            except Exception as err:
                raise CheckpointError(f"{key}: cannot read the array header ({_short(err)})") from None
            if result.state != "value":
                raise CheckpointError(f"{key}: listed in the checkpoint metadata, but the array is missing")
            try:
                shape, dtype = _parse_zarray(key, result.value)
            except (ValueError, KeyError, TypeError) as err:
                raise CheckpointError(f"{key}: corrupted array header ({err})") from None
            infos.append(_within_memory(ArrayInfo(path, shape, dtype)))
        return infos

    def _open(self, info: ArrayInfo):
        if self.ocdbt:  # the array's key inside the database
            kvstore = {**self._base, "path": info.key}
        else:  # one directory per array
            kvstore = {"driver": "file", "path": f"{self.step_dir}/{info.key}/"}
        spec = {"driver": "zarr", "kvstore": kvstore}
        return self._ts.open(spec, open=True, read=True, context=self._context)

    def _laid_out(self, store, layout: Layout | None):
        """The store seen with its axes permuted and reversed, so that the read delivers that layout
        (tensorstore folds it into the copy out of the decoded chunk that it makes anyway, on its own
        threads, while the caller writes the previous batch)."""
        if layout is None:
            return store
        permutation, reversed_axes = layout
        if permutation is not None:
            store = store[self._ts.d[tuple(permutation)].transpose[:]]
        if reversed_axes:
            store = store[self._ts.d[tuple(reversed_axes)].stride[-1]]
        return store

    def _start_reads(self, batch: Sequence[ArrayInfo], layouts: Mapping[str, Layout] | None = None) -> list:
        """Open every array of the batch (cheap: headers only), then issue all their reads at once."""
        opened = [self._open(info) for info in batch]
        started = []
        for info, future in zip(batch, opened):
            try:
                store = self._laid_out(future.result(), layouts.get(info.key) if layouts else None)
                started.append((info, tuple(store.shape), store.read()))
            except Exception as err:
                raise CheckpointError(f"{info.key}: cannot open the array ({_short(err)})") from None
        return started

    def _finish_reads(self, started: list) -> list[tuple[ArrayInfo, np.ndarray]]:
        out = []
        for info, shape, future in started:
            try:
                array = np.asarray(future.result())
            except Exception as err:
                raise CheckpointError(f"{info.key}: cannot read the array data ({_short(err)})") from None
            if array.shape != shape or array.dtype != info.dtype:
                raise CheckpointError(
                    f"{info.key}: data is {array.dtype}{list(array.shape)}, "
                    f"header says {info.dtype}{list(info.shape)}"
                )
            out.append((info, array))
        return out

    def read(self, infos: Sequence[ArrayInfo]) -> dict[str, np.ndarray]:
        """Every array of `infos` at once, keyed by `ArrayInfo.key` (for small sets: RoPE caches, tests)."""
        return {info.key: array for info, array in self._finish_reads(self._start_reads(infos))}

    def read_batches(
        self,
        infos: Sequence[ArrayInfo],
        batch_bytes: int = 32 << 20,
        layouts: Mapping[str, Layout] | None = None,
    ) -> Iterator[list[tuple[ArrayInfo, np.ndarray]]]:
        """The arrays in order, in batches of about `batch_bytes`; the next batch is read while the caller
        works on the current one, so at most two batches are in memory. With `layouts` (by
        `ArrayInfo.key`), arrays arrive permuted and reversed as given (`Kind.torch_axes`), C-contiguous."""
        batches = list(plan_batches(infos, batch_bytes))
        # The first batch starts now, not at the first `next`: the caller may have other work first.
        first = self._start_reads(batches[0], layouts) if batches else []
        return self._in_order(batches, first, layouts)

    def _in_order(self, batches, pending, layouts) -> Iterator[list[tuple[ArrayInfo, np.ndarray]]]:
        for i in range(len(batches)):
            current = self._finish_reads(pending)
            pending = self._start_reads(batches[i + 1], layouts) if i + 1 < len(batches) else []
            yield current
            del current


def plan_batches(infos: Sequence[ArrayInfo], batch_bytes: int) -> Iterator[list[ArrayInfo]]:
    """Consecutive runs of arrays of at most `batch_bytes` each (a larger array goes alone)."""
    batch: list[ArrayInfo] = []
    size = 0
    for info in infos:
        if batch and size + info.nbytes > batch_bytes:
            yield batch
            batch, size = [], 0
        batch.append(info)
        size += info.nbytes
    if batch:
        yield batch


def read_model_arrays(path: str | os.PathLike, step: int | None = None) -> dict[str, np.ndarray]:
    """The model subtree of an Orbax checkpoint (a step directory or a CheckpointManager root) as flat
    arrays, `{dotted Flax name: array}`, exactly as stored; optimizer subtrees are never read."""
    step_dir = resolve_checkpoint(path, step).step_dir
    subtree = find_model_subtree(read_tree_paths(step_dir))
    store = ArrayStore(step_dir)
    names = sorted(subtree.leaves)
    infos = store.infos([subtree.leaves[n] for n in names])
    arrays = store.read(infos)
    return {n: arrays[info.key] for n, info in zip(names, infos)}


def write_orbax(path: str | os.PathLike, tree: dict) -> None:
    """Save a nested dict of numpy arrays with `StandardCheckpointer`, as the training code does.

    Imports orbax (and so jax) only here: reading never needs them.
    """
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(Path(path).absolute(), tree)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
