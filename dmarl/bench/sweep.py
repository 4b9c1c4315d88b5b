"""Run every cell of a benchmark as a nested MLflow run, on a local process pool or on Ray.

One parent run per benchmark and experiment (reused when the sweep is re-run) and one nested
run per cell, tagged ``dmarl.cell = <algorithm>|<task>|<seed>``. Re-running skips FINISHED
cells, resumes interrupted ones (RUNNING or KILLED) from their checkpoint through
``resume_run_id`` (or trains them again when they left none), and leaves FAILED ones alone
unless asked to retry them. Every cell trains in a fresh process (gin is global state),
forked from a fork server that imported torch, MLflow and the registry once
(:func:`worker_context`); a cell that raises or whose process dies is marked FAILED with its reason in the
``dmarl.failure_reason`` tag, and the other cells go on.

Reliability rules:

* A cell run carries the hash of its resolved configuration (tag ``dmarl.cell.config_sha``,
  see :mod:`dmarl.bench.spec`). A re-run whose cell hash differs from a finished or
  interrupted run of that cell is refused (one error listing cells, old and new hash), so one
  leaderboard row never mixes configurations. Runs made before this tag existed (only the
  path-based ``dmarl.cell.config_hash``) are not compared.
* One driver per benchmark and store (:mod:`dmarl.bench.locks`); each worker claims its cell
  for as long as it trains it.
* Cells die with their driver: a local worker asks the kernel for SIGTERM when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``, Linux) and a watchdog thread in it exits the process
  ``ORPHAN_GRACE_S`` seconds after it notices it was orphaned (any OS). SIGTERM of the driver
  stops its workers (SIGTERM, then SIGKILL after ``STOP_GRACE_S``), marks their runs and
  the parent run KILLED, and exits; a re-run resumes them.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.forkserver
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TextIO

from dmarl import __version__
from dmarl.bench import locks
from dmarl.bench.cell_output import cell_log_path, redirect_cell_output
from dmarl.bench.spec import Benchmark, Cell, describe, expand
from dmarl.errors import UserError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

TrainFn = Callable[..., Any]  # the signature of dmarl.train.run_training

CELL_TAG = "dmarl.cell"
HASH_TAG = "dmarl.cell.config_sha"  # SHA-256 of the cell's resolved config (spec.expand)
LEGACY_HASH_TAG = "dmarl.cell.config_hash"  # before 2026-12: files' paths + bindings only
ATTEMPT_TAG = "dmarl.bench.attempt"
ROLE_TAG = "dmarl.bench.role"
BENCH_TAG = "dmarl.bench"
FAILURE_TAG = "dmarl.failure_reason"  # the tag dmarl.train sets on a failed run
RUN_DIR_TAG = "dmarl.run_dir"  # dmarl.train: the run's checkpoint directory
CHECKPOINT_FILE = "checkpoint.pt"  # dmarl.runners.checkpoint.CHECKPOINT_FILE
ALGORITHM_TAG = "dmarl.bench.algorithm"
TASK_TAG = "dmarl.bench.task"
SEED_TAG = "dmarl.bench.seed"
COMPARISON_TAG = "dmarl.bench.comparison"
WALL_TAG = "dmarl.bench.wall_s"  # seconds a cell took, process start included
SPEC_ARTIFACT = "benchmark.json"
INTERRUPTED = ("RUNNING", "SCHEDULED", "KILLED")
RUN_ACTIONS = ("run", "resume", "restart")
_MAX_TAG = 4000
ORPHAN_GRACE_S = 10.0  # an orphaned worker that ignored SIGTERM exits this long after
STOP_GRACE_S = 10.0  # the driver's SIGTERM -> SIGKILL grace for its workers
_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """The driver received SIGTERM (handled like an interrupt: runs are marked KILLED)."""


def resolve_tracking_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
    (:func:`dmarl.tracking.resolve_tracking_uri`), with a relative sqlite path or directory
    made absolute so that every worker process writes to the same store."""
    from dmarl.tracking import resolve_tracking_uri as default_uri

    uri = default_uri(uri)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    if "://" not in uri:  # a plain directory: MLflow's file store
        return Path(uri).resolve().as_uri()
    return uri


