"""Parity traces: what one side of a parity run recorded, on disk, so that it can be judged elsewhere.

A trace is a directory: `manifest.json` (format, side, framework and versions, device, settings, weights
fingerprint per model, and per case its input seed and fingerprint and every run's calls in order, each
with its module path, kind, step, dtypes and shapes) and safetensors shards `trace-00001.safetensors`, ...
holding the recorded arrays. Each array is stored once (a layer's output is often the next one's input)
and in the side's own dtype: bf16 runs are stored in bf16, and widened to float32 when read, exactly as an
in-process run holds them. Shards are written while the run goes: arrays gather in memory up to
`SHARD_BYTES`, then go out through the project's safetensors writer, so a run never holds more than one
shard's worth of captures. Written only by this module; read by `Trace`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from convert.safetensors_io import SafetensorsError, StoredTensor, StreamingWriter, TensorSpec, read_header
from parity.capture import Call, Capture, Recorded
from parity.structure import is_namedtuple, map_leaves

FORMAT = "dfc-parity-trace"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 * 2**20  # the published VAE's trace manifest is under 1 MB
SHARD_BYTES = 128 << 20
# dtypes a side may compute in that are narrower than the float32 a capture widens them to: stored as is
_NARROW = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}
_CACHED = 6  # arrays kept decoded: a row reads its reference and each side's output a few times


class TraceError(Exception):
    """A trace that cannot be read or used as asked; the message is for a person, one line."""


def fingerprint_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """A short hash of named arrays (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        h.update(memoryview(array.reshape(-1).view(np.uint8)))
    return h.hexdigest()[:16]


def matcher(patterns: str | None) -> Callable[[str], bool] | None:
    """`path -> bool` for comma-separated fnmatch patterns (`encoder.*,decoder.unet*`); None keeps all."""
    import fnmatch

    if not patterns:
        return None
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    return lambda path: any(fnmatch.fnmatchcase(path, p) for p in wanted)


class StoredArray(Recorded):
    """A recorded array whose value lives in a trace and is read when asked for (never held)."""

    def __init__(self, dtype: str, shape: tuple[int, ...], store: _Store, tensor: str):
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "shape", tuple(shape))
        object.__setattr__(self, "store", store)
        object.__setattr__(self, "tensor", tensor)

    @property
    def value(self) -> np.ndarray:  # type: ignore[override]
        return self.store.load(self.tensor)

    def __repr__(self) -> str:
        return f"StoredArray({self.dtype}, {self.shape}, {self.tensor})"


def _stored_form(recorded: Recorded) -> np.ndarray:
    """The array as the side computed it: a widened bf16 value goes back to bf16 (exactly)."""
    value = np.asarray(recorded.value)
    narrow = _NARROW.get(recorded.dtype)
    if narrow is not None and value.dtype.kind == "f" and value.dtype.itemsize > narrow.itemsize:
        return value.astype(narrow)
    return np.ascontiguousarray(value)


def read_tensor(stored: StoredTensor) -> np.ndarray:
    """One tensor read from its shard into memory of its own. Not mapped: pages of a mapped shard stay in
    the process's resident set once touched, and a run reads back gigabytes of its own trace."""
    buffer = bytearray(stored.nbytes)
    view = memoryview(buffer)
    with open(stored.file, "rb", buffering=0) as f:
        done = 0
        while done < stored.nbytes:
            got = os.preadv(f.fileno(), [view[done:]], stored.begin + done)
            if got == 0:
                raise TraceError(f"{stored.file}: ends inside tensor {stored.name}")
            done += got
    return np.frombuffer(buffer, stored.dtype).reshape(stored.shape)


def _widened(array: np.ndarray) -> np.ndarray:
    """As a capture holds it (`parity.capture.as_numpy`): narrow floats as float32, the rest untouched."""
    if array.dtype in _NARROW.values():
        return array.astype(np.float32)
    return array


