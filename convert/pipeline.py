"""`dfc convert`: Orbax or published `.pt` -> safetensors, and safetensors -> Orbax, streamed and verified.

The flow of Orbax -> safetensors, none of it model-specific (the model is a `convert.tables` table):
1. find the step and the model subtree from the checkpoint's metadata (optimizer subtrees are never read);
2. learn every array's shape from its header and infer the configuration (or check the given one);
3. ask `torch_impl` for its keys and shapes: cached per configuration and torch_impl source, else from
   a child process that runs while we convert (torch costs ~200 MB and seconds of CPU to import);
4. check the RoPE caches against the configuration and drop them;
5. write the safetensors header (shapes are known), then stream the tensors: the reader lays out a batch
   for PyTorch while the previous one is written, re-read from the file and compared with the source,
   bit for bit (or as the exact round-to-nearest-even of it for `--dtype bfloat16`);
6. re-parse the written headers, check them strictly against `torch_impl`'s keys and shapes, optionally
   run the forward check against `jax_ref` (child process);
7. only then rename the temporary output into place. Any failure removes it.

A JAX user restores the Orbax output of safetensors -> Orbax into `jax_ref` with the model's state as the
target (list indices are stored as strings, so the target tells Orbax the real structure):

    restored = ocp.StandardCheckpointer().restore(path, {"model": nnx.state(model)})
    nnx.update(model, restored["model"])
"""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.config import DiTConfig, VAEConfig, config_to_json, load_config
from convert import safetensors_io as st
from convert.infer import ConfigMismatch, check_config, detect_model_type, flax_shapes, infer_config
from convert.layout import Kind
from convert.orbax_io import (
    LAYOUT_DESCRIPTIONS,
    ArrayStore,
    CheckpointError,
    find_model_subtree,
    nest_flat,
    read_tree_paths,
    resolve_checkpoint,
    write_orbax,
)
from convert.tables import ROPE_DROP_REASON, TABLES, Table

# RoPE caches computed on a TPU differ from numpy's in the last bits (MODEL_SPEC section 6); a wrong
# length, head dim or base changes them by O(1), so an absolute 1e-4 on values in [-1, 1] separates the two.
ROPE_TOLERANCE = 1e-4
DEFAULT_BATCH_BYTES = 32 << 20
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype("bfloat16")}
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class ConvertError(Exception):
    """Anything that stops a conversion, as one line for a person."""


@dataclass
class Options:
    model: str | None = None  # "vae" | "dit"; detected when None
    config: str | None = None  # preset name, JSON file or directory with config.json
    dtype: str | None = None  # "float32" | "bfloat16"; None keeps every bit
    step: int | None = None
    force: bool = False
    verify_forward: bool = False
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
    config: VAEConfig | DiTConfig | None = None
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


def _quiet(_: object) -> None:
    pass


# ------------------------------------------------------------------------------------------ entry point


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    options: Options | None = None,
    progress: Callable[[int, int], Progress] | None = None,
    log: Log = _quiet,
) -> Report:
    """Convert `src` to `dst`; `progress(total_bytes)` returns the per-batch callback of a progress bar."""
    options = options or Options()
    if options.dtype is not None and options.dtype not in DTYPES:
        raise ConvertError(f"unknown --dtype {options.dtype!r}; choose one of {', '.join(DTYPES)}")
    if options.model is not None and options.model not in TABLES:
        raise ConvertError(f"unknown --model {options.model!r}; choose one of {', '.join(TABLES)}")
    src, dst = Path(src), Path(dst)
    kind = source_format(src)
    _check_destination(src, dst, kind, options.force)
    report = Report(source=str(src), source_format=kind)
    try:
        if kind == "orbax":
            return _orbax_to_safetensors(src, dst, options, report, progress, log)
        if kind == "pt":
            return _pt_to_safetensors(src, dst, options, report, progress, log)
        return _safetensors_to_orbax(src, dst, options, report, progress, log)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise ConvertError(f"no space left on device while writing {dst}; nothing was written") from None
        raise ConvertError(f"{err.filename or dst}: {err.strerror or err}") from None
    except (CheckpointError, st.SafetensorsError, ConfigMismatch) as err:
        raise ConvertError(str(err)) from None