def store_exists(uri: str) -> bool:
    """False for a local sqlite file or file store that has not been created yet."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).exists()
    if uri.startswith("file://"):
        return Path(uri[len("file://"):]).exists()
    return True


@dataclass(frozen=True)
class CellTask:
    """What a worker process needs to train one cell (picklable)."""

    cell: Cell
    tracking_uri: str
    experiment: str
    parent_run_id: str
    attempt: str
    tags: dict[str, str]
    resume_run_id: str | None = None
    threads: int = 1
    train_fn: TrainFn | None = None
    claim_timeout: float = 30.0  # how long to wait for another process's claim on the cell
    log_path: str | None = None  # local workers: the cell's output log; its progress goes to the driver


@dataclass(frozen=True)
class CellOutcome:
    """How one cell ended: the run's id and status, or the error that stopped it."""

    key: str
    status: str
    run_id: str | None = None
    final_score: float | None = None
    error: str | None = None
    details: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class PlannedCell:
    """A cell with what the sweep does with it: ``done`` or ``failed`` (skipped), ``resume``
    (an interrupted run with a checkpoint), ``restart`` (an interrupted run without one:
    trained again as a new run) or ``run``."""

    cell: Cell
    action: str
    run_id: str | None = None
    estimate_s: float | None = None


@dataclass
class SweepResult:
    """What a sweep did: its parent run and the outcome of every cell it ran."""

    experiment: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    plan: list[PlannedCell]
    outcomes: list[CellOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status != "FINISHED"]


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _limit_threads(threads: int) -> None:
    for var in THREAD_VARS:
        os.environ.setdefault(var, str(threads))


def execute_cell(task: CellTask) -> CellOutcome:
    """Train one cell (in a fresh worker process); never raises."""
    _limit_threads(task.threads)
    start = time.monotonic()
    claim = None
    try:
        claim = locks.cell_claim(task.tracking_uri, task.experiment, task.cell.key, task.claim_timeout)
    except locks.LockUnavailable:
        pass  # no local lock directory (e.g. a Ray worker on another machine): train unclaimed
    except locks.LockBusy as err:
        return CellOutcome(key=task.cell.key, status="FAILED", run_id=task.resume_run_id, error=str(err))
    try:
        train = task.train_fn
        if train is None:
            from dmarl.train import run_training as train
        result = train(
            list(task.cell.config_files),
            list(task.cell.bindings),
            tracking_uri=task.tracking_uri,
            experiment=task.experiment,
            resume_run_id=task.resume_run_id,
            parent_run_id=task.parent_run_id,
            run_name=task.cell.run_name,
            tags=task.tags,
            progress=task.log_path is not None,
        )
    except Exception as err:  # a crashing cell must not stop the others
        return CellOutcome(
            key=task.cell.key,
            status="FAILED",
            run_id=task.resume_run_id,
            error=f"{type(err).__name__}: {err}",
            details=traceback.format_exc(),
            seconds=time.monotonic() - start,
        )
    finally:
        if claim is not None:
            claim.release()
    score = result.final_score
    return CellOutcome(
        key=task.cell.key,
        status=str(result.status),
        run_id=result.run_id,
        final_score=None if score is None else float(score),
        seconds=time.monotonic() - start,
    )


