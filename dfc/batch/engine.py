"""Running a many-video job: one coordinator that owns the ledger, and workers that each do one video at a
time, in this process, in `--workers N` local processes, or in every rank of a `torchrun` launch.

The coordinator is the one source of truth. Workers write a video's outputs into a staging folder
(`OUT/.dfc-staging/t<ticket>-<worker>/`) and report; the coordinator moves them into place, then appends
the ledger line. A video is finished when, and only when, its line is in the ledger.

Across processes, work goes through torch.distributed's TCPStore (a key-value store served by the
coordinator, or by torchrun's agent; it outlives any worker, unlike collectives): tickets from an
atomic counter hand each video to exactly one worker; every worker bumps a heartbeat counter each
second; a ticket whose worker's heartbeat stops for `--lease` seconds (or whose local process has
exited) is abandoned and its video handed out again, and a late result of an abandoned ticket is
thrown away, so no video is recorded twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from dfc.batch.inputs import Task
from dfc.batch.ledger import LEDGER_NAME, STAGING_NAME, Ledger, input_stamp
from dfc.errors import UserError
from dfc.outputs import check_writable

STAGING = STAGING_NAME
HEARTBEAT_S = 1.0
POLL_S = 0.2
DEFAULT_LEASE_S = 60.0


class Job(Protocol):
    """What one video means for a command (`dfc/commands/compress.py`, `dfc/commands/evaluate.py`)."""

    command: str

    def out(self, args) -> Path: ...
    def settings(self, args) -> dict[str, Any]: ...
    def setup(self, args, device: str, threads: int | None) -> Any: ...
    def run(self, state, task: Task, staging: Path, on_frames: Callable[[int], None]) -> dict[str, Any]: ...
    def finish(self, out: Path, tasks: list[Task], ledger: Ledger, args) -> None: ...


def add_batch_arguments(parser) -> None:
    """The options of a many-video run (a folder, glob or manifest as input)."""
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="many videos: N worker processes on this machine, each with its share of the CPU threads "
        "(or its own GPU). Across machines, launch the same command with torchrun (see README). Default: 1",
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=DEFAULT_LEASE_S,
        metavar="S",
        help=f"many videos: a worker silent this many seconds is presumed dead and its video handed to "
        f"another (default: {DEFAULT_LEASE_S:g})",
    )


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def run_task(job: Job, state, task: Task, staging: Path, on_frames: Callable[[int], None]) -> dict[str, Any]:
    """One video, its outputs in `staging`; a bad video is a "failed" record, never an exception."""
    started = time.monotonic()
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        record: dict[str, Any] = {"status": "done", **job.run(state, task, staging, on_frames)}
    except UserError as err:
        record = {"status": "failed", "error": str(err)}
    except Exception as err:  # noqa: BLE001 - one broken video must not stop the others
        record = {"status": "failed", "error": f"{type(err).__name__}: {_first_line(err)}"}
    record["seconds"] = round(time.monotonic() - started, 3)
    record["worker"] = worker_name()
    return record


# ------------------------------------------------------------------------------------------ coordinator


class Coordinator:
    """Owns the ledger and the output folder; counts videos and frames on a progress bar."""

    def __init__(self, job: Job, args, tasks: list[Task], workers: int):
        self.job, self.args, self.tasks, self.workers = job, args, tasks, workers
        self.out = job.out(args)
        check_writable(
            self.out, "--out ", is_folder=True
        )  # a read-only folder is one line now, not after the work
        self.ledger = Ledger.open(self.out, job.command, job.settings(args), force=args.force)
        self.stamps = {t.id: input_stamp(t.input) for t in tasks}
        self.todo = [t for t in tasks if not self.ledger.is_finished(t.input, self.stamps[t.id])]
        self.skipped = len(tasks) - len(self.todo)
        self.workers = min(workers, max(1, len(self.todo)))
        self.staging = self.out / STAGING
        shutil.rmtree(self.staging, ignore_errors=True)  # what an interrupted run was writing
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=len(tasks),
            initial=self.skipped,
            unit="video",
            desc=f"dfc {job.command}",
            disable=args.quiet,
            dynamic_ncols=True,
        )
        self.frames = 0
        self.started = time.monotonic()
        self.finished_now: list[dict[str, Any]] = []

    def stage_dir(self, ticket: int, worker: str) -> Path:
        return self.staging / f"t{ticket}-{worker}"

    def add_frames(self, count: int) -> None:
        self.set_frames(self.frames + count)

    def set_frames(self, frames: int) -> None:
        if frames != self.frames:
            self.frames = frames
            rate = frames / max(time.monotonic() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{frames:,} frames, {rate:.1f} frames/s", refresh=True)

    def publish(self, task: Task, staging: Path, record: dict[str, Any]) -> None:
        """Outputs into place, then the ledger line: a video is finished once that line is written."""
        if record["status"] == "done":
            for rel in record.get("outputs", []):
                target = self.out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rel, target)
        full = {"status": record["status"], "input": task.input, "name": task.name, **self.stamps[task.id]}
        full |= {k: v for k, v in record.items() if k != "status"}
        self.ledger.append(full)
        shutil.rmtree(staging, ignore_errors=True)
        self.finished_now.append(full)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        self.ledger.close()
        shutil.rmtree(self.staging, ignore_errors=True)

    def summary(self) -> int:
        """The closing lines; exit status 1 when any video of this job is failed."""
        latest = self.ledger.latest()
        failed = [t for t in self.tasks if latest.get(t.input, {}).get("status") == "failed"]
        done_now = [r for r in self.finished_now if r["status"] == "done"]
        seconds = time.monotonic() - self.started
        frames = sum(r.get("frames", 0) for r in done_now)
        earlier = f" ({self.skipped} finished earlier, skipped)" if self.skipped else ""
        print(f"videos   {len(self.tasks)}{earlier}")
        workers = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        print(
            f"done     {len(done_now)} now: {frames:,} frames in {seconds:.1f} s "
            f"({frames / max(seconds, 1e-9):.1f} frames/s, {workers})"
        )
        for task in failed:
            print(f"failed   {task.name}: {latest[task.input].get('error')}")
        print(f"ledger   {self.out / LEDGER_NAME}")
        return 1 if failed else 0


# ------------------------------------------------------------------------------------------------ entry


def distributed_launch() -> bool:
    """Started by torchrun (or any env:// launcher) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def run_batch(job: Job, args, tasks: list[Task]) -> int:
    """Run `job` over `tasks`; returns the exit status (0 all done, 1 some failed)."""
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.lease <= 3 * HEARTBEAT_S:
        raise UserError(f"--lease must be more than {3 * HEARTBEAT_S:g} seconds, got {args.lease:g}")
    _stop.clear()
    previous = {how: signal.signal(how, _interrupt) for how in (signal.SIGINT, signal.SIGTERM)}
    try:
        if distributed_launch():
            return _run_distributed(job, args, tasks)
        coordinator = Coordinator(job, args, tasks, args.workers)
        try:
            if coordinator.todo and coordinator.workers > 1:
                _run_local_workers(coordinator, job, args)
            elif coordinator.todo:
                _run_here(coordinator, job, args)
        except KeyboardInterrupt:
            done = sum(1 for t in tasks if coordinator.ledger.is_finished(t.input, coordinator.stamps[t.id]))
            coordinator.close()
            print(
                f"dfc {job.command}: {done} of {len(tasks)} videos finished; the same command resumes",
                file=sys.stderr,
            )
            raise
        finally:
            coordinator.close()
        job.finish(coordinator.out, tasks, coordinator.ledger, args)
        return coordinator.summary()
    finally:
        for how, handler in previous.items():
            signal.signal(how, handler)


_stop = threading.Event()


def _interrupt(signum, frame) -> None:
    """Ctrl-C or SIGTERM. The exception can be swallowed when the signal lands in a callback that
    ignores exceptions (logging's at-fork hook while ffmpeg is started), so the flag is checked again
    between clips and videos."""
    _stop.set()
    raise KeyboardInterrupt


def check_stop() -> None:
    if _stop.is_set():
        raise KeyboardInterrupt


def _run_here(coordinator: Coordinator, job: Job, args) -> None:
    state = job.setup(args, args.device, None)
    name = worker_name()

    def on_frames(count: int) -> None:
        check_stop()
        coordinator.add_frames(count)

    for ticket, task in enumerate(coordinator.todo):
        check_stop()
        staging = coordinator.stage_dir(ticket, name)
        record = run_task(job, state, task, staging, on_frames)
        check_stop()  # a video cut short by an interrupt is not a failed video
        coordinator.publish(task, staging, record)


# ---------------------------------------------------------------------------------- the store protocol


def serve(coordinator: Coordinator, store, lease_s: float, processes: dict[int, subprocess.Popen] | None):
    """Hand out the coordinator's videos through `store` until each is recorded; `processes`: local
    worker processes by pid, whose exit is noticed at once instead of after the lease."""
    host = socket.gethostname()
    tickets: dict[int, Task] = {}
    for task in coordinator.todo:
        store.set(f"ticket/{len(tickets)}", task.to_json())
        tickets[len(tickets)] = task
    open_tickets = set(tickets)
    unseen_since: dict[int, float] = {}
    beats: dict[str, tuple[int, float]] = {}
    remaining = len(coordinator.todo)
    store.set("ready", "1")
    while remaining:
        check_stop()
        if store.check(["fatal"]):
            raise UserError(store.get("fatal").decode())
        coordinator.set_frames(store.add("frames", 0))
        handed = store.add("next", 0)
        now = time.monotonic()
        for ticket in sorted(open_tickets):
            if ticket >= handed:
                break
            if store.check([f"result/{ticket}"]):
                record = json.loads(store.get(f"result/{ticket}"))
                open_tickets.discard(ticket)
                staging = coordinator.stage_dir(ticket, record["worker"])
                coordinator.publish(tickets[ticket], staging, record)
                remaining -= 1
                continue
            lost = None
            if store.check([f"holder/{ticket}"]):
                worker = store.get(f"holder/{ticket}").decode()
                beat = store.add(f"beat/{worker}", 0)
                if beats.get(worker, (None,))[0] != beat:
                    beats[worker] = (beat, now)
                pid = int(worker.rsplit("-", 1)[1]) if worker.startswith(f"{host}-") else None
                if processes is not None and pid in processes and processes[pid].poll() is not None:
                    lost = f"worker {worker} exited (status {processes[pid].returncode})"
                elif now - beats[worker][1] > lease_s:
                    lost = f"worker {worker} sent no heartbeat for {lease_s:g} s"
            elif now - unseen_since.setdefault(ticket, now) > lease_s:
                lost = f"the worker that took ticket {ticket} never started it"
            if lost:
                store.set(f"abandoned/{ticket}", "1")
                open_tickets.discard(ticket)
                task = tickets[ticket]
                new = len(tickets)
                tickets[new] = task
                store.set(f"ticket/{new}", task.to_json())
                open_tickets.add(new)
                message = f"dfc {coordinator.job.command}: {lost}; {task.name} handed out again"
                coordinator.bar.write(message, file=sys.stderr)
        if processes is not None and all(p.poll() is not None for p in processes.values()) and remaining:
            codes = sorted({p.returncode for p in processes.values()})
            raise UserError(
                f"every worker exited (status {', '.join(map(str, codes))}) before the job finished"
            )
        time.sleep(POLL_S)
    store.set("closed", "1")


def work_from_store(store, job: Job, args, device: str, threads: int | None) -> None:
    """A worker: take tickets until the coordinator closes the job. A `UserError` while setting up
    (weights that do not load, a bad option) stops the whole job: it is reported as "fatal"."""
    while not store.check(["ready"]):
        if store.check(["fatal"]):
            raise UserError(store.get("fatal").decode())
        time.sleep(POLL_S)
    try:
        state = job.setup(args, device, threads)
    except UserError as err:
        store.set("fatal", str(err))
        raise
    except Exception as err:  # noqa: BLE001 - any failure to start stops the job with one line
        message = f"a worker could not start ({type(err).__name__}: {_first_line(err)})"
        store.set("fatal", message)
        raise UserError(message) from None
    name = worker_name()
    stop = threading.Event()
    beat_store = store.clone()
    heartbeat = threading.Thread(target=_heartbeat, args=(beat_store, f"beat/{name}", stop), daemon=True)
    heartbeat.start()
    out = job.out(args)
    try:
        while True:
            ticket = store.add("next", 1) - 1
            while not store.check([f"ticket/{ticket}"]):
                if store.check(["closed"]) or store.check(["fatal"]):
                    return
                time.sleep(POLL_S)
            store.set(f"holder/{ticket}", name)
            task = Task.from_json(store.get(f"ticket/{ticket}"))
            staging = out / STAGING / f"t{ticket}-{name}"
            on_frames = lambda n: store.add("frames", n)  # noqa: E731
            record = run_task(job, state, task, staging, on_frames)
            if store.check([f"abandoned/{ticket}"]):
                shutil.rmtree(staging, ignore_errors=True)
                continue
            store.set(f"result/{ticket}", json.dumps(record, allow_nan=True))
    finally:
        stop.set()


def _heartbeat(store, key: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            store.add(key, 1)
        except Exception:  # noqa: BLE001 - the coordinator is gone; the worker notices on its next call
            return
        stop.wait(HEARTBEAT_S)


def worker_device(requested: str, index: int) -> str:
    """`--device auto/cuda` with GPUs: worker `index` gets GPU `index % count`; otherwise as requested."""
    import torch

    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{index % torch.cuda.device_count()}"
    return requested


# ------------------------------------------------------------------------------- --workers N (one host)


def _run_local_workers(coordinator: Coordinator, job: Job, args) -> None:
    from torch.distributed import TCPStore

    count = coordinator.workers
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=120))
    store.set("job", json.dumps({"command": job.command, "args": vars(args)}))
    threads = max(1, (os.cpu_count() or 1) // count)
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    processes: dict[int, subprocess.Popen] = {}
    try:
        for index in range(count):
            command = [
                sys.executable,
                "-m",
                "dfc.batch.worker",
                f"127.0.0.1:{store.port}",
                str(index),
                str(count),
            ]
            process = subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL)
            processes[process.pid] = process
        serve(coordinator, store, args.lease, processes)
    except BaseException:
        for process in processes.values():
            process.terminate()  # interrupted or failed: the workers stop now, not after their video
        raise
    finally:
        store.set("closed", "1")
        deadline = time.monotonic() + 10
        for process in processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ------------------------------------------------------------------------------------ torchrun (hosts)