def source_format(src: Path) -> str:
    """'orbax', 'pt' or 'safetensors', from what is on disk."""
    if not src.exists():
        raise ConvertError(f"{src}: no such file or directory")
    if src.is_dir():
        return "safetensors" if st.is_safetensors(src) else "orbax"
    if src.suffix == ".safetensors":
        return "safetensors"
    with open(src, "rb") as f:
        magic = f.read(4)
    if src.suffix in TORCH_SUFFIXES or magic[:2] == b"PK" or magic[:1] == b"\x80":
        return "pt"
    raise ConvertError(f"{src}: not a checkpoint (expected an Orbax directory, a .pt or safetensors)")


def _check_destination(src: Path, dst: Path, kind: str, force: bool) -> None:
    if kind == "safetensors" and dst.suffix == ".safetensors":
        raise ConvertError(
            f"{dst}: a safetensors source converts to an Orbax directory, not a .safetensors file"
        )
    source, target = src.resolve(), dst.resolve()
    if target == source or target in source.parents:
        raise ConvertError(f"{dst}: writing there would replace the source")
    if source in target.parents:
        raise ConvertError(f"{dst}: the output may not go inside the source")
    if (dst.exists() or dst.is_symlink()) and not force:
        raise ConvertError(f"{dst} already exists (pass --force to replace it)")


# ------------------------------------------------------------------------------- model type and config


def _model_type(requested: str | None, names: Iterable[str]) -> str:
    names = set(names)
    detected = detect_model_type(names)
    if requested is None:
        if detected is None:
            raise ConvertError("cannot tell whether this is a VAE or a DiT checkpoint; pass --model vae|dit")
        return detected
    if detected != requested:
        from convert.infer import INFERENCE

        marker = INFERENCE[requested].marker
        raise ConvertError(
            f"--model {requested}, but the checkpoint has no {marker} (is it a {requested.upper()}?)"
        )
    return requested


def _resolve_config(model_type: str, shapes: Mapping[str, tuple], given: str | None, report: Report):
    """The given config checked against the shapes, or the inferred one."""
    if given is not None:
        cls = VAEConfig if model_type == "vae" else DiTConfig
        try:
            config = load_config(given, cls)
        except (OSError, ValueError, TypeError) as err:
            raise ConvertError(f"--config {given}: {err}") from None
        try:
            check_config(config, shapes)
        except ConfigMismatch as err:
            raise ConvertError(f"checkpoint contradicts --config: {err}") from None
        report.config, report.config_source = config, f"--config {given}"
        return config
    inferred = infer_config(model_type, shapes)
    report.config, report.config_source, report.assumed = (
        inferred.config,
        "inferred from shapes",
        inferred.assumed,
    )
    return inferred.config


def _kinds(table: Table, shapes: Mapping[str, tuple]) -> dict[str, Kind]:
    kinds = {}
    for name, shape in shapes.items():
        try:
            kind = table.kind_of(name)
        except KeyError:
            raise ConvertError(
                f"{name}: not a {table.model_type.upper()} tensor (no rule of the table matches it)"
            ) from None
        if kind.ndim is not None and len(shape) != kind.ndim:
            raise ConvertError(
                f"{name}: a {kind.name.lower()} tensor must have {kind.ndim} dims, got {list(shape)}"
            )
        kinds[name] = kind
    return kinds


def _output_dtype(source: np.dtype, requested: str | None) -> np.dtype:
    """`--dtype` applies to floating tensors only (numpy does not count ml_dtypes' bfloat16 as one)."""
    floating = np.issubdtype(source, np.floating) or source == np.dtype("bfloat16")
    return DTYPES[requested] if requested is not None and floating else np.dtype(source)


def _dtype_label(dtypes: Iterable[np.dtype]) -> str:
    names = sorted({np.dtype(d).name for d in dtypes})
    return names[0] if len(names) == 1 else "+".join(names)


# ------------------------------------------------------------------------------------ bit-level checks