def die_with_parent(parent_pid: int, grace: float = ORPHAN_GRACE_S) -> None:
    """Make this process end when ``parent_pid`` (its parent) dies, however it dies.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``; everywhere: a daemon thread that polls the
    parent pid and ends the process ``grace`` s after it changed (if SIGTERM did not)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still applies
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(143)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        time.sleep(grace)
        os._exit(137)

    threading.Thread(target=watch, name="dmarl-orphan-watchdog", daemon=True).start()


def die_with_driver(conn: multiprocessing.connection.Connection, grace: float = ORPHAN_GRACE_S) -> None:
    """A forked cell's link to its driver, which is not its parent (the fork server is, and it
    outlives the driver while any cell runs): a daemon thread waits until the driver's end of
    the cell's result pipe closes (``POLLERR`` on this write end: the driver died, however it
    died), then sends this process SIGTERM, as ``PR_SET_PDEATHSIG`` does for a spawned cell,
    and ends it ``grace`` s later if SIGTERM did not."""
    import select

    poller = select.poll()
    poller.register(conn.fileno(), select.POLLERR | select.POLLHUP)

    def watch() -> None:
        events = 0
        while not events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
            events = sum(event for _, event in poller.poll(1000))
        if events & select.POLLNVAL:
            return  # the cell closed its own end: it sent its outcome and is ending
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(137)

    threading.Thread(target=watch, name="dmarl-driver-watchdog", daemon=True).start()


def _child_main(
    task: CellTask, conn: multiprocessing.connection.Connection, parent_pid: int, driver: dict[str, Any] | None = None
) -> None:
    """A cell's process. ``driver``: the driver's working directory and environment when the
    process was forked from the fork server (which has its own, from when it started); the
    cell then watches the driver through ``conn`` (`die_with_driver`)."""
    if driver is not None:
        os.chdir(driver["cwd"])
        os.environ.clear()
        os.environ.update(driver["environ"])
        die_with_driver(conn)
    die_with_parent(parent_pid if driver is None else os.getppid())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides what an interrupt does
    from tqdm import tqdm

    # one writer per cell: a thread lock, not tqdm's default multiprocessing lock (a named
    # semaphore per cell that the resource tracker reported as leaked when the driver exited)
    tqdm.set_lock(threading.RLock())
    if task.log_path is not None:
        redirect_cell_output(Path(task.log_path), conn)
    outcome = execute_cell(task)
    try:
        conn.send(outcome)
        conn.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the driver is gone; the run's state in MLflow says what happened


def _crashed(task: CellTask, reason: str, seconds: float = 0.0) -> CellOutcome:
    return CellOutcome(key=task.cell.key, status="FAILED", run_id=task.resume_run_id, error=reason, seconds=seconds)


WORKER_PRELOAD = "dmarl.bench.worker_preload"  # what the fork server imports once for every cell


def worker_context(threads: int) -> Any:
    """The multiprocessing context of local cells: a fork server that has imported torch,
    MLflow and the registry once (``WORKER_PRELOAD``; each cell is a fresh fork of it, so gin
    and every other global start clean), or ``spawn`` where the OS has no fork server. The
    server starts with ``threads`` as the BLAS/OpenMP thread count its imports read."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([WORKER_PRELOAD])
    saved = {var: os.environ.get(var) for var in THREAD_VARS}
    _limit_threads(threads)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    return ctx


