"""Judge traces made elsewhere: the same rows, tolerance model, verdict and report as an in-process run.

The traces' runs are pooled by role: the JAX fp32 `reference`, `jax <numerics>` bf16 runs, and one
`torch <policy>` run. Calls pair up by key (module path, call order, sampler step), as in-process; a call
made on one side only is said so (rows "not called by torch", the report's "calls only torch made").
Traces of other weights or other inputs are refused, naming the fingerprints.

Carried mode needs nothing but the traces. Isolated mode needs the torch model run on the reference's
recorded inputs: the torch trace holds those replays when it was made against the reference's trace
(`--side both`, or `--reference-trace`); otherwise `rebuild` (the command's, from the torch trace's plan)
builds the torch model here and replays them now, or isolated mode is left out and the result says why.
Arrays are read one row at a time, so judging holds about one layer's activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from parity.capture import Capture
from parity.results import CaseResult, RunResult
from parity.runner import MODES, Settings, carried, name_of, rows
from parity.suite import Case
from parity.trace import MANIFEST, Trace, TraceError, matcher
from parity.trace_run import JAX, REFERENCE, TORCH, jax_role


def open_traces(paths: list[str | Path | Trace]) -> list[Trace]:
    """Each path a trace, or a directory of traces (what `--side both --save-trace DIR` writes)."""
    traces = []
    for path in paths:
        if isinstance(path, Trace):
            traces.append(path)
            continue
        path = Path(path)
        if not path.exists():
            raise TraceError(f"{path}: no such directory")
        if not (path / MANIFEST).is_file() and path.is_dir():
            inner = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())
            if inner:
                traces += [Trace(p) for p in inner]
                continue
        traces.append(Trace(path))
    return traces


@dataclass
class Roles:
    """Who plays which role, after every check."""

    reference: Trace
    jax: dict[str, Trace]  # judge -> trace holding that bf16 run
    torch: Trace
    torch_role: str
    settings: Settings
    notes: list[str] = field(default_factory=list)


def _pick(traces: list[Trace]) -> Roles:
    jax_traces = [t for t in traces if t.side == JAX]
    torch_traces = [t for t in traces if t.side == TORCH]
    if not jax_traces or len(torch_traces) != 1:
        sides = ", ".join(f"{t.name} ({t.side})" for t in traces)
        raise TraceError(f"compare needs JAX trace(s) and exactly one torch trace; got {sides}")
    torch = torch_traces[0]
    notes = []
    reference = jax_traces[0]
    for other in jax_traces[1:]:
        notes.append(f"reference runs of {other.name} not used (the reference is {reference.name}'s)")
    settings = torch.manifest["settings"]
    precision = settings["precision"]
    jax: dict[str, Trace] = {}
    if precision != "fp32":
        for trace in jax_traces:
            for judge in trace.manifest["settings"]["numerics"]:
                jax.setdefault(judge, trace)
        if not jax:
            raise TraceError(
                f"{torch.name} is a torch {precision} run, and no JAX trace holds a JAX bf16 run "
                "to judge it by (make the JAX trace with a bf16 --precision)"
            )
    modes = tuple(
        m
        for m in MODES
        if m in settings["modes"] and all(m in t.manifest["settings"]["modes"] for t in jax_traces)
    )
    run_settings = Settings(
        precision=precision,
        numerics=tuple(jax) or ("*",),
        modes=modes,
        device=settings["device"],
        seed=settings["seed"],
        judge=settings.get("judge") if settings.get("judge") in jax else None,
        natural=tuple(tuple(pair) for pair in settings.get("natural", [])),
    )
    return Roles(reference, jax, torch, f"torch {precision}", run_settings, notes)


def _check(lineup: Roles, traces: list[Trace]) -> None:
    """Every trace of the same weights and, case by case, the same inputs; else one line with both."""
    first = {}
    for trace in traces:
        for name, fingerprint in trace.manifest["weights"].items():
            seen = first.setdefault(name, (trace, fingerprint))
            if seen[1] != fingerprint:
                raise TraceError(
                    f"traces disagree on the weights of {name}: {seen[0].name} ({seen[0].side}) {seen[1]} "
                    f"vs {trace.name} ({trace.side}) {fingerprint}"
                )
    inputs = {}
    for trace in traces:
        for name, case in trace.cases.items():
            fingerprint = case["inputs"]["fingerprint"]
            seen = inputs.setdefault(name, (trace, fingerprint))
            if seen[1] != fingerprint:
                raise TraceError(
                    f"traces disagree on the inputs of {name}: {seen[0].name} ({seen[0].side}) {seen[1]} "
                    f"vs {trace.name} ({trace.side}) {fingerprint}"
                )


class _LiveReplays(Mapping):
    """Isolated torch outputs made on demand, one call at a time, from the reference's recorded inputs."""

    def __init__(self, side, own: Capture, reference: Capture):
        self.side, self.own, self.reference = side, own, reference

    def __getitem__(self, key: str):
        call, ref_call = self.own.calls.get(key), self.reference.calls.get(key)
        if call is None or ref_call is None:
            raise KeyError(key)
        try:
            return self.side.replay(call, ref_call)
        except Exception as err:
            return f"replay failed: {type(err).__name__}: {err}"

    def __iter__(self) -> Iterator[str]:
        return (k for k in self.reference.calls if k in self.own.calls)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _case(entry: Mapping[str, Any]) -> Case:
    return Case(
        entry["name"],
        tuple(entry["models"]),
        None,  # type: ignore[arg-type]  (a judged case is never run again)
        None,  # type: ignore[arg-type]
        step_path=entry["step_path"],
        covers=entry["covers"],
        discrete=tuple(entry["discrete"]),
    )


