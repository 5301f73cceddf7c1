"""Orbax or a published `.pt` -> safetensors: plan every tensor, stream it through the writer, verify.

1. find the step and the model subtree from the checkpoint's metadata (optimizer subtrees are never read);
2. learn every array's shape from its header and infer the configuration (or check the given one);
3. start the caller's shape check (`convert.checks.Checks`) as soon as the configuration is known, so
   that it runs while we convert;
4. check the RoPE caches against the configuration and drop them;
5. write the safetensors header (shapes are known), then stream the tensors (`convert.stream`);
6. re-parse the written headers, finish the shape check, optionally run the forward check;
7. only then rename the temporary output into place. Any failure removes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import config_to_json
from common.kinds import Kind
from common.tables import ROPE_DROP_REASON, TABLES
from convert import layout, resolve
from convert import safetensors_io as st
from convert.checks import (
    NO_IMPLEMENTATION,
    Answered,
    Checks,
    Pending,
    check_ropes,
    compare_shapes,
    finish_shape_check,
    forward_check,
)
from convert.options import Check, Options, Report, quiet, tool_version
from convert.orbax_io import (
    LAYOUT_DESCRIPTIONS,
    ArrayStore,
    find_model_subtree,
    read_tree_paths,
    resolve_checkpoint,
)
from convert.staging import commit, stage
from convert.stream import Planned, check_written, stream_tensors
from convert.torch_source import load_pt_arrays


def metadata(report: Report, config) -> dict[str, str]:
    """Hugging Face's format marker and what the file came from; the configuration, when there is one."""
    out = {
        "format": "pt",  # Hugging Face's marker for a PyTorch state dict
        "model_type": report.model_type,
        "source_format": report.source_format,
        "source_layout": report.layout,
        "source_step": "" if report.step is None else str(report.step),
        "dtype": report.dtype,
        "tool": f"dfc {tool_version()}",
    }
    if config is not None:
        out["config"] = json.dumps(config.to_dict(), separators=(",", ":"))
    return out


@dataclass
class SafetensorsJob:
    """Everything `write_safetensors` needs: the plan, the source batches and the pending checks."""

    dst: Path
    config: object | None  # the model's configuration dataclass; None for a table of the caller's
    planned: dict[str, Planned]
    batches: Iterable[list[tuple[str, np.ndarray]]]
    checks: Checks
    shape_check: Pending
    forward_reference: tuple[Path, str] | None = None  # (path, format) the reference side reads


def write_safetensors(job: SafetensorsJob, options: Options, report: Report, progress, log) -> Report:
    """Stream the planned tensors into a temporary output, verify everything, then rename it into place."""
    specs = [p.out for p in job.planned.values()]
    report.converted = {name: p.out.name for name, p in job.planned.items()}
    report.dtype = resolve.dtype_label(spec.dtype for spec in specs)
    on_bytes = progress(sum(spec.nbytes for spec in specs)) if progress else quiet
    single_file = job.dst.suffix == ".safetensors"
    with stage(job.dst, not single_file, options) as staged:
        if single_file:
            writer = st.ShardedWriter(
                specs, metadata(report, job.config), single_file=staged.tmp, sync=options.sync
            )
        else:
            writer = st.ShardedWriter(
                specs,
                metadata(report, job.config),
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
            Check("re-read and compared with the source", True, f"{checked} tensors, {what} to what was read")
        )
        if job.forward_reference is not None and job.forward_reference[1] == "orbax":
            report.checks.append(
                Check(
                    "source bytes",
                    None,
                    "not verifiable: Orbax/OCDBT stores no checksum of array bytes, so damage in the "
                    "checkpoint itself cannot be detected; the comparison above is with what was read",
                )
            )
        if not single_file and job.config is not None:
            st.write_text(staged.tmp / st.CONFIG_FILE, config_to_json(job.config), sync=options.sync)
        parsers = check_written(files, job.planned)
        report.checks.append(Check("written headers re-parsed", True, f"{len(specs)} tensors, by {parsers}"))
        found = {spec.name: spec.shape for spec in specs}
        finish_shape_check(job.checks, job.shape_check, found, report)
        if options.verify_forward and job.forward_reference is not None and job.config is not None:
            log("forward check (child process)")
            reference, reference_format = job.forward_reference
            rounded_to = options.dtype if options.dtype == "bfloat16" else None
            forward_check(
                job.checks,
                report,
                job.config,
                reference,
                reference_format,
                staged.tmp,
                "safetensors",
                rounded_to,
            )
        commit(staged)
    report.destination, report.destination_format = job.dst, "safetensors"
    report.files = (
        [job.dst] if single_file else [job.dst / f.name for f in files] + [job.dst / st.CONFIG_FILE]
    )
    report.bytes_written = sum(spec.nbytes for spec in specs)
    if job.config is None and not single_file:
        report.files.remove(job.dst / st.CONFIG_FILE)
    return report