class LocalPool:
    """At most ``workers`` cells at a time, each in its own process (``worker_context``); a
    cell's progress messages go to ``on_progress``."""

    def __init__(self, workers: int, on_progress: Callable[[CellTask, str], None] | None = None) -> None:
        self.workers = max(1, workers)
        self.on_progress = on_progress

    def run(
        self,
        tasks: Sequence[CellTask],
        on_start: Callable[[CellTask], None],
        on_done: Callable[[CellOutcome], None],
    ) -> None:
        if not tasks:
            return
        ctx = worker_context(tasks[0].threads)
        forked = ctx.get_start_method() == "forkserver"
        pending = list(tasks)
        running: dict[Any, tuple[Any, CellTask, float]] = {}
        try:
            while pending or running:
                while pending and len(running) < self.workers:
                    task = pending.pop(0)
                    receiver, sender = ctx.Pipe(duplex=False)
                    driver = {"cwd": os.getcwd(), "environ": dict(os.environ)} if forked else None
                    proc = ctx.Process(
                        target=_child_main, args=(task, sender, os.getpid(), driver), name=f"dmarl-cell {task.cell.key}"
                    )
                    proc.start()
                    sender.close()
                    running[receiver] = (proc, task, time.monotonic())
                    on_start(task)
                for receiver in multiprocessing.connection.wait(list(running)):
                    proc, task, started = running[receiver]
                    try:
                        outcome = receiver.recv()
                    except EOFError:
                        outcome = None
                    if isinstance(outcome, tuple) and outcome[0] == "progress":
                        if self.on_progress is not None:
                            self.on_progress(task, outcome[1])
                        continue
                    del running[receiver]
                    receiver.close()
                    proc.join()
                    if outcome is None:
                        outcome = _crashed(
                            task, f"worker process died (exit code {proc.exitcode})", time.monotonic() - started
                        )
                    on_done(outcome)
        finally:
            _stop([proc for proc, _, _ in running.values()])


def _stop(procs: Sequence[Any], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the processes, then SIGKILL those still alive after ``grace`` seconds."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


class RayPool:
    """One Ray task per cell (``max_calls=1``: a fresh worker process per cell)."""

    def __init__(self, address: str | None, cpus_per_cell: float = 1.0) -> None:
        self.address = address
        self.cpus_per_cell = cpus_per_cell

    def run(
        self,
        tasks: Sequence[CellTask],
        on_start: Callable[[CellTask], None],
        on_done: Callable[[CellOutcome], None],
    ) -> None:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, log_to_driver=False)
        remote = ray.remote(num_cpus=self.cpus_per_cell, max_calls=1, max_retries=0)(execute_cell)
        refs: dict[Any, tuple[CellTask, float]] = {}
        try:
            for task in tasks:
                refs[remote.remote(task)] = (task, time.monotonic())
                on_start(task)
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    task, submitted = refs.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        outcome = _crashed(task, f"ray task failed: {type(err).__name__}: {err}"[:_MAX_TAG],
                                           time.monotonic() - submitted)
                    on_done(outcome)
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()


def mlflow_client(uri: str) -> MlflowClient:
    """An MLflow client bound to ``uri`` (imported lazily: mlflow is slow to import)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def all_runs(client: MlflowClient, experiment_id: str, filter_string: str = "") -> list[Run]:
    """Every active run of an experiment (all result pages)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def cell_runs(client: MlflowClient, experiment_id: str) -> dict[str, list[Run]]:
    """Runs of an experiment by cell key, newest first."""
    by_key: dict[str, list[Run]] = {}
    for run in all_runs(client, experiment_id):
        key = run.data.tags.get(CELL_TAG)
        if key:
            by_key.setdefault(key, []).append(run)
    for runs in by_key.values():
        runs.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    return by_key


def _durations(existing: dict[str, list[Run]], cells: Iterable[Cell]) -> dict[tuple[str, str], float]:
    """Mean wall time of finished cells per (algorithm, task): the dry-run's estimate."""
    seconds: dict[tuple[str, str], list[float]] = {}
    for cell in cells:
        for run in existing.get(cell.key, []):
            if run.info.status != "FINISHED":
                continue
            if WALL_TAG in run.data.tags:
                wall = float(run.data.tags[WALL_TAG])
            elif run.info.end_time and run.info.start_time:
                wall = (run.info.end_time - run.info.start_time) / 1000.0
            else:
                continue
            seconds.setdefault((cell.algorithm, cell.task), []).append(wall)
    return {k: sum(v) / len(v) for k, v in seconds.items()}


