"""`dfc parity --save-trace DIR --side jax|torch|both` and `dfc parity compare TRACE... --report DIR`.

A part of `dfc parity` (see `parity.py`): one side of a run written to a trace, or both sides one after the
other, and traces made anywhere judged into the same report as an in-process run (`parity.compare`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common.atomic import atomic_output
from dfc.errors import UserError

# what `dfc parity` was asked, kept in a trace so that `compare` can build the torch model again
PLAN_KEYS = (
    "suite",
    "model",
    "config",
    "precision",
    "numerics",
    "judge",
    "mode",
    "device",
    "steps",
    "batch",
    "frames",
    "seed",
    "sdpa",
    "cases",
    "orbax",
    "weights",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--side",
        choices=("jax", "torch", "both"),
        default="both",
        help="which side to run: 'jax' (the reference and the JAX bf16 runs) or 'torch' write a trace "
        "(--save-trace) to compare elsewhere; 'both' runs them one after the other",
    )
    parser.add_argument(
        "--save-trace",
        metavar="DIR",
        help="stream every captured layer output (and the inputs isolated mode replays) to safetensors "
        "shards in DIR as the run goes; with --side both, DIR/jax and DIR/torch, one framework in "
        "memory at a time, then the report",
    )
    parser.add_argument(
        "--trace-layers",
        metavar="PATTERN",
        help="keep only calls whose module path matches (fnmatch, comma-separated: 'encoder.*,decoder.unet')",
    )
    parser.add_argument(
        "--reference-trace",
        metavar="TRACE",
        help="with --side torch: the JAX side's trace; its recorded inputs are replayed through the torch "
        "model now, so that `compare` needs no model for isolated mode",
    )


def add_compare_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    compare = sub.add_parser(
        "compare",
        help="judge traces made by --save-trace (anywhere) into a report",
        description="Judge parity traces: the JAX side's (reference and bf16 runs) against the torch "
        "side's, with the in-process tolerance model, report and figures.",
    )
    compare.add_argument(
        "traces", nargs="+", metavar="TRACE", help="trace directories (2 or 3), or a --side both directory"
    )
    compare.add_argument("--report", default=argparse.SUPPRESS, metavar="DIR", help="where the report goes")
    compare.add_argument(
        "--judge",
        metavar="VARIANT",
        default=None,
        help="the JAX bf16 variant the verdict is against (default: the torch policy's natural one)",
    )


def plan_of(args) -> dict:
    plan = {key: getattr(args, key, None) for key in PLAN_KEYS}
    for key in ("orbax", "weights"):  # found again from wherever `compare` runs
        plan[key] = plan[key] and os.path.abspath(plan[key])
    if plan["config"] and os.path.exists(plan["config"]):
        plan["config"] = os.path.abspath(plan["config"])
    module, colon, name = (plan["suite"] or "").rpartition(":")
    if colon and module.endswith(".py") and os.path.exists(module):
        plan["suite"] = f"{os.path.abspath(module)}:{name}"
    return plan


def _progress(name: str) -> None:
    print(f"dfc parity: {name} ...", file=sys.stderr, flush=True)


def check_target(args) -> Path | None:
    """Said before anything is built: a trace never replaces a directory, nor lands in a missing one."""
    if not args.save_trace:
        if args.side != "both":
            raise UserError(f"--side {args.side} writes a trace: give --save-trace DIR")
        return None
    if args.reference_trace and args.side != "torch":
        raise UserError("--reference-trace goes with --side torch")
    target = Path(args.save_trace)
    if target.exists():
        raise UserError(f"--save-trace {target}: already exists (a trace never replaces one)")
    if not target.parent.is_dir():
        raise UserError(f"--save-trace {target}: no such directory {target.parent}")
    return target


def save(args, subjects, cases, settings, weights, torch_models) -> int:
    from parity.trace import Trace, TraceError
    from parity.trace_run import save_both, save_jax, save_torch

    common = dict(weights=weights, layers=args.trace_layers, plan=plan_of(args), progress=_progress)
    target = check_target(args)
    try:
        reference = Trace(args.reference_trace) if args.reference_trace else None
        with atomic_output(target) as staging:
            if args.side == "jax":
                traces = [save_jax(subjects, cases, settings, staging, **common)]
            elif args.side == "torch":
                traces = [
                    save_torch(
                        subjects,
                        cases,
                        settings,
                        staging,
                        torch_models=torch_models,
                        reference=reference,
                        **common,
                    )
                ]
            else:
                traces = list(
                    save_both(subjects, cases, settings, staging, torch_models=torch_models, **common)
                )
    except TraceError as err:
        raise UserError(str(err)) from None
    for trace in traces:
        where = Path(args.save_trace) / trace.directory.relative_to(staging)
        print(f"dfc parity: {trace.side} trace in {where}: {trace.size_text()}")
    if args.side != "both":
        return 0
    return _compare([args.save_trace], args.report, args.judge)


def compare(args) -> int:
    return _compare(args.traces, args.report, args.judge)


def _compare(paths, report_dir: str, judge: str | None) -> int:
    from parity import report
    from parity.compare import compare as judge_traces
    from parity.compare import open_traces
    from parity.environment import Pins, pinned
    from parity.trace import TraceError

    try:
        traces = open_traces(paths)
        torch = next((t for t in traces if t.side == "torch"), None)
        pins = Pins(**torch.manifest["environment"]["pins"]) if torch else Pins()
        with pinned(pins):
            result = judge_traces(traces, judge=judge, rebuild=_rebuild, progress=_progress)
    except TraceError as err:
        raise UserError(str(err)) from None
    for name, trace in result.settings["traces"].items():
        print(f"dfc parity: {trace['side']} trace {name}: {trace['size']}")
    for note in result.settings["notes"]:
        print(f"dfc parity: {note}")
    files = report.write(result, report_dir)
    verdict = "PASS" if result.passed else "FAIL"
    print(
        f"dfc parity: {verdict} ({len(result.cases)} case runs, judged against {result.verdict_judge}); "
        f"first divergent layer: {report.first_divergent_text(result)}"
    )
    print(f"dfc parity: report in {files['md'].parent}")
    return 0 if result.passed else 1


def _rebuild(trace):
    """The torch models of a trace's run, built here as `dfc parity` built them there."""
    from dfc.commands import parity as command
    from parity.runner import Lineup

    plan = trace.manifest.get("plan") or {}
    if set(PLAN_KEYS) - set(plan):
        raise UserError("the torch trace does not say how its model was made")
    args = argparse.Namespace(**plan)
    try:
        suite, settings, weights, torch_models, _title, _describe = command.prepare(args)
    except UserError as err:
        raise UserError(f"cannot build the torch model here: {err}") from None
    return Lineup.build(dict(suite.subjects), settings, weights, torch_models, frameworks=("torch",))
