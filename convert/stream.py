"""The streaming core of Orbax/.pt -> safetensors: write every tensor, re-read it, compare it, bit for bit."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert import bits
from convert import safetensors_io as st
from convert.options import ConvertError, Progress


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
                    write_and_check(planned[name], source, writer)
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


def write_and_check(plan: Planned, source: np.ndarray, writer: st.ShardedWriter) -> None:
    if source.shape != plan.out.shape:
        raise ConvertError(
            f"{plan.source_name}: read as {list(source.shape)}, planned as {list(plan.out.shape)}"
        )
    written = writer.write(plan.out.name, source)
    # What went to the file is `source` laid out contiguously (by numpy, when `source` is a transposed
    # view); with a new dtype, the file is checked against the source itself as its exact rounding.
    reference = written if written.dtype == source.dtype else source
    if not bits.matches_source(writer.re_read(plan.out.name), reference):
        raise ConvertError(
            f"{plan.source_name}: the tensor re-read from {plan.out.name} does not match the source"
        )


def check_written(files: list[Path], planned: Mapping[str, Planned]) -> str:
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