def has_checkpoint(run: Run) -> bool:
    """Whether an interrupted run left a checkpoint that ``resume_run_id`` can continue from
    (checked on this machine: with a remote Ray cluster, a shared filesystem)."""
    run_dir = run.data.tags.get(RUN_DIR_TAG)
    return bool(run_dir) and (Path(run_dir) / CHECKPOINT_FILE).is_file()


def plan_cells(cells: Sequence[Cell], existing: dict[str, list[Run]], *, retry_failed: bool = False) -> list[PlannedCell]:
    """Decide, per cell, from the runs already in the experiment what the sweep does.

    Raises UserError when a cell has runs made with a different configuration.
    """
    durations = _durations(existing, cells)
    planned: list[PlannedCell] = []
    conflicts: list[str] = []
    for cell in cells:
        runs = existing.get(cell.key, [])
        finished = [r for r in runs if r.info.status == "FINISHED"]
        latest = finished[0] if finished else (runs[0] if runs else None)
        changed = [
            r for r in runs
            if (r.info.status == "FINISHED" or r.info.status in INTERRUPTED)
            and r.data.tags.get(HASH_TAG, cell.config_hash) != cell.config_hash
        ]
        if changed:
            old = ", ".join(sorted({f"{r.data.tags[HASH_TAG]} ({r.info.status.lower()} run {r.info.run_id})" for r in changed}))
            conflicts.append(f"  {cell.key}: now {cell.config_hash}, before {old}")
            continue
        estimate = durations.get((cell.algorithm, cell.task))
        if finished:
            planned.append(PlannedCell(cell, "done", finished[0].info.run_id, estimate))
        elif latest is not None and latest.info.status in INTERRUPTED:
            action = "resume" if has_checkpoint(latest) else "restart"
            planned.append(PlannedCell(cell, action, latest.info.run_id, estimate))
        elif latest is not None and not retry_failed:
            planned.append(PlannedCell(cell, "failed", latest.info.run_id, estimate))
        else:
            planned.append(PlannedCell(cell, "run", None, estimate))
    if conflicts:
        more = f"\n  ... and {len(conflicts) - 20} more" if len(conflicts) > 20 else ""
        raise UserError(
            f"{len(conflicts)} cell(s) already have finished or interrupted runs in this experiment made "
            f"with a different configuration (a value in their gin files or bindings changed; tag {HASH_TAG}):\n"
            + "\n".join(conflicts[:20]) + more + "\n"
            "Their seeds would land in one leaderboard row with mixed configurations. Either restore the "
            "old configuration, or run the changed benchmark into a new experiment (--experiment NAME or "
            "a new benchmark.name), or delete those runs from the store (mlflow runs delete --run-id ID)."
        )
    return planned


def _format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_plan(bench: Benchmark, planned: Sequence[PlannedCell], workers: int) -> str:
    """The dry-run listing: every cell, what happens to it, its budget, and the total cost."""
    lines = [f"benchmark {bench.name}: {len(planned)} cells"]
    width = max((len(p.cell.key) for p in planned), default=10)
    for p in planned:
        budget = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in p.cell.budget.items())
        budget += f" ({p.cell.budget_source})" if p.cell.budget_source else ""
        est = f"~{_format_seconds(p.estimate_s)}" if p.estimate_s is not None else "?"
        lines.append(f"  {p.cell.key:<{width}}  {p.action:<7} {est:>9}  {budget}")
    todo = [p for p in planned if p.action in RUN_ACTIONS]
    counts = {a: sum(p.action == a for p in planned) for a in ("done", "resume", "restart", "run", "failed")}
    lines.append(
        f"to run: {counts['run']} new, {counts['resume']} to resume from a checkpoint, {counts['restart']} "
        f"interrupted before one to restart; {counts['done']} finished and {counts['failed']} failed are skipped"
        + (" (--retry-failed runs them again)" if counts["failed"] else "")
    )
    totals: dict[str, float] = {}
    for p in todo:
        for name, value in p.cell.budget.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[name] = totals.get(name, 0) + value
    for name, total in totals.items():
        lines.append(f"cost: {name} = {total:,.0f} summed over the cells to run")
    known = [p.estimate_s for p in todo if p.estimate_s is not None]
    if todo:
        if known:
            wall = sum(known) / max(1, min(workers, len(todo)))
            unknown = len(todo) - len(known)
            note = f" ({unknown} cells without a finished run of their algorithm and task)" if unknown else ""
            lines.append(f"estimated wall time: ~{_format_seconds(wall)} on {workers} workers{note}")
        else:
            lines.append("estimated wall time: unknown until one cell of each algorithm and task has finished")
    return "\n".join(lines)