def bf16_bits_nearest_even(values: np.ndarray) -> np.ndarray:
    """The bfloat16 bit patterns of float32 `values` rounded to nearest, ties to even.

    Integer arithmetic on the float32 bits, independent of the ml_dtypes cast the writer uses, so that
    verification does not just repeat the conversion. NaNs are not meaningful here (checked separately).
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    return rounded.astype(np.uint16)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    unsigned = np.dtype(f"u{a.dtype.itemsize}")
    return bool(np.array_equal(a.view(unsigned), b.view(unsigned)))


def _matches_source(written: np.ndarray, source: np.ndarray) -> bool:
    """`written` (in the source's layout) is the source exactly, or its exact rounding/widening."""
    if written.dtype == source.dtype:
        return _same_bits(written, source)
    bf16 = np.dtype("bfloat16")
    if written.dtype == bf16 and source.dtype == np.float32:
        nan = np.isnan(source)
        if not np.array_equal(nan, np.isnan(written.astype(np.float32))):
            return False
        expected = bf16_bits_nearest_even(np.where(nan, 0, source))
        got = np.where(nan, np.uint16(0), written.view(np.uint16))
        return bool(np.array_equal(got, expected))
    if written.dtype == np.float32 and source.dtype == bf16:
        widened = source.view(np.uint16).astype(np.uint32) << np.uint32(16)
        return bool(np.array_equal(written.view(np.uint32), widened))
    return False


# -------------------------------------------------------------------------------------- staged output


class StagedOutput:
    """A temporary sibling of `dst` that becomes `dst` by rename on `commit`, and vanishes otherwise."""

    def __init__(self, dst: Path, is_dir: bool, force: bool, sync: bool = False):
        self.dst, self.force, self.sync = dst, force, sync
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConvertError(f"{dst.parent}: cannot create the output directory ({err.strerror})") from None
        self.tmp = dst.parent / f".{dst.name}.dfc-tmp-{os.getpid()}"
        _remove(self.tmp)
        if is_dir:
            self.tmp.mkdir()

    def commit(self) -> None:
        old = None
        if self.dst.exists() or self.dst.is_symlink():
            if not self.force:
                raise ConvertError(f"{self.dst} appeared while converting; not replacing it without --force")
            old = self.dst.parent / f".{self.dst.name}.dfc-old-{os.getpid()}"
            os.replace(self.dst, old)
        os.replace(self.tmp, self.dst)
        if old is not None:
            _remove(old)
        if self.sync:  # the entries: the files inside a directory output, and the rename
            if self.dst.is_dir():
                _sync_dir(self.dst)
            _sync_dir(self.dst.parent)

    def discard(self) -> None:
        _remove(self.tmp)

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _sync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ streaming and checking


@dataclass(frozen=True)
class Planned:
    """One tensor to convert: its name in the source and what it becomes. The source arrives already in
    the output's layout (the reader lays it out while reading), so only the dtype may still change."""

    source_name: str
    out: st.TensorSpec


def stream_tensors(
    planned: Mapping[str, Planned],
    batches: Iterable[list[tuple[str, np.ndarray]]],
    writer: st.ShardedWriter,
    on_bytes: Progress,
    queued_batches: int = 1,
) -> int:
    """Write, re-read and compare every tensor; returns how many were checked.

    Each tensor is re-read from the file right after it is written and compared with the source array
    while that is still in memory (bit for bit, or as its exact rounding), so memory stays at a few of
    the reader's batches whatever the model's size. Laying out, writing and checking happen on a thread
    of their own (numpy, OpenBLAS and the kernel release the GIL), so that they overlap the reader's
    decoding, and a write that waits for the disk does not hold up the reader. At most `queued_batches`
    batches wait between the two.
    """
    handoff: queue.Queue = queue.Queue(maxsize=queued_batches)
    checked = [0]
    failure: list[BaseException] = []

    def write_all() -> None:
        while (batch := handoff.get()) is not None:
            if failure:  # drain after an error so that the reader side never blocks on `put`
                continue
            try:
                for name, source in batch:
                    _write_and_check(planned[name], source, writer)
                    checked[0] += 1
                    on_bytes(planned[name].out.nbytes)
            except BaseException as err:  # handed to the caller's thread below
                failure.append(err)

    thread = threading.Thread(target=write_all, name="dfc-writer", daemon=True)
    thread.start()
    try:
        for batch in batches:
            if failure:
                break
            handoff.put(batch)
    finally:
        handoff.put(None)
        thread.join()
    if failure:
        raise failure[0]
    return checked[0]


def _write_and_check(plan: Planned, source: np.ndarray, writer: st.ShardedWriter) -> None:
    if source.shape != plan.out.shape:
        raise ConvertError(
            f"{plan.source_name}: read as {list(source.shape)}, planned as {list(plan.out.shape)}"
        )
    written = writer.write(plan.out.name, source)
    # What went to the file is `source` laid out contiguously (by numpy, when `source` is a transposed
    # view); with a new dtype, the file is checked against the source itself as its exact rounding.
    reference = written if written.dtype == source.dtype else source
    if not _matches_source(writer.re_read(plan.out.name), reference):
        raise ConvertError(
            f"{plan.source_name}: the tensor re-read from {plan.out.name} does not match the source"
        )


def _check_written(files: list[Path], planned: Mapping[str, Planned]) -> str:
    """The written files, parsed afresh (our parser and the safetensors library), list exactly the plan."""
    reader = st.SafetensorsReader(files[0].parent if len(files) > 1 else files[0])
    expected = {p.out.name: (p.out.shape, np.dtype(p.out.dtype)) for p in planned.values()}
    found = {name: (t.shape, t.dtype) for name, t in reader.tensors.items()}
    if found != expected:
        odd = sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected.get(k))
        raise ConvertError(f"written files do not hold the planned tensors (first difference: {odd[0]})")
    try:
        from safetensors import safe_open
    except ImportError:
        return "our parser"
    for file in reader.files:
        with safe_open(str(file), framework="numpy") as f:  # validates header, offsets and file size
            for key in f.keys():
                if tuple(f.get_slice(key).get_shape()) != found[key][0]:
                    raise ConvertError(f"{file.name}: the safetensors library reads {key} with another shape")
    return "our parser and the safetensors library"