def compare(
    paths: list[str | Path | Trace],
    *,
    title: str | None = None,
    judge: str | None = None,
    rebuild: Callable[[Trace], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> RunResult:
    """A `RunResult` judged from traces. `rebuild(torch_trace)` returns a `parity.runner.Lineup` holding the
    torch models (or raises, saying why it cannot); it is asked only when isolated mode needs it."""
    traces = open_traces(paths)
    lineup = _pick(traces)
    _check(lineup, traces)
    settings = lineup.settings
    if judge is not None:
        if judge not in lineup.jax:
            raise TraceError(f"--judge {judge}: no JAX trace holds a bf16 run with those numerics")
        settings = replace(settings, judge=judge)
    reference, torch = lineup.reference, lineup.torch
    judges = settings.judges
    names = [n for n in reference.cases if n in torch.cases]
    for trace in traces:
        extra = [n for n in trace.cases if n not in names]
        if extra:
            lineup.notes.append(f"cases only in {trace.name}: {', '.join(extra)}")
    torch_models = None
    stored = torch.manifest.get("reference_trace") == reference.id
    if "isolated" in settings.modes and not stored:
        try:
            torch_models = rebuild(torch) if rebuild else None
        except Exception as err:  # the reason isolated mode cannot be judged here
            lineup.notes.append(f"isolated mode not judged: {err}")
        if torch_models is None and not any("isolated mode" in n for n in lineup.notes):
            lineup.notes.append(
                "isolated mode not judged: the torch trace holds no replays of this reference, and the torch "
                "model cannot be built here"
            )
        if torch_models is None:
            settings = replace(settings, modes=tuple(m for m in settings.modes if m != "isolated"))
    result = RunResult(
        title=title
        or f"{'+'.join(torch.manifest['subjects'])}, torch {name_of(settings.precision)} (from traces)",
        settings=_settings(settings, traces, lineup),
        environment=_environment(reference, torch),
        tolerance=_tolerance(),
        verdict_judge=settings.verdict_judge,
    )
    for name in names:
        if progress:
            progress(name)
        result.cases.extend(_judge_case(name, lineup, settings, judges, torch_models, stored))
    return result


def _judge_case(name, lineup: Roles, settings: Settings, judges, torch_models, stored) -> list[CaseResult]:
    reference, torch = lineup.reference, lineup.torch
    entry = torch.cases[name]
    case = _case(entry)
    results = [
        CaseResult(name, case.covers, mode, judges, step_path=case.step_path) for mode in settings.modes
    ]
    runs = {REFERENCE: reference.run(name, REFERENCE) if REFERENCE in reference.roles(name) else None}
    for judge, trace in lineup.jax.items():
        role = jax_role(judge)
        runs[role] = trace.run(name, role) if role in trace.roles(name) else None
    runs[TORCH] = torch.run(name, lineup.torch_role) if lineup.torch_role in torch.roles(name) else None
    missing = [role for role, run in runs.items() if run is None]
    errors = [f"{role}: {run.error}" for role, run in runs.items() if run is not None and run.error]
    if missing or errors:
        message = "; ".join([*(f"no {role} run in the traces" for role in missing), *errors])
        for result in results:
            result.error = message
        return results
    ref = _held_by_torch(runs[REFERENCE].capture, torch)
    own = runs[TORCH].capture
    jax_caps = {j: runs[jax_role(j)].capture for j in lineup.jax}
    for result in results:
        if result.mode == "carried":
            torch_out = carried(own)
            jax_out = {j: carried(c) for j, c in jax_caps.items()}
        else:
            if stored:
                torch_out = runs[TORCH].isolated or {}
            else:
                torch_out = _LiveReplays(torch_models.torch_side(case), own, ref)
            jax_out = {j: runs[jax_role(j)].isolated or {} for j in lineup.jax}
        result.rows = rows(case, result.mode, ref, torch_out, jax_out, own, jax_caps, judges)
        result.only_torch = [k for k in own.calls if k not in ref.calls]
    return results


def _held_by_torch(reference: Capture, torch: Trace) -> Capture:
    """The reference's calls that the torch trace could hold: a call left out by its `--trace-layers` is not
    one torch failed to make."""
    keep = matcher(torch.manifest.get("trace_layers"))
    if keep is None:
        return reference
    return Capture({k: c for k, c in reference.calls.items() if keep(c.path)}, reference.output)


def _settings(settings: Settings, traces: list[Trace], lineup: Roles) -> dict[str, Any]:
    torch = lineup.torch.manifest
    return {
        "precision": name_of(settings.precision),
        "numerics": list(lineup.jax),
        "modes": list(settings.modes),
        "device": settings.device,
        "seed": settings.seed,
        "verdict_judge": settings.verdict_judge,
        "subjects": torch["subjects"],
        "traces": {
            t.name: {"side": t.side, "size": t.size_text(), "trace_layers": t.manifest["trace_layers"]}
            for t in traces
        },
        "notes": lineup.notes,
    }


def _environment(reference: Trace, torch: Trace) -> dict[str, Any]:
    """The JAX side's record for JAX, the torch side's for torch (they may be different machines)."""
    jax_env, torch_env = reference.manifest["environment"], torch.manifest["environment"]
    versions = {**jax_env["versions"], "torch": torch_env["versions"].get("torch")}
    if jax_env["versions"]["python"] != torch_env["versions"]["python"]:
        versions["python"] = (
            f"{jax_env['versions']['python']} (jax side), {torch_env['versions']['python']} (torch side)"
        )
    platform = jax_env["platform"]
    if torch_env["platform"] != platform:
        platform = f"{platform} (jax side), {torch_env['platform']} (torch side)"
    return {
        "pins": torch_env["pins"],
        "versions": versions,
        "platform": platform,
        "jax": jax_env["jax"],
        "torch": torch_env["torch"],
    }


def _tolerance() -> dict[str, Any]:
    from parity import tolerance

    return tolerance.describe()