class Progress:
    """One line per cell started/finished, with counts, elapsed time and an ETA; every
    ``interval`` seconds, one status line per running cell (its env steps or updates, speed
    and latest evaluation return)."""

    def __init__(self, total: int, stream: TextIO, start_verb: str = "start", interval: float = 30.0) -> None:
        self.total, self.stream, self.start_verb, self.interval = total, stream, start_verb, interval
        self.done = 0
        self.failed = 0
        self.start = time.monotonic()
        self.last_status = self.start
        self.running: dict[str, str] = {}

    def update(self, task: CellTask, text: str) -> None:
        self.running[task.cell.key] = text
        now = time.monotonic()
        if now - self.last_status >= self.interval:
            self.last_status = now
            for key, status in self.running.items():
                print(f"[{self.done:>3}/{self.total}] running  {key}  {status}", file=self.stream, flush=True)

    def started(self, task: CellTask) -> None:
        verb = "resume" if task.resume_run_id else self.start_verb
        print(f"[{self.done:>3}/{self.total}] {verb:<8} {task.cell.key}", file=self.stream, flush=True)

    def finished(self, outcome: CellOutcome) -> None:
        self.running.pop(outcome.key, None)
        self.done += 1
        self.failed += outcome.status != "FINISHED"
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        score = f"  final {outcome.final_score:.4g}" if outcome.final_score is not None else ""
        reason = f"  ({outcome.error})" if outcome.error else ""
        print(
            f"[{self.done:>3}/{self.total}] {outcome.status.lower():<8} {outcome.key}{score}"
            f"  {_format_seconds(outcome.seconds)}{reason}  | elapsed {_format_seconds(elapsed)}"
            f"{f', eta {_format_seconds(eta)}' if self.done < self.total else ''}",
            file=self.stream,
            flush=True,
        )