def _run_distributed(job: Job, args, tasks: list[Task]) -> int:
    """Every rank works; rank 0 also coordinates, in a thread. Inputs and the output folder must be at
    the same path on every machine (a shared file system)."""
    import torch.distributed as dist

    base, rank, world = next(dist.rendezvous("env://"))
    base.set_timeout(timedelta(seconds=max(120.0, args.lease * 2)))
    store = dist.PrefixStore(f"dfc/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", base)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = max(1, (os.cpu_count() or 1) // local_world)
    device = worker_device(args.device, local_rank)
    if rank != 0:
        work_from_store(store, job, args, device, threads)
        return 0
    outcome: dict[str, Any] = {}

    def coordinate() -> None:
        try:
            coordinator = Coordinator(job, args, tasks, world)
            outcome["coordinator"] = coordinator
            serve(coordinator, store, args.lease, None)
            coordinator.close()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = err
            store.set("fatal", str(err) if isinstance(err, UserError) else f"coordinator: {_first_line(err)}")

    thread = threading.Thread(target=coordinate, name="dfc-coordinator", daemon=True)
    thread.start()
    try:
        work_from_store(store, job, args, device, threads)
    except UserError:
        if "error" not in outcome:
            raise
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    coordinator = outcome["coordinator"]
    job.finish(coordinator.out, tasks, coordinator.ledger, args)
    return coordinator.summary()