def _compare_shapes(expected: Mapping[str, tuple], found: Mapping[str, tuple], what: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    if missing:
        raise ConvertError(f"{what}: {missing[0]} is missing ({len(missing)} missing in all)")
    if unexpected:
        raise ConvertError(f"{what}: {unexpected[0]} is not a tensor of the model ({len(unexpected)} in all)")
    if mismatched:
        k = mismatched[0]
        raise ConvertError(f"{what}: {k} has shape {list(found[k])}, the model wants {list(expected[k])}")


def _torch_check(pending, found: Mapping[str, tuple], report: Report) -> None:
    """Finish the strict key/shape check against torch_impl (built on the meta device in a child)."""
    result = pending.result()
    if result.get("skipped"):
        report.checks.append(Check("torch_impl keys and shapes (meta device)", None, result["skipped"]))
        return
    if not result.get("ok"):
        raise ConvertError(f"torch_impl shape check failed: {result.get('error', 'no answer')}")
    expected = {k: tuple(v) for k, v in result["shapes"].items()}
    _compare_shapes(expected, found, "strict check against torch_impl")
    report.checks.append(
        Check(
            "torch_impl keys and shapes (meta device)",
            True,
            f"{len(expected)} keys, strict, all shapes equal; {result.get('source', 'computed')}",
        )
    )


def _forward_check(
    report: Report, config, reference, reference_format, converted, converted_format, rounded_to=None
) -> None:
    from convert.verify_forward import start_forward_check

    result = start_forward_check(
        config, Path(reference), reference_format, Path(converted), converted_format, rounded_to
    ).result()
    if result.get("skipped"):
        report.checks.append(Check("forward vs jax_ref", None, result["skipped"]))
        return
    if not result.get("ok"):
        raise ConvertError(f"forward check failed: {result.get('error') or result.get('detail')}")
    report.checks.append(Check("forward vs jax_ref", True, result["detail"]))


def _check_ropes(table: Table, config, caches: Mapping[str, np.ndarray]) -> str:
    reference = table.rope_reference(config)
    missing = sorted(set(reference) - set(caches))
    if missing:
        raise ConvertError(f"{missing[0]}: RoPE cache missing from the checkpoint")
    extra = sorted(set(caches) - set(reference))
    if extra:
        raise ConvertError(f"{extra[0]}: a RoPE cache the configuration does not have")
    worst, worst_name = 0.0, ""
    for name, value in caches.items():
        if value.shape != reference[name].shape:
            raise ConvertError(
                f"{name} has shape {list(value.shape)}, the configuration gives {list(reference[name].shape)}"
            )
        diff = float(np.max(np.abs(value.astype(np.float64) - reference[name]))) if value.size else 0.0
        if not diff <= ROPE_TOLERANCE:
            raise ConvertError(
                f"{name} differs from the RoPE table of the configuration by {diff:.3g} (> {ROPE_TOLERANCE})"
            )
        if diff >= worst:
            worst, worst_name = diff, name
    return (
        f"{len(caches)} caches within {ROPE_TOLERANCE:g} of the configuration's "
        f"(max {worst:.2g} at {worst_name})"
    )


# ------------------------------------------------------------------------------------ writing safetensors


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dynamic-frame-compression")
    except PackageNotFoundError:
        return "unknown"


def _metadata(report: Report, config) -> dict[str, str]:
    return {
        "format": "pt",  # Hugging Face's marker for a PyTorch state dict
        "model_type": report.model_type,
        "source_format": report.source_format,
        "source_layout": report.layout,
        "source_step": "" if report.step is None else str(report.step),
        "dtype": report.dtype,
        "tool": f"dfc {tool_version()}",
        "config": json.dumps(config.to_dict(), separators=(",", ":")),
    }


@dataclass
class SafetensorsJob:
    """Everything `_write_safetensors` needs: the plan, the source batches and the pending checks."""

    dst: Path
    config: VAEConfig | DiTConfig
    planned: dict[str, Planned]
    batches: Iterable[list[tuple[str, np.ndarray]]]
    shape_check: object  # verify_forward.ChildCheck or Answered
    forward_reference: tuple[Path, str] | None = None  # (path, format) the JAX side reads


def _write_safetensors(job: SafetensorsJob, options: Options, report: Report, progress, log) -> Report:
    """Stream the planned tensors into a temporary output, verify everything, then rename it into place."""
    specs = [p.out for p in job.planned.values()]
    report.converted = {name: p.out.name for name, p in job.planned.items()}
    report.dtype = _dtype_label(spec.dtype for spec in specs)
    on_bytes = progress(sum(spec.nbytes for spec in specs)) if progress else _quiet
    single_file = job.dst.suffix == ".safetensors"
    with StagedOutput(job.dst, is_dir=not single_file, force=options.force, sync=options.sync) as staged:
        if single_file:
            writer = st.ShardedWriter(
                specs, _metadata(report, job.config), single_file=staged.tmp, sync=options.sync
            )
        else:
            writer = st.ShardedWriter(
                specs,
                _metadata(report, job.config),
                directory=staged.tmp,
                max_shard_bytes=options.max_shard_bytes,
                sync=options.sync,
            )
        try:
            checked = stream_tensors(job.planned, job.batches, writer, on_bytes)
            files = writer.close()
        except BaseException:
            writer.abort()
            raise
        what = "bit-exact" if options.dtype in (None, "float32") else "exact round-to-nearest-even"
        report.checks.append(
            Check("re-read and compared with the source", True, f"{checked} tensors, {what}")
        )
        if not single_file:
            st.write_text(staged.tmp / st.CONFIG_FILE, config_to_json(job.config), sync=options.sync)
        parsers = _check_written(files, job.planned)
        report.checks.append(Check("written headers re-parsed", True, f"{len(specs)} tensors, by {parsers}"))
        _torch_check(job.shape_check, {spec.name: spec.shape for spec in specs}, report)
        if options.verify_forward and job.forward_reference is not None:
            log("forward check (child process)")
            reference, reference_format = job.forward_reference
            rounded_to = options.dtype if options.dtype == "bfloat16" else None
            _forward_check(
                report, job.config, reference, reference_format, staged.tmp, "safetensors", rounded_to
            )
        staged.commit()
    report.destination, report.destination_format = job.dst, "safetensors"
    report.files = (
        [job.dst] if single_file else [job.dst / f.name for f in files] + [job.dst / st.CONFIG_FILE]
    )
    report.bytes_written = sum(spec.nbytes for spec in specs)
    return report


def _account(report: Report, names: Iterable[str]) -> None:
    """Every model leaf is converted or dropped with a reason; anything else is a bug, not a warning."""
    names = set(names)
    accounted = set(report.converted) | set(report.dropped)
    if accounted != names or set(report.converted) & set(report.dropped):
        odd = sorted(names ^ accounted) or sorted(set(report.converted) & set(report.dropped))
        raise ConvertError(f"{odd[0]}: leaf not accounted for (neither converted nor dropped)")


# ------------------------------------------------------------------------------- Orbax -> safetensors


def _orbax_to_safetensors(src, dst, options, report, progress, log) -> Report:
    location = resolve_checkpoint(src, options.step)
    subtree = find_model_subtree(read_tree_paths(location.step_dir))
    report.layout, report.step, report.not_read = subtree.layout, location.step, subtree.not_read
    log(f"checkpoint {location.step_dir} ({LAYOUT_DESCRIPTIONS[subtree.layout]})")
    store = ArrayStore(location.step_dir)
    names = sorted(subtree.leaves)
    infos = dict(zip(names, store.infos([subtree.leaves[n] for n in names])))
    shapes = {n: info.shape for n, info in infos.items()}
    report.model_type = _model_type(options.model, shapes)
    table = TABLES[report.model_type]
    kinds = _kinds(table, shapes)
    config = _resolve_config(report.model_type, shapes, options.config, report)

    from convert.verify_forward import start_shape_check

    shape_check = start_shape_check(config)
    try:
        params = [n for n in names if kinds[n] is not Kind.ROPE_CACHE]
        # The reader starts now, so that the first batch arrives while the RoPE caches are checked. Each
        # tensor comes as the table's PyTorch view of it (`Kind.to_torch`), which the writer thread lays
        # out (`copy_into`): faster than tensorstore's transposing read, and off the reader's path.
        source = store.read_batches([infos[n] for n in params], options.batch_bytes)
        by_key = {infos[n].key: n for n in params}
        batches = (
            [(by_key[info.key], kinds[by_key[info.key]].to_torch(array)) for info, array in batch]
            for batch in source
        )

        ropes = [n for n in names if kinds[n] is Kind.ROPE_CACHE]
        if ropes:
            caches = store.read([infos[n] for n in ropes])
            verdict = _check_ropes(table, config, {n: caches[infos[n].key] for n in ropes})
            report.checks.append(Check("RoPE caches", True, verdict))
        else:  # a parameters-only state: nothing to check, the model regenerates them
            report.checks.append(Check("RoPE caches", None, "none in the checkpoint"))
        report.dropped = {n: ROPE_DROP_REASON for n in ropes}

        planned = {
            n: Planned(
                n,
                st.TensorSpec(
                    kinds[n].torch_name(n),
                    kinds[n].torch_shape(shapes[n]),
                    _output_dtype(infos[n].dtype, options.dtype),
                ),
            )
            for n in params
        }
        report.converted = {n: p.out.name for n, p in planned.items()}
        _account(report, names)
        job = SafetensorsJob(dst, config, planned, batches, shape_check, (location.step_dir, "orbax"))
        return _write_safetensors(job, options, report, progress, log)
    finally:
        shape_check.cancel()


# ---------------------------------------------------------------------------------- .pt -> safetensors


def _load_pt(src: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise ConvertError("reading a .pt needs torch (pip install torch)") from None

    def unreadable(err: Exception) -> ConvertError:
        return ConvertError(
            f"{src}: not a readable PyTorch file ({(str(err) or type(err).__name__).splitlines()[0]})"
        )

    try:
        state = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err) and "zip" not in str(err):
            raise unreadable(err) from None
        try:  # the legacy (pre-zip) format cannot be memory-mapped
            state = torch.load(src, map_location="cpu", weights_only=True)
        except Exception as err2:
            raise unreadable(err2) from None
    except Exception as err:
        raise unreadable(err) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvertError(f"{src}: expected a plain state dict of tensors, got {type(state).__name__}")
    if not state:
        raise ConvertError(f"{src}: the state dict is empty")
    return dict(state)


def _tensor_to_numpy(tensor) -> np.ndarray:
    """A view of a (memory-mapped) CPU tensor; bfloat16 through its bits, which numpy cannot name."""
    import torch

    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.dtype("bfloat16"))
    return tensor.numpy()