def _parent_run(client: MlflowClient, experiment_id: str, bench: Benchmark, tags: dict[str, str]) -> str:
    """The benchmark's parent run in this experiment, reused when it exists."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'parent' and tags.`{BENCH_TAG}` = '{bench.name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(experiment_id, run_name=bench.name, tags={ROLE_TAG: "parent", BENCH_TAG: bench.name}).info.run_id
    for name, value in tags.items():
        client.set_tag(run_id, name, value)
    return run_id


def parent_description(bench: Benchmark, cells: list[Cell]) -> str:
    """The parent run's MLflow description (markdown): what the benchmark compares and where
    its leaderboard is (attached to this run as ``leaderboard/index.html`` once built)."""
    algorithms = sorted({c.algorithm for c in cells})
    tasks = sorted({c.task for c in cells})
    seeds = sorted({c.seed for c in cells})
    return (
        f"Benchmark **{bench.name}** (`{bench.source}`): {len(cells)} cells, algorithms {', '.join(algorithms)} "
        f"on {', '.join(tasks)}, seeds {', '.join(map(str, seeds))}. Each cell is a child run; compare them in the "
        "Chart view (metric `eval/return_mean`). The leaderboard is this run's artifact `leaderboard/index.html`; "
        f"rebuild it with `dmarl leaderboard --experiment {bench.name}`."
    )


def _cell_tags(bench: Benchmark, cell: Cell, attempt: str) -> dict[str, str]:
    return {
        BENCH_TAG: bench.name,
        CELL_TAG: cell.key,
        HASH_TAG: cell.config_hash,
        COMPARISON_TAG: cell.comparison,
        ALGORITHM_TAG: cell.algorithm,
        TASK_TAG: cell.task,
        SEED_TAG: str(cell.seed),
        ATTEMPT_TAG: attempt,
    }


def _attempt_run_id(client: MlflowClient, experiment_id: str, task: CellTask) -> str | None:
    if task.resume_run_id:
        return task.resume_run_id
    found = client.search_runs([experiment_id], filter_string=f"tags.`{ATTEMPT_TAG}` = '{task.attempt}'", max_results=1)
    return found[0].info.run_id if found else None


def _record_failure(client: MlflowClient, experiment_id: str, task: CellTask, outcome: CellOutcome) -> str:
    """Mark the cell's run FAILED with its reason (creating a run if training never made one)."""
    run_id = outcome.run_id or _attempt_run_id(client, experiment_id, task)
    if run_id is None:
        tags = dict(task.tags)
        tags["mlflow.parentRunId"] = task.parent_run_id
        run_id = client.create_run(experiment_id, run_name=task.cell.run_name, tags=tags).info.run_id
    run = client.get_run(run_id)
    reason = outcome.error or "training ended with status FAILED"
    if outcome.error or FAILURE_TAG not in run.data.tags:
        client.set_tag(run_id, FAILURE_TAG, reason[:_MAX_TAG])
    if outcome.details:
        client.log_text(run_id, outcome.details, "failure.txt")
    if run.info.status != "FAILED":
        client.set_terminated(run_id, status="FAILED")
    return run_id


_DATASET_BINDING = re.compile(r"^\s*run\.dataset\s*=\s*['\"]([^'\"]+)['\"]\s*$")


def prepare_generated_datasets(cells: list[Cell]) -> None:
    """Make the suite-generated datasets the cells name (e.g. ``toy/omsd_bandit``) once, in
    the driver, before any worker starts (workers then only read them)."""
    from dmarl.envs.datasets import GENERATED, resolve

    names = {m.group(1) for cell in cells for b in cell.bindings if (m := _DATASET_BINDING.match(b))}
    for name in sorted(names & set(GENERATED)):
        resolve(name)