class _Store:
    """Arrays by tensor name, decoded on demand with a small cache."""

    def __init__(self):
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def raw(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def load(self, name: str) -> np.ndarray:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        array = _widened(self.raw(name))
        self._cache[name] = array
        while len(self._cache) > _CACHED:
            self._cache.popitem(last=False)
        return array


class TraceWriter(_Store):
    """Streams one side's arrays into shards of a fresh directory; `finish` writes the manifest."""

    def __init__(self, directory: str | os.PathLike, shard_bytes: int = SHARD_BYTES):
        super().__init__()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=False)
        self.shard_bytes = shard_bytes
        self.id = uuid.uuid4().hex
        self._pending: dict[str, np.ndarray] = {}
        self._pending_bytes = 0
        self._by_content: dict[tuple, str] = {}
        self._stored: dict[str, StoredTensor] = {}  # tensor -> where its shard holds it
        self.shards: list[str] = []
        self.bytes = 0

    def put(self, recorded: Any) -> Any:
        """A `StoredArray` for a `Recorded` holding a value (written out); anything else unchanged."""
        if not isinstance(recorded, Recorded) or isinstance(recorded, StoredArray) or recorded.value is None:
            return recorded
        array = _stored_form(recorded)
        digest = hashlib.blake2b(memoryview(array.reshape(-1).view(np.uint8)), digest_size=16).digest()
        key = (array.dtype.str, array.shape, digest)
        name = self._by_content.get(key)
        if name is None:
            name = f"t{len(self._by_content)}"
            self._by_content[key] = name
            self._pending[name] = array
            self._pending_bytes += array.nbytes
            self.bytes += array.nbytes
            if self._pending_bytes >= self.shard_bytes:
                self.flush()
        return StoredArray(recorded.dtype, recorded.shape, self, name)

    def put_call(self, call: Call) -> Call:
        inputs = map_leaves(call.inputs, self.put)
        return replace(call, inputs=inputs, outputs=self.put_outputs(call.outputs))

    def put_outputs(self, outputs: Mapping[str, Recorded]) -> dict[str, Recorded]:
        return {suffix: self.put(r) for suffix, r in outputs.items()}

    def raw(self, name: str) -> np.ndarray:
        if name in self._pending:
            return self._pending[name]
        return read_tensor(self._stored[name])

    def flush(self) -> None:
        if not self._pending:
            return
        path = self.directory / f"trace-{len(self.shards) + 1:05d}.safetensors"
        specs = [TensorSpec(n, tuple(a.shape), a.dtype) for n, a in self._pending.items()]
        writer = StreamingWriter(path, specs, {"format": FORMAT})
        try:
            for name, array in self._pending.items():
                writer.write(name, array)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        self._stored.update(read_header(path)[0])
        self.shards.append(path.name)
        self._pending.clear()
        self._pending_bytes = 0
        self._cache.clear()

    def finish(self, manifest: dict[str, Any]) -> Path:
        """Write the last shard and the manifest; returns the manifest's path."""
        self.flush()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "id": self.id,
            **manifest,
            "shards": self.shards,
            "bytes": self.bytes,
        }
        path = self.directory / MANIFEST
        temporary = path.with_suffix(".json.partial")
        temporary.write_text(json.dumps(manifest, separators=(",", ":"), default=str) + "\n")
        os.replace(temporary, path)
        return path


# ------------------------------------------------------------------------------------ manifest entries


def encode_array(recorded: Recorded) -> dict[str, Any]:
    entry = {"dtype": recorded.dtype, "shape": list(recorded.shape)}
    if isinstance(recorded, StoredArray):
        entry["tensor"] = recorded.tensor
    return entry