def _torch_named_model(requested: str | None, shapes: Mapping[str, tuple]) -> tuple[str, dict[str, tuple]]:
    """Model type and Flax-named shapes of a PyTorch state dict (names and layouts through the table)."""
    candidates = [requested] if requested else list(TABLES)
    for model_type in candidates:
        try:
            flax = flax_shapes(TABLES[model_type], shapes)
        except (KeyError, AssertionError):
            continue
        if detect_model_type(flax) == model_type:
            return model_type, flax
    if requested:
        from convert.infer import INFERENCE

        raise ConvertError(
            f"--model {requested}, but the tensors do not form a {requested.upper()} "
            f"(no {INFERENCE[requested].marker} in PyTorch naming, or a name no rule matches)"
        )
    raise ConvertError("cannot tell whether these tensors are a VAE or a DiT; pass --model vae|dit")


def _pt_to_safetensors(src, dst, options, report, progress, log) -> Report:
    from convert.verify_forward import Answered, expected_shapes_here

    arrays = {k: _tensor_to_numpy(v) for k, v in _load_pt(src).items()}
    shapes = {k: tuple(a.shape) for k, a in arrays.items()}
    report.layout = "published state dict"
    report.model_type, flax = _torch_named_model(options.model, shapes)
    config = _resolve_config(report.model_type, flax, options.config, report)
    expected = expected_shapes_here(config)  # torch is loaded already: no child needed
    if expected is None:
        shape_check = Answered({"skipped": "torch_impl is not importable"})
    else:
        _compare_shapes(expected, shapes, f"{src.name} against torch_impl")  # before writing anything
        answer = {"ok": True, "shapes": expected, "source": "built on the meta device"}
        shape_check = Answered(answer)
    names = sorted(arrays)
    planned = {
        k: Planned(k, st.TensorSpec(k, shapes[k], _output_dtype(arrays[k].dtype, options.dtype)))
        for k in names
    }
    job = SafetensorsJob(dst, config, planned, ([(k, arrays[k])] for k in names), shape_check, (src, "torch"))
    return _write_safetensors(job, options, report, progress, log)