def run_sweep(
    bench: Benchmark,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    cpus_per_cell: float = 1.0,
    retry_failed: bool = False,
    train_fn: TrainFn | None = None,
    stream: TextIO | None = None,
    progress_interval: float = 30.0,
) -> SweepResult:
    """Run every cell of ``bench`` that is not finished yet; see the module docstring.

    ``train_fn`` replaces ``dmarl.train.run_training`` (tests); it must be picklable.
    Progress lines go to ``stream`` (default: stderr), a status line per running cell every
    ``progress_interval`` seconds (local workers); each cell's own output goes to its log file
    (`dmarl.bench.cell_output`).
    """
    stream = stream or sys.stderr
    if backend not in ("local", "ray"):
        raise UserError(f"unknown backend {backend!r} (choose 'local' or 'ray')")
    from dmarl.tracking import ensure_experiment

    uri = resolve_tracking_uri(tracking_uri)
    name = experiment or bench.name
    if backend == "ray" and address and not uri.startswith(("http://", "https://")):
        print(
            f"warning: workers on other machines cannot reach {uri}; "
            "pass --tracking-uri http://HOST:PORT of a shared MLflow server",
            file=stream,
        )
    with locks.benchmark_lock(uri, name), _sigterm_raises():
        cells = expand(bench)
        prepare_generated_datasets(cells)
        client = mlflow_client(uri)
        with locks.store_lock(uri):  # a fresh sqlite store is created (migrated) here
            experiment_id = ensure_experiment(client, name)
        planned = plan_cells(cells, cell_runs(client, experiment_id), retry_failed=retry_failed)
        return _sweep(bench, cells, planned, client, experiment_id, uri, name, backend, workers, address,
                      cpus_per_cell, train_fn, stream, progress_interval)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the driver (main thread only) while the sweep runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _sweep(
    bench: Benchmark, cells: list[Cell], planned: list[PlannedCell], client: MlflowClient, experiment_id: str,
    uri: str, name: str, backend: str, workers: int | None, address: str | None, cpus_per_cell: float,
    train_fn: TrainFn | None, stream: TextIO, progress_interval: float,
) -> SweepResult:
    """The sweep proper, under the benchmark lock: parent run, tasks, pool, final states."""
    n_workers = workers or cpu_cores()
    parent = _parent_run(
        client,
        experiment_id,
        bench,
        {
            "dmarl.version": __version__,
            "dmarl.bench.source": bench.source,
            "dmarl.bench.cells": str(len(cells)),
            "dmarl.bench.backend": backend,
            "mlflow.note.content": parent_description(bench, cells),
        },
    )
    client.log_dict(parent, describe(bench, cells), SPEC_ARTIFACT)
    if bench.source:
        client.log_artifact(parent, bench.source)
    result = SweepResult(name, experiment_id, parent, uri, planned)
    threads = max(1, cpu_cores() // n_workers) if backend == "local" else max(1, int(cpus_per_cell))
    tasks = []
    for p in planned:
        if p.action == "restart" and p.run_id:
            client.set_tag(p.run_id, FAILURE_TAG, "interrupted before its first checkpoint; trained again as a new run")
            client.set_terminated(p.run_id, status="KILLED")
        if p.action in RUN_ACTIONS:
            attempt = uuid.uuid4().hex
            tasks.append(
                CellTask(
                    cell=p.cell,
                    tracking_uri=uri,
                    experiment=name,
                    parent_run_id=parent,
                    attempt=attempt,
                    tags=_cell_tags(bench, p.cell, attempt),
                    resume_run_id=p.run_id if p.action == "resume" else None,
                    threads=threads,
                    train_fn=train_fn,
                    log_path=str(cell_log_path(name, p.cell.key)) if backend == "local" else None,
                )
            )
    skipped = len(planned) - len(tasks)
    where = f"Ray ({address or 'local'})" if backend == "ray" else f"{n_workers} local workers"
    print(
        f"benchmark {bench.name}: {len(tasks)} of {len(planned)} cells to run on {where} "
        f"({skipped} already finished or failed); experiment {name!r}, parent run {parent}, tracking {uri}",
        file=stream,
        flush=True,
    )
    progress = Progress(len(tasks), stream, "queued" if backend == "ray" else "start", progress_interval)
    by_key = {t.cell.key: t for t in tasks}
    in_flight: dict[str, CellTask] = {}

    def started(task: CellTask) -> None:
        in_flight[task.cell.key] = task
        progress.started(task)

    def done(outcome: CellOutcome) -> None:
        task = in_flight.pop(outcome.key, by_key[outcome.key])
        if outcome.status != "FINISHED":
            outcome = replace(outcome, run_id=_record_failure(client, experiment_id, task, outcome))
        elif outcome.run_id:
            client.set_tag(outcome.run_id, WALL_TAG, f"{outcome.seconds:.1f}")
        result.outcomes.append(outcome)
        progress.finished(outcome)

    pool = RayPool(address, cpus_per_cell) if backend == "ray" else LocalPool(n_workers, progress.update)
    try:
        pool.run(tasks, started, done)
    except BaseException:
        for task in in_flight.values():
            run_id = _attempt_run_id(client, experiment_id, task)
            if run_id and client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status="KILLED")
        client.set_terminated(parent, status="KILLED")
        raise
    failed = any(p.action == "failed" for p in planned) or bool(result.failed)
    client.set_terminated(parent, status="FAILED" if failed else "FINISHED")
    return result