def _encode_leaf(value: Any) -> Any:
    if isinstance(value, Recorded):
        return {"array": encode_array(value)}
    if is_namedtuple(value):
        kind = type(value)
        return {
            "namedtuple": f"{kind.__module__}:{kind.__qualname__}",
            "items": [_encode_leaf(v) for v in value],
        }
    if isinstance(value, tuple | list):
        return {type(value).__name__: [_encode_leaf(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[str(k), _encode_leaf(v)] for k, v in value.items()]}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    return {"opaque": repr(value)}


class Opaque:
    """An input that a manifest cannot hold (recorded by its repr): a replay given it fails, by name."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"<not stored: {self.text}>"


def _decode_leaf(entry: Any, store: _Store) -> Any:
    (kind, body), *_ = entry.items()
    if kind == "array":
        return decode_array(body, store)
    if kind == "value":
        return body
    if kind == "tuple":
        return tuple(_decode_leaf(v, store) for v in body)
    if kind == "list":
        return [_decode_leaf(v, store) for v in body]
    if kind == "dict":
        return {k: _decode_leaf(v, store) for k, v in body}
    if kind == "namedtuple":
        items = [_decode_leaf(v, store) for v in entry["items"]]
        module, _, name = body.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return tuple(items)
        return cls(*items)
    return Opaque(str(body))


def decode_array(entry: dict[str, Any], store: _Store) -> Recorded:
    shape = tuple(entry["shape"])
    if "tensor" in entry:
        return StoredArray(entry["dtype"], shape, store, entry["tensor"])
    return Recorded(entry["dtype"], shape)


def encode_capture(capture: Capture) -> dict[str, Any]:
    return {
        "calls": [
            {
                "key": c.key,
                "path": c.path,
                "kind": c.kind,
                "step": c.step,
                "repeat": c.repeat,
                "inputs": _encode_leaf(c.inputs),
                "outputs": {s: encode_array(r) for s, r in c.outputs.items()},
            }
            for c in capture.calls.values()
        ],
        "output": {s: encode_array(r) for s, r in capture.output.items()},
    }


def encode_replays(replays: Mapping[str, Mapping[str, Recorded] | str]) -> dict[str, Any]:
    return {
        key: out if isinstance(out, str) else {s: encode_array(r) for s, r in out.items()}
        for key, out in replays.items()
    }


# ----------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Run:
    """One run of one case in a trace: `reference`, `jax <numerics>` or `torch <policy>`."""

    role: str
    capture: Capture | None  # None when the case did not run (see `error`)
    isolated: dict[str, dict[str, Recorded] | str] | None  # per call key, outputs on the reference's inputs
    error: str | None = None


class Trace(_Store):
    """A trace directory, read lazily: the manifest at once, each array when a row asks for it."""

    def __init__(self, directory: str | os.PathLike):
        super().__init__()
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise TraceError(f"{self.directory}: not a parity trace (no {MANIFEST})")
        from common.files import InputFileError, read_text_bounded

        try:
            self.manifest = json.loads(read_text_bounded(path, MAX_MANIFEST_BYTES, what="a trace manifest"))
        except InputFileError as err:
            raise TraceError(str(err)) from None
        except (ValueError, RecursionError):
            raise TraceError(f"{path}: not JSON") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise TraceError(f"{path}: not a parity trace manifest")
        if self.manifest.get("version") != VERSION:
            raise TraceError(
                f"{path}: trace format version {self.manifest.get('version')}, this dfc reads {VERSION}"
            )
        self._stored: dict[str, StoredTensor] = {}
        try:
            for name in self.manifest["shards"]:
                self._stored.update(read_header(self._shard(path, name))[0])
        except (SafetensorsError, OSError) as err:
            raise TraceError(f"{self.directory}: {err}") from None
        except (KeyError, TypeError):
            raise TraceError(f"{path}: no shard list") from None
        self.cases = {c["name"]: c for c in self.manifest.get("cases", [])}

    def _shard(self, manifest: Path, name: Any) -> Path:
        """A shard the manifest names: a plain file name inside the trace directory, nothing else."""
        if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
            raise TraceError(f"{manifest}: shard {str(name)[:80]!r} is not a file name in the trace folder")
        return self.directory / name

    @property
    def side(self) -> str:
        return self.manifest["side"]

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def name(self) -> str:
        return str(self.directory)

    def raw(self, name: str) -> np.ndarray:
        try:
            stored = self._stored[name]
        except KeyError:
            raise TraceError(f"{self.directory}: tensor {name} is in no shard") from None
        return read_tensor(stored)

    def roles(self, case: str) -> list[str]:
        return list(self.cases[case]["runs"]) if case in self.cases else []

    def run(self, case: str, role: str) -> Run:
        entry = self.cases[case]["runs"][role]
        if entry.get("error"):
            return Run(role, None, None, entry["error"])
        capture = Capture()
        for c in entry["calls"]:
            args, kwargs = _decode_leaf(c["inputs"], self)
            outputs = {s: decode_array(a, self) for s, a in c["outputs"].items()}
            call = Call(c["path"], c["kind"], c["step"], c["repeat"], (args, kwargs), outputs)
            capture.calls[c["key"]] = call
        capture.output = {s: decode_array(a, self) for s, a in entry["output"].items()}
        isolated = None
        if "isolated" in entry:
            isolated = {
                key: out if isinstance(out, str) else {s: decode_array(a, self) for s, a in out.items()}
                for key, out in entry["isolated"].items()
            }
        return Run(role, capture, isolated)

    def size_text(self) -> str:
        return size_text(self.manifest["bytes"], len(self.manifest["shards"]))


def size_text(nbytes: int, shards: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB in {shards} shard{'s' if shards != 1 else ''}"
