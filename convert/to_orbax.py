"""safetensors -> Orbax: the PyTorch-named tensors mapped back through the model's table, written as an
Orbax checkpoint in the training code's layout, re-read and compared with the source, bit for bit.

A JAX user restores the output into `jax_ref` with the model's state as the target (list indices are
stored as strings, so the target tells Orbax the real structure):

    restored = ocp.StandardCheckpointer().restore(path, {"model": nnx.state(model)})
    nnx.update(model, restored["model"])

With `Options.flax = "linen"` (`dfc convert --flax linen`) the output is a Linen model's variables,
`{'params': ...}`, restored with `ocp.StandardCheckpointer().restore(path)["params"]`.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from common.tables import TABLES
from common.trees import nest_flat
from convert import bits, layout, resolve
from convert import safetensors_io as st
from convert.checks import Checks, finish_shape_check, forward_check
from convert.options import Check, ConvertError, Progress, Report, quiet
from convert.orbax_io import LINEN_PARAMS, ArrayStore, find_model_subtree, read_tree_paths, write_orbax
from convert.staging import commit, stage


def safetensors_to_orbax(src, dst, options, report, progress, log, checks: Checks) -> Report:
    reader = st.SafetensorsReader(src)
    shapes = {k: t.shape for k, t in reader.tensors.items()}
    report.layout = "safetensors"
    if options.table is not None:
        table, config = resolve.given_table(options, report, shapes, torch_names=True), None
    else:
        stored_type = reader.metadata.get("model_type")
        requested = options.model or (stored_type if stored_type in TABLES else None)
        report.model_type, flax = resolve.torch_named_model(requested, shapes)
        resolve.check_floating({k: t.dtype for k, t in reader.tensors.items()}, str(src))
        table = TABLES[report.model_type]
        config = None if options.config else resolve.stored_config(src, report.model_type, flax, report)
        config = config or resolve.resolve_config(report.model_type, flax, options.config, report)
    shape_check = checks.shape_check(config)  # overlaps the conversion
    try:
        flat: dict[str, np.ndarray] = {}  # what goes into the checkpoint
        sources: dict[str, np.ndarray] = {}  # what it must equal, or round to: views of the mapped file
        for key in sorted(reader.tensors):
            kind = table.kind_of_torch(key)
            name = kind.flax_name(key)
            sources[name] = layout.to_flax(kind, reader.tensor(key))
            out_dtype = resolve.output_dtype(sources[name].dtype, options.dtype)
            flat[name] = (
                sources[name] if out_dtype == sources[name].dtype else sources[name].astype(out_dtype)
            )
            report.converted[key] = name
        ropes = table.rope_reference(config) if config is not None else {}
        flat.update(ropes)
        sources.update(ropes)
        report.dtype = resolve.dtype_label(flat[n].dtype for n in report.converted.values())
        total = sum(a.nbytes for a in flat.values())
        on_bytes = progress(total) if progress else quiet
        with stage(dst, True, options) as staged:
            staged.tmp.rmdir()  # orbax creates the directory itself
            write_orbax_checked(staged.tmp, orbax_tree(flat, options.flax))
            finish_shape_check(checks, shape_check, shapes, report)
            checked = verify_orbax(staged.tmp, sources, options.batch_bytes, on_bytes)
            report.checks.append(
                Check(
                    "re-read and compared with the source",
                    True,
                    f"{checked} arrays" + (" (RoPE caches regenerated)" if ropes else ""),
                )
            )
            recast = any(flat[n].dtype != sources[n].dtype for n in report.converted.values())
            if options.verify_forward and recast:  # the torch side would run the unrounded source
                report.checks.append(
                    Check(checks.forward_name, None, "the dtype changed; run it without --dtype")
                )
            elif options.verify_forward and config is not None:
                log("forward check (child process)")
                forward_check(checks, report, config, staged.tmp, "orbax", src, "safetensors")
            commit(staged)
        report.files, report.bytes_written = [dst], total
    finally:
        shape_check.cancel()
        reader.close()
    report.destination, report.destination_format = dst, "orbax"
    return report


def orbax_tree(flat: Mapping[str, np.ndarray], flax: str) -> dict:
    """What a JAX user saves: an NNX model's state under 'model' (each array under `value`), or a Linen
    model's variables (`{'params': ...}`)."""
    if flax == "linen":
        return {LINEN_PARAMS: nest_flat(flat, leaf_key=None)}
    return {"model": nest_flat(flat)}


def write_orbax_checked(path: Path, tree: dict) -> None:
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


def verify_orbax(step_dir: Path, flat: Mapping[str, np.ndarray], batch_bytes: int, on_bytes: Progress) -> int:
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
            if array.shape != flat[name].shape or not bits.matches_source(array, flat[name]):
                raise ConvertError(
                    f"{name}: the array re-read from the written checkpoint differs from the source"
                )
            checked += 1
            on_bytes(array.nbytes)
    return checked
