"""Run one side of a parity run (JAX or PyTorch) and stream what it captures into a trace.

The JAX side runs the fp32 reference (keeping every call's inputs: isolated mode replays them through the
other side's model) and each JAX bf16 run with its isolated replays. The torch side runs the torch model,
and, given the reference's trace, replays the reference's recorded inputs through it at once, so that the
traces can later be judged without any model. `save_both` runs the JAX side, lets its models go, then runs
the torch side against the JAX trace on disk: one framework's models and one layer's activations at a
time, never every capture of a case at once as an in-process run holds them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from parity.capture import Capture, Recorded
from parity.runner import Lineup, Settings, describe_subject, input_digest, name_of
from parity.suite import Case, Subject
from parity.trace import (
    Trace,
    TraceError,
    TraceWriter,
    encode_capture,
    encode_replays,
    fingerprint_arrays,
    matcher,
)

JAX, TORCH = "jax", "torch"
REFERENCE = "reference"


def jax_role(judge: str) -> str:
    return f"jax {judge}"


def torch_role(precision) -> str:
    return f"torch {name_of(precision)}"


class _Sink:
    """Takes each finished call from a recorder: outside the `--trace-layers` patterns it is dropped,
    otherwise its arrays go to the trace and the call stays with references to them only."""

    def __init__(self, writer: TraceWriter, layers: Callable[[str], bool] | None):
        self.writer = writer
        self.layers = layers

    def __call__(self, call):
        if self.layers is not None and not self.layers(call.path):
            return None
        return self.writer.put_call(call)


def _replays(side, own: Capture, reference: Capture, writer: TraceWriter) -> dict[str, Any]:
    """`parity.runner._replay_all`, each call's outputs written out as soon as they exist."""
    out: dict[str, dict[str, Recorded] | str] = {}
    for key, ref_call in reference.calls.items():
        call = own.calls.get(key)
        if call is None:
            continue
        try:
            out[key] = writer.put_outputs(side.replay(call, ref_call))
        except Exception as err:  # a module that cannot take the reference's inputs is a finding
            out[key] = f"replay failed: {type(err).__name__}: {err}"
    return out


def _capture(side, case: Case, inputs, keep, sink: _Sink) -> Capture:
    capture = side.capture(case, inputs, keep, sink)
    capture.output = sink.writer.put_outputs(capture.output)
    return capture


def _inputs(case: Case, subjects: Mapping[str, Subject], seed: int) -> dict[str, np.ndarray]:
    return case.make_inputs({n: subjects[n] for n in case.models}, np.random.default_rng(seed))


def _keep(case: Case):
    """Which calls keep their input values on a side other than the reference: the sampler steps'."""
    step = case.step_path
    return (lambda path: path == step) if step is not None else False