def _check_before_reading(config, shapes, itemsizes, step_dir: Path) -> bool:
    """Whether the strict shape check must be awaited before any array is read, instead of overlapping
    the conversion: when the arrays declare more values than a model of `config` holds (parameters and
    RoPE caches, counted from the configuration alone), or more bytes than the checkpoint holds on disk
    (with room for Orbax's compression). Either way some shape is wrong, and reading it could ask for
    any amount of memory; the strict check names it first."""
    from common.model_size import state_values

    if sum(math.prod(shape) for shape in shapes.values()) > sum(state_values(config)):
        return True
    declared = sum(math.prod(shape) * itemsizes[name] for name, shape in shapes.items())
    on_disk = sum(f.stat().st_size for f in step_dir.rglob("*") if f.is_file() and not f.is_symlink())
    return declared > 4 * on_disk + 64 * 2**20


def orbax_to_safetensors(src, dst, options, report, progress, log, checks: Checks) -> Report:
    location = resolve_checkpoint(src, options.step)
    subtree = find_model_subtree(read_tree_paths(location.step_dir))
    report.layout, report.step, report.not_read = subtree.layout, location.step, subtree.not_read
    log(f"checkpoint {location.step_dir} ({LAYOUT_DESCRIPTIONS[subtree.layout]})")
    store = ArrayStore(location.step_dir)
    names = sorted(subtree.leaves)
    infos = dict(zip(names, store.infos([subtree.leaves[n] for n in names])))
    shapes = {n: info.shape for n, info in infos.items()}
    if options.table is not None:
        table, config = resolve.given_table(options, report, names), None
    else:
        report.model_type = resolve.model_type(options.model, shapes)
        resolve.check_floating({n: info.dtype for n, info in infos.items()}, str(location.step_dir))
        table = TABLES[report.model_type]
        config = resolve.resolve_config(report.model_type, shapes, options.config, report)
    shape_check = checks.shape_check(config)  # overlaps the conversion
    kinds = resolve.kinds(table, shapes)
    try:
        params = [n for n in names if kinds[n] is not Kind.ROPE_CACHE]
        itemsizes = {n: info.dtype.itemsize for n, info in infos.items()}
        if config is not None and _check_before_reading(config, shapes, itemsizes, location.step_dir):
            found = {kinds[n].torch_name(n): kinds[n].torch_shape(shapes[n]) for n in params}
            finish_shape_check(checks, shape_check, found, report)
            shape_check = Answered({"skipped": NO_IMPLEMENTATION})  # reported already: not again at the end
        # The reader starts now, so that the first batch arrives while the RoPE caches are checked. Each
        # tensor comes as the table's PyTorch view of it (`layout.to_torch`), which the writer thread lays
        # out (`copy_into`): faster than tensorstore's transposing read, and off the reader's path.
        source = store.read_batches([infos[n] for n in params], options.batch_bytes)
        by_key = {infos[n].key: n for n in params}
        batches = (
            [(by_key[info.key], layout.to_torch(kinds[by_key[info.key]], array)) for info, array in batch]
            for batch in source
        )

        ropes = [n for n in names if kinds[n] is Kind.ROPE_CACHE]
        if ropes and config is None:
            report.checks.append(Check("RoPE caches", None, "no configuration to check them against"))
        elif ropes:
            caches = store.read([infos[n] for n in ropes])
            verdict = check_ropes(table, config, {n: caches[infos[n].key] for n in ropes})
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
                    resolve.output_dtype(infos[n].dtype, options.dtype),
                ),
            )
            for n in params
        }
        report.converted = {n: p.out.name for n, p in planned.items()}
        resolve.account(report, names)
        job = SafetensorsJob(dst, config, planned, batches, checks, shape_check, (location.step_dir, "orbax"))
        return write_safetensors(job, options, report, progress, log)
    finally:
        shape_check.cancel()


def pt_to_safetensors(src, dst, options, report, progress, log, checks: Checks) -> Report:
    arrays = load_pt_arrays(src)
    shapes = {k: tuple(a.shape) for k, a in arrays.items()}
    report.layout = "published state dict"
    if options.table is not None:
        resolve.given_table(options, report, shapes, torch_names=True)
        config = expected = None
    else:
        report.model_type, flax = resolve.torch_named_model(options.model, shapes)
        resolve.check_floating({k: a.dtype for k, a in arrays.items()}, str(src))
        config = resolve.resolve_config(report.model_type, flax, options.config, report)
        # torch is loaded already (it read the file): the caller may answer here, no child needed
        expected = checks.shapes_here(config) if checks.shapes_here is not None else None
    if config is None:
        shape_check = checks.shape_check(None)
    elif expected is None:
        shape_check = Answered({"skipped": f"{checks.implementation} is not importable"})
    else:
        compare_shapes(expected, shapes, f"{src.name} against {checks.implementation}")  # before writing
        shape_check = Answered({"ok": True, "shapes": expected, "source": "built on the meta device"})
    names = sorted(arrays)
    planned = {
        k: Planned(k, st.TensorSpec(k, shapes[k], resolve.output_dtype(arrays[k].dtype, options.dtype)))
        for k in names
    }
    batches = ([(k, arrays[k])] for k in names)
    job = SafetensorsJob(dst, config, planned, batches, checks, shape_check, (src, "torch"))
    return write_safetensors(job, options, report, progress, log)