# ---------------------------------------------------------------------------------- safetensors -> Orbax


def _stored_config(src: Path, model_type: str, flax: Mapping[str, tuple], report: Report):
    """The configuration saved with the weights (config.json or `__metadata__`), checked against them."""
    text = st.read_config_text(src)
    if text is None:
        return None
    try:
        config = load_config(json.loads(text))
    except (ValueError, TypeError) as err:
        raise ConvertError(f"{src}: the stored configuration is not valid ({err})") from None
    if config.model_type != model_type:
        raise ConvertError(
            f"{src}: the stored configuration is for a {config.model_type}, the tensors are a {model_type}"
        )
    try:
        check_config(config, flax)
    except ConfigMismatch as err:
        raise ConvertError(f"the weights contradict their stored configuration: {err}") from None
    report.config, report.config_source = config, "stored with the weights"
    return config


def _safetensors_to_orbax(src, dst, options, report, progress, log) -> Report:
    from convert.verify_forward import start_shape_check

    reader = st.SafetensorsReader(src)
    shapes = {k: t.shape for k, t in reader.tensors.items()}
    report.layout = "safetensors"
    stored_type = reader.metadata.get("model_type")
    requested = options.model or (stored_type if stored_type in TABLES else None)
    report.model_type, flax = _torch_named_model(requested, shapes)
    table = TABLES[report.model_type]
    config = None if options.config else _stored_config(src, report.model_type, flax, report)
    config = config or _resolve_config(report.model_type, flax, options.config, report)
    shape_check = start_shape_check(config)
    try:
        flat: dict[str, np.ndarray] = {}  # what goes into the checkpoint
        sources: dict[str, np.ndarray] = {}  # what it must equal, or round to: views of the mapped file
        for key in sorted(reader.tensors):
            kind = table.kind_of_torch(key)
            name = kind.flax_name(key)
            sources[name] = kind.to_flax(reader.tensor(key))
            out_dtype = _output_dtype(sources[name].dtype, options.dtype)
            flat[name] = (
                sources[name] if out_dtype == sources[name].dtype else sources[name].astype(out_dtype)
            )
            report.converted[key] = name
        ropes = table.rope_reference(config)
        flat.update(ropes)
        sources.update(ropes)
        report.dtype = _dtype_label(flat[n].dtype for n in report.converted.values())
        total = sum(a.nbytes for a in flat.values())
        on_bytes = progress(total) if progress else _quiet
        with StagedOutput(dst, is_dir=True, force=options.force, sync=options.sync) as staged:
            staged.tmp.rmdir()  # orbax creates the directory itself
            _write_orbax_checked(staged.tmp, {"model": nest_flat(flat)})
            _torch_check(shape_check, shapes, report)
            checked = _verify_orbax(staged.tmp, sources, options.batch_bytes, on_bytes)
            report.checks.append(
                Check(
                    "re-read and compared with the source",
                    True,
                    f"{checked} arrays (RoPE caches regenerated)",
                )
            )
            recast = any(flat[n].dtype != sources[n].dtype for n in report.converted.values())
            if options.verify_forward and recast:  # the torch side would run the unrounded source
                report.checks.append(
                    Check("forward vs jax_ref", None, "the dtype changed; run it without --dtype")
                )
            elif options.verify_forward:
                log("forward check (child process)")
                _forward_check(report, config, staged.tmp, "orbax", src, "safetensors")
            staged.commit()
        report.files, report.bytes_written = [dst], total
    finally:
        shape_check.cancel()
        reader.close()
    report.destination, report.destination_format = dst, "orbax"
    return report