def _case_entry(case: Case, settings: Settings, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {
        "name": case.name,
        "covers": case.covers,
        "models": list(case.models),
        "step_path": case.step_path,
        "discrete": list(case.discrete),
        "inputs": {"seed": settings.seed, "fingerprint": input_digest(inputs)},
        "runs": {},
    }


def _header(side: str, lineup: Lineup, environment, layers: str | None, plan: Mapping[str, Any] | None):
    settings = lineup.settings
    return {
        "side": side,
        "framework": {
            "name": side,
            "versions": environment["versions"],
            "platform": environment["platform"],
            "device": settings.device if side == TORCH else environment["jax"]["devices"],
        },
        "environment": environment,
        "settings": {
            "precision": name_of(settings.precision),
            "numerics": [] if settings.is_fp32 else settings.variants,
            "natural": [list(pair) for pair in settings.natural],
            "modes": list(settings.modes),
            "device": settings.device,
            "seed": settings.seed,
            "judge": settings.judge and name_of(settings.judge),
        },
        "subjects": {name: describe_subject(s) for name, s in lineup.subjects.items()},
        "weights": {name: fingerprint_arrays(flat) for name, flat in lineup.weights.items()},
        "trace_layers": layers,
        "plan": dict(plan or {}),
        "cases": [],
    }


def _failed(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"


def save_jax(
    subjects: Mapping[str, Subject],
    cases: list[Case],
    settings: Settings,
    directory: str | Path,
    *,
    weights: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    layers: str | None = None,
    plan: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Trace:
    """The JAX side of a run (reference, and each bf16 numerics with its isolated replays) as a trace."""
    from parity.environment import pinned

    keep_layer = matcher(layers)
    with pinned(settings.pins, settings.device) as environment:
        lineup = Lineup.build(subjects, settings, weights, frameworks=())  # the weights, no model yet
        settings = lineup.settings
        writer = TraceWriter(directory)
        sink = _Sink(writer, keep_layer)
        manifest = _header(JAX, lineup, environment, layers, plan)
        # One JAX model at a time: the reference through every case, then each bf16 run through every
        # case, replaying the reference's inputs from the trace.
        references: dict[str, Capture] = {}
        entries = {}
        lineup.reference = _jax_models(lineup, None)
        for case in cases:
            if progress:
                progress(f"jax reference: {case.name}")
            inputs = _inputs(case, subjects, settings.seed)
            entry = entries[case.name] = _case_entry(case, settings, inputs)
            manifest["cases"].append(entry)
            try:
                references[case.name] = _capture(lineup.reference_side(case), case, inputs, True, sink)
            except Exception as err:
                entry["runs"][REFERENCE] = {"error": _failed(err)}
                continue
            entry["runs"][REFERENCE] = encode_capture(references[case.name])
        lineup.reference = {}
        for variant in [] if settings.is_fp32 else settings.variants:
            gc.collect()
            lineup.jax = {variant: _jax_models(lineup, variant)}
            role = jax_role(variant)
            for case in (c for c in cases if c.name in references):
                if progress:
                    progress(f"jax {variant}: {case.name}")
                side = lineup.jax_sides(case)[variant]
                runs = entries[case.name]["runs"]
                try:
                    own = _capture(side, case, _inputs(case, subjects, settings.seed), _keep(case), sink)
                except Exception as err:
                    runs[role] = {"error": _failed(err)}
                    continue
                runs[role] = encode_capture(own)
                if "isolated" in settings.modes:
                    replays = _replays(side, own, references[case.name], writer)
                    runs[role]["isolated"] = encode_replays(replays)
            lineup.jax = {}
        writer.finish(manifest)
    return Trace(directory)


def _jax_models(lineup: Lineup, variant: str | None) -> dict[str, Any]:
    """Every subject's JAX model holding the run's weights: the fp32 reference, or a bf16 `variant`."""
    import jax.numpy as jnp

    from parity.transfer import jax_model

    dtype = jnp.float32 if variant is None else jnp.bfloat16
    return {name: jax_model(s, lineup.weights[name], dtype, variant) for name, s in lineup.subjects.items()}


def check_same(reference: Trace, torch_manifest: Mapping[str, Any], where: str) -> None:
    """Refuse, in one line naming the fingerprints, a reference trace of other weights or inputs."""
    for name, mine in torch_manifest["weights"].items():
        theirs = reference.manifest["weights"].get(name)
        if theirs is not None and theirs != mine:
            raise TraceError(
                f"traces disagree on the weights of {name}: {reference.name} ({reference.side}) {theirs} "
                f"vs {where} (torch) {mine}"
            )


def save_torch(
    subjects: Mapping[str, Subject],
    cases: list[Case],
    settings: Settings,
    directory: str | Path,
    *,
    weights: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    torch_models: Mapping[str, Any] | None = None,
    reference: Trace | None = None,
    layers: str | None = None,
    plan: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Trace:
    """The torch side of a run as a trace; given the JAX side's `reference` trace, isolated replays too."""
    from parity.environment import pinned

    keep_layer = matcher(layers)
    with pinned(settings.pins, settings.device) as environment:
        lineup = Lineup.build(subjects, settings, weights, torch_models, frameworks=(TORCH,))
        manifest = _header(TORCH, lineup, environment, layers, plan)
        if reference is not None:
            check_same(reference, manifest, str(directory))
            manifest["reference_trace"] = reference.id
        writer = TraceWriter(directory)
        sink = _Sink(writer, keep_layer)
        role = torch_role(settings.precision)
        for case in cases:
            if progress:
                progress(f"torch: {case.name}")
            inputs = _inputs(case, subjects, settings.seed)
            entry = _case_entry(case, settings, inputs)
            manifest["cases"].append(entry)
            keep = _keep(case)
            side = lineup.torch_side(case)
            try:
                own = _capture(side, case, inputs, keep, sink)
            except Exception as err:
                entry["runs"][role] = {"error": _failed(err)}
                continue
            entry["runs"][role] = encode_capture(own)
            ref_run = _reference_run(reference, entry) if "isolated" in settings.modes else None
            if ref_run is not None and ref_run.capture is not None:
                entry["runs"][role]["isolated"] = encode_replays(_replays(side, own, ref_run.capture, writer))
        writer.finish(manifest)
    return Trace(directory)


def _reference_run(reference: Trace | None, entry: Mapping[str, Any]):
    if reference is None or REFERENCE not in reference.roles(entry["name"]):
        return None
    theirs = reference.cases[entry["name"]]["inputs"]["fingerprint"]
    if theirs != entry["inputs"]["fingerprint"]:
        raise TraceError(
            f"traces disagree on the inputs of {entry['name']}: {reference.name} {theirs} "
            f"vs this run {entry['inputs']['fingerprint']}"
        )
    return reference.run(entry["name"], REFERENCE)


def save_both(
    subjects: Mapping[str, Subject],
    cases: list[Case],
    settings: Settings,
    directory: str | Path,
    *,
    weights=None,
    torch_models=None,
    layers: str | None = None,
    plan: Mapping[str, Any] | None = None,
    progress=None,
) -> tuple[Trace, Trace]:
    """`directory/jax` then `directory/torch`, one framework's models alive at a time."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=False)
    jax_trace = save_jax(
        subjects,
        cases,
        settings,
        directory / JAX,
        weights=weights,
        layers=layers,
        plan=plan,
        progress=progress,
    )
    gc.collect()
    torch_trace = save_torch(
        subjects,
        cases,
        settings,
        directory / TORCH,
        weights=weights,
        torch_models=torch_models,
        reference=jax_trace,
        layers=layers,
        plan=plan,
        progress=progress,
    )
    return jax_trace, torch_trace
