"""`python -m bench.gpu_check`: run the stages in priority order under one time budget.

Exit status: 0 when every stage ran (its verdicts are in the summary), 1 when a stage crashed,
2 when the preflight found something missing (one line on stderr, nothing computed).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bench.gpu_check import STAGES

REPO = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="torch device (JAX follows it)")
    p.add_argument(
        "--config",
        choices=("published", "tiny"),
        default=None,
        help="model sizes (default: published on cuda, tiny on cpu)",
    )
    p.add_argument(
        "--only",
        default=None,
        help=f"comma-separated stages of {','.join(STAGES)} (the preflight always runs)",
    )
    p.add_argument("--out", type=Path, default=REPO / "reports" / "gpu-check", help="the output folder")
    p.add_argument(
        "--archive-dir",
        type=Path,
        default=None,
        help="where the archive and the summary go (default: the output folder; $OUT on a lent GPU)",
    )
    p.add_argument("--budget-s", type=float, default=None, help="time budget of the whole run (cuda: 300)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the device command line and the wheels to carry; runs nothing",
    )
    p.add_argument(
        "--fetch",
        nargs="*",
        default=None,
        metavar="DIST",
        help="with --dry-run: download the missing wheels (and these) into .whl",
    )
    return p


def _environment(device: str) -> str | None:
    """Before jax is imported: no preallocation; JAX on the CPU only when asked. Returns a note."""
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    note = None
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    elif os.environ.get("JAX_PLATFORMS", "") == "cpu":
        del os.environ["JAX_PLATFORMS"]  # the Makefile's CPU default must not put a GPU run on the CPU
        note = "JAX_PLATFORMS=cpu was set and has been removed for this cuda run"
    return note


@dataclass
class Context:
    plan: object
    clock: object
    output: object
    index: int = 0
    name: str = ""
    folder: Path = Path(".")
    cache: dict = field(default_factory=dict)
    started: float = 0.0

    def allows(self, seconds: float) -> bool:
        """Whether `seconds` more fit both the run's budget and this stage's share of it (a stage may
        use up to its share counted from its own start, so time an earlier stage left goes to later ones)."""
        share = SHARES.get(self.name, 1.0) * self.clock.budget_s
        stage_left = self.started + share - time.monotonic()
        return self.clock.allows(seconds) and stage_left >= seconds

    def log(self, message: str) -> None:
        print(f"[gpu-check {self.clock.elapsed():6.1f}s] {self.name}: {message}", flush=True)

    def partial(self, data: dict, markdown: str, verdict: str) -> None:
        """What a stage has so far, written and packed now (a run cut short keeps it)."""
        from bench.gpu_check.output import StageResult

        seconds = time.monotonic() - self.started
        self.output.record(self.index, StageResult(self.name, "partial", seconds, data, markdown, verdict))


def _stage_runner(name: str):
    if name == "parity":
        from bench.gpu_check import parity_stage

        return parity_stage.run
    if name == "sdpa":
        from bench.gpu_check import sdpa

        return sdpa.run
    if name == "discrete":
        from bench.gpu_check import discrete

        return discrete.run
    from bench.gpu_check import speed

    return speed.run


MIN_STAGE_S = 15.0  # a stage is not started with less left than this
# the most of the run's budget each stage may take, so that one slow stage cannot starve every later one
SHARES = {"parity": 0.5, "sdpa": 0.15, "discrete": 0.12, "bench": 1.0}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = args.config or ("published" if args.device == "cuda" else "tiny")
    if args.dry_run:
        from bench.gpu_check import carry

        return carry.main(args.device, config, args.fetch)
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else list(STAGES)
    unknown = sorted(set(only) - set(STAGES))
    if unknown:
        print(
            f"gpu-check: error: --only: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}",
            file=sys.stderr,
        )
        return 2
    note = _environment(args.device)

    from bench.gpu_check import preflight
    from bench.gpu_check.output import Output, StageResult
    from bench.gpu_check.plan import Clock, make_plan

    plan = make_plan(args.device, config, args.budget_s)
    clock = Clock(plan.budget_s)
    command = shlex.join(["python", "-m", "bench.gpu_check", *(argv if argv is not None else sys.argv[1:])])
    header = {
        "command": command,
        "device": plan.device,
        "config": plan.config,
        "note": note,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    output = Output(args.out, args.archive_dir, header)
    ctx = Context(plan, clock, output)
    print(f"[gpu-check] {command}; output {args.out}; budget {plan.budget_s:.0f} s", flush=True)
    if note:
        print(f"[gpu-check] {note}", flush=True)

    result, line = preflight.run(plan)
    result.seconds = clock.elapsed()
    output.header["machine"] = result.verdict
    output.record(1, result)
    if line:
        print(line, file=sys.stderr, flush=True)
        return 2
    print(f"[gpu-check {clock.elapsed():6.1f}s] preflight: {result.verdict}", flush=True)

    crashed = False
    for index, name in enumerate(STAGES, start=1):
        if name == "preflight" or name not in only:
            continue
        ctx.index, ctx.name, ctx.folder = index, name, output.stage_dir(index, name)
        ctx.started, cpu = time.monotonic(), time.process_time()
        if not clock.allows(MIN_STAGE_S):
            output.record(index, StageResult(name, "skipped", verdict="skipped: time budget spent"))
            print(f"[gpu-check {clock.elapsed():6.1f}s] {name}: skipped (time budget)", flush=True)
            continue
        ctx.log("start")
        try:
            result = _stage_runner(name)(ctx)
        except Exception as err:
            crashed = True
            first = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            result = StageResult(
                name, "error", data={"traceback": traceback.format_exc()}, verdict=f"error: {first}"
            )
            print(f"gpu-check: {name}: error: {first}", file=sys.stderr, flush=True)
        result.seconds = time.monotonic() - ctx.started
        result.data["cpu_seconds"] = round(time.process_time() - cpu, 1)  # steadier than wall time here
        output.record(index, result)
        ctx.log(f"{result.status} in {result.seconds:.1f} s: {result.verdict}")
    archive = output.flush()
    print(f"[gpu-check {clock.elapsed():6.1f}s] done; archive {archive}", flush=True)
    return 1 if crashed else 0