def _write_orbax_checked(path: Path, tree: dict) -> None:
    """Orbax (through tensorstore) reports a full disk as its own error types; make it an OSError again."""
    try:
        write_orbax(path, tree)
    except OSError:
        raise
    except Exception as err:
        text = str(err)
        if "No space left" in text or "ENOSPC" in text:
            raise OSError(errno.ENOSPC, "No space left on device") from None
        raise ConvertError(
            f"writing the Orbax checkpoint failed: {text.splitlines()[0] if text else err!r}"
        ) from None


def _verify_orbax(
    step_dir: Path, flat: Mapping[str, np.ndarray], batch_bytes: int, on_bytes: Progress
) -> int:
    """Re-read every array of the written checkpoint and compare it with its source: bit for bit, or as
    the exact rounding of it."""
    subtree = find_model_subtree(read_tree_paths(step_dir))
    if set(subtree.leaves) != set(flat):
        odd = sorted(set(subtree.leaves) ^ set(flat))
        raise ConvertError(f"the written checkpoint's tree differs from the source at {odd[0]}")
    store = ArrayStore(step_dir)
    names = sorted(flat)
    infos = store.infos([subtree.leaves[n] for n in names])
    by_key = {info.key: n for info, n in zip(infos, names)}
    checked = 0
    for batch in store.read_batches(infos, batch_bytes):
        for info, array in batch:
            name = by_key[info.key]
            if array.shape != flat[name].shape or not _matches_source(array, flat[name]):
                raise ConvertError(
                    f"{name}: the array re-read from the written checkpoint differs from the source"
                )
            checked += 1
            on_bytes(array.nbytes)
    return checked
