"""One training run end to end: gin config -> env, algorithm, runner -> MLflow run + checkpoints.

`run_training` is what `dmarl train` and every `dmarl bench` cell call.

Run states. Everything that can be refused is checked *before* an MLflow run is created or a
resumed one is flipped back to RUNNING: the config (parsed and range-checked by
`dmarl.config`), the checkpoint directory (a writable folder), and on ``--resume`` the run's
state (a FINISHED run is not reopened), the checkpoint's sha256, its run id and algorithm.
Once the run is RUNNING, every exit path ends it: FINISHED; FAILED with
``dmarl.failure_reason`` (non-finite loss or final score, any exception); KILLED with a reason
(Ctrl-C, SIGTERM). SIGTERM raises `RunTerminated` (a `SystemExit` with code 128 + 15), so the
last checkpoint, written atomically, is kept and the process still exits like a terminated one.

Metrics on resume: a resumed run replays from its last checkpoint, so steps logged after it
would be logged twice; each metric is logged only at steps after the last one already stored
for it (the replay is deterministic, so the stored points are the ones it would log).
"""
from __future__ import annotations

import hashlib
import math
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gin
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tqdm import tqdm

from dmarl import config, registry
from dmarl.algorithms.base import Algorithm
from dmarl.envs.base import EnvSpec
from dmarl.data.offline import OfflineDataset
from dmarl.envs.datasets import load_dataset
from dmarl.errors import NonFiniteLossError, UserError
from dmarl.policy import log_policy
from dmarl.runners import checkpoint
from dmarl.runners.offline import OfflineRunner
from dmarl.runners.online import LogFn, OnlineRunner
from dmarl.runners.onpolicy import OnPolicyRunner
from dmarl.tracking import Tracker, get_run_tags, resolve_tracking_uri, run_exists, standard_tags

RUN_DIR_TAG = "dmarl.run_dir"
FAILURE_TAG = "dmarl.failure_reason"
TERMINATING_SIGNALS = (signal.SIGTERM,)


class RunTerminated(SystemExit):
    """A terminating signal arrived during a run; exit code 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.signame = signal.Signals(signum).name
        self.run_id: str | None = None  # set once the run it stopped is marked KILLED


@gin.configurable("run")
@dataclass
class RunSettings:
    """What to train on what: ``run.algorithm``, ``run.task``, ``run.seed``, ... in gin."""

    algorithm: str = ""
    task: str = ""
    seed: int = 0
    device: str = "cpu"
    global_obs: bool = False
    task_kwargs: dict | None = None
    dataset: str | None = None
    checkpoint_dir: str | None = None
    torch_threads: int = 1
    upload_checkpoint: bool = False  # also log the resume checkpoint (buffer, optimisers) to MLflow
    shifts: dict | None = None  # name -> task kwargs of a shifted variant the final policy is also evaluated on

    def __post_init__(self) -> None:
        if self.dataset:  # a catalogue dataset names its evaluation task (run.task unset) or validates it
            from dmarl.envs.datasets import evaluation_task

            self.task = evaluation_task(self.dataset, self.task)
        if not self.algorithm or not self.task:
            raise UserError("the config must set run.algorithm and run.task (e.g. include a gin/tasks/*.gin file)")
        for name, kwargs in (self.shifts or {}).items():
            if not (isinstance(name, str) and name.replace("_", "").replace("-", "").isalnum() and isinstance(kwargs, dict)):
                raise UserError(f"run.shifts: entry {name!r}: expected a name of letters, digits, '_' or '-' "
                                "mapped to a dict of task kwargs, e.g. {'fast': {'agent_accel_scale': 2.0}}")


@dataclass
class TrainResult:
    run_id: str
    status: str
    final_score: float | None


def build_algorithm(settings: RunSettings, spec: EnvSpec) -> Algorithm:
    entry = registry.get_algorithm(settings.algorithm)
    return entry.cls(spec=spec, device=torch.device(settings.device))


def make_task_env(settings: RunSettings, num_envs: int) -> Any:
    from dmarl.envs.factory import make_env

    return make_env(settings.task, num_envs, global_obs=settings.global_obs, **(settings.task_kwargs or {}))


def make_shift_envs(settings: RunSettings, num_envs: int) -> dict[str, Any]:
    """The shifted evaluation envs of ``run.shifts`` (built before the run starts: a bad kwarg fails early)."""
    from dmarl.envs.factory import make_env

    envs = {}
    for name, kwargs in (settings.shifts or {}).items():
        try:
            envs[name] = make_env(settings.task, num_envs, global_obs=settings.global_obs,
                                  **{**(settings.task_kwargs or {}), **kwargs})
        except (TypeError, ValueError) as err:
            raise UserError(f"run.shifts[{name!r}] = {kwargs!r}: not valid task kwargs of {settings.task} ({err})") from None
    return envs


def parse_settings(config_files: list[str], bindings: list[str]) -> RunSettings:
    registry.load_all()
    config.parse(config_files, bindings)
    settings = RunSettings()
    try:
        entry = registry.get_algorithm(settings.algorithm)
        registry.get_task(settings.task)
    except registry.UnknownNameError as err:
        raise UserError(f"{' '.join(config_files)}: {err}") from None
    if entry.kind == "offline" and not settings.dataset:
        raise UserError(f"{' '.join(config_files)}: offline algorithm {settings.algorithm!r} needs run.dataset")
    return settings


def saved_run_dir(run_id: str, tracking_uri: str | None) -> Path:
    if not run_exists(run_id, tracking_uri):
        raise UserError(f"cannot resume: no MLflow run with id {run_id!r} in the tracking store")
    run_dir = get_run_tags(run_id, tracking_uri).get(RUN_DIR_TAG)
    if run_dir is None or not (Path(run_dir) / checkpoint.CONFIG_FILE).is_file():
        raise UserError(f"cannot resume run {run_id}: it has no dmarl checkpoint directory ({RUN_DIR_TAG} tag)")
    return Path(run_dir)


def resumable_run_dir(run_id: str, tracking_uri: str | None) -> Path:
    """The checkpoint folder of a run that may be resumed; a FINISHED run may not."""
    run_dir = saved_run_dir(run_id, tracking_uri)
    status = MlflowClient(resolve_tracking_uri(tracking_uri)).get_run(run_id).info.status
    if status == "FINISHED":
        raise UserError(
            f"cannot resume run {run_id}: it is FINISHED (its final evaluation is logged); expected an "
            "interrupted, killed or failed run; start a new run to train again"
        )
    return run_dir


def load_resume_checkpoint(run_dir: Path, run_id: str, algorithm: Algorithm, settings: RunSettings, kind: str) -> dict[str, Any]:
    """The verified checkpoint of ``run_id``, loaded into ``algorithm``: its checksum, run id,
    algorithm and runner kind must match, else one UserError (nothing is changed in MLflow)."""
    path = run_dir / checkpoint.CHECKPOINT_FILE
    payload = checkpoint.load(path)
    stored = payload.get("run_id")
    if stored != run_id:
        raise UserError(f"checkpoint {path} belongs to run {stored!r}; expected run {run_id!r} (refusing to resume from it)")
    checkpoint.load_algorithm_state(algorithm, payload, path, settings.algorithm)
    needed = ("counters", "np_rng", "rng") + (("buffer",) if kind == "online" else ())
    missing = [key for key in needed if key not in payload]
    if missing:
        raise UserError(f"checkpoint {path}: key {missing[0]!r} missing; expected a checkpoint of an {kind} run")
    return payload


def logged_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step stored for every metric of a run."""
    keys = client.get_run(run_id).data.metrics
    return {key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1) for key in keys}


def deduplicating_log(tracker: Tracker, last_steps: dict[str, int]) -> LogFn:
    """``tracker.log_metrics`` that drops points at or before a metric's last stored step."""

    def log(metrics: dict[str, float], step: int) -> None:
        fresh = {k: v for k, v in metrics.items() if step > last_steps.get(k, -1)}
        if fresh:
            tracker.log_metrics(fresh, step)

    return log


@contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM into `RunTerminated` (main thread only; the old handler is restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        for sig in TERMINATING_SIGNALS:  # a second signal must not interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        raise RunTerminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _checkpoint_note(path: Path) -> str:
    if not path.exists():
        return "no checkpoint was written yet"
    try:
        checkpoint.verify(path)
    except UserError as err:
        return f"no verified checkpoint to resume from ({err})"
    return f"last good checkpoint kept at {path}"


def run_training(
    config_files: list[str],
    bindings: list[str],
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one (algorithm, task, seed) run; resume it from its checkpoint when asked.

    A resumed run uses its own saved config (``config_files``/``bindings`` are ignored).
    SIGTERM ends the run KILLED and raises `RunTerminated`.
    """
    with terminate_on_signals():
        return _run_training(
            config_files, bindings, tracking_uri=tracking_uri, experiment=experiment, resume_run_id=resume_run_id,
            parent_run_id=parent_run_id, run_name=run_name, tags=tags, progress=progress,
        )


def _run_training(
    config_files: list[str],
    bindings: list[str],
    *,
    tracking_uri: str | None,
    experiment: str | None,
    resume_run_id: str | None,
    parent_run_id: str | None,
    run_name: str | None,
    tags: dict[str, str] | None,
    progress: bool,
) -> TrainResult:
    run_dir = resumable_run_dir(resume_run_id, tracking_uri) if resume_run_id else None
    if run_dir is not None:
        config_files, bindings = [str(run_dir / checkpoint.CONFIG_FILE)], []
    settings = parse_settings(config_files, bindings)
    entry = registry.get_algorithm(settings.algorithm)
    runner = {"online": OnlineRunner, "onpolicy": OnPolicyRunner, "offline": OfflineRunner}[entry.kind]()
    torch.set_num_threads(settings.torch_threads)
    torch.manual_seed(settings.seed)
    device = torch.device(settings.device)
    eval_env = make_task_env(settings, runner.eval_num_envs)
    spec = eval_env.spec
    shift_envs = make_shift_envs(settings, runner.eval_num_envs)
    algorithm = build_algorithm(settings, spec)
    dataset = load_dataset(settings.dataset, spec=spec) if entry.kind == "offline" else None
    full_config = gin.config_str()
    budget = runner.total_updates if isinstance(runner, OfflineRunner) else runner.total_env_steps
    bar = tqdm(total=budget, disable=not progress, unit="step", dynamic_ncols=True, file=sys.stderr)

    if resume_run_id:
        assert run_dir is not None
        resume = load_resume_checkpoint(run_dir, resume_run_id, algorithm, settings, entry.kind)
        checkpoint.set_rng_state(resume["rng"])
        client = MlflowClient(resolve_tracking_uri(tracking_uri))
        last_steps = logged_steps(client, resume_run_id)
        tracker = Tracker.resume(tracking_uri=tracking_uri, run_id=resume_run_id)
    else:
        root = checkpoint.check_writable_dir(checkpoint.checkpoint_root(settings.checkpoint_dir).resolve())
        name = run_name or f"{settings.algorithm}-{settings.task}-s{settings.seed}"
        run_tags = standard_tags(
            algorithm=settings.algorithm, task=settings.task, seed=settings.seed, extra_versions=spec.versions
        )
        if settings.dataset:
            run_tags["dataset"] = settings.dataset
        run_tags["mlflow.note.content"] = run_description(settings, config_files, bindings)
        tracker = Tracker.create(
            tracking_uri=tracking_uri, experiment=experiment, run_name=name,
            tags={**run_tags, **(tags or {})}, parent_run_id=parent_run_id,
        )
        run_dir = root / tracker.run_id
        resume, last_steps = None, {}
    log = deduplicating_log(tracker, last_steps)
    checkpoint_path = run_dir / checkpoint.CHECKPOINT_FILE

    def save_checkpoint(runner_state: dict[str, Any]) -> None:
        payload = {
            "algorithm": algorithm.state_dict(), "rng": checkpoint.rng_state(), "run_id": tracker.run_id,
            "algorithm_name": settings.algorithm,
        }
        checkpoint.save(checkpoint_path, {**payload, **runner_state})

    finished = False
    try:
        if resume is None:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / checkpoint.CONFIG_FILE).write_text(full_config)
            tracker.set_tags({RUN_DIR_TAG: str(run_dir)})
            tracker.log_params(config.operative_params())
            tracker.log_text(full_config, "config/full_config.gin")
            if dataset is not None:
                log_dataset_input(tracker, str(settings.dataset), dataset)
        if not isinstance(runner, OfflineRunner):  # online and on-policy runners step their own envs
            env = make_task_env(settings, runner.num_envs)
            final = runner.run(
                algorithm, env, eval_env, seed=settings.seed, device=device, log=log,
                save_checkpoint=save_checkpoint, resume=resume, progress=bar,
            )
        else:
            final = runner.run(
                algorithm, dataset, eval_env, seed=settings.seed, device=device,
                log=log, save_checkpoint=save_checkpoint, resume=resume, progress=bar,
            )
        score = final["final/return_mean"]
        if not math.isfinite(score):
            raise NonFiniteLossError(f"final/return_mean = {score} (final evaluation)")
        if shift_envs:
            log(runner.shift_evaluation(algorithm, shift_envs), budget)
        operative = gin.operative_config_str()
        tracker.log_text(operative, "config/operative_config.gin")
        tracker.log_params(config.operative_params())  # configurables first called during training
        log_policy(tracker, algorithm, spec, operative, algorithm_name=settings.algorithm, task=settings.task)
        if settings.upload_checkpoint:  # the policy artifact is what evaluate/load_policy read
            for file, folder in checkpoint.checkpoint_files(checkpoint_path):  # payload, sidecar, row chunks
                tracker.log_artifact(file, "/".join(p for p in ("checkpoint", folder) if p))
        if resume is not None:
            _clear_failure_reason(tracker)
        tracker.finish("FINISHED")
        finished = True
    except NonFiniteLossError as err:
        bar.close()
        reason = f"non-finite value: {err}; {_checkpoint_note(checkpoint_path)}"
        _end(tracker, "FAILED", reason)
        print(f"dmarl: run {tracker.run_id} stopped: {reason}", file=sys.stderr)
        return TrainResult(tracker.run_id, "FAILED", None)
    except RunTerminated as err:
        err.run_id = tracker.run_id
        if not finished:
            note = _checkpoint_note(checkpoint_path)
            _end(tracker, "KILLED", f"terminated by {err.signame}; {note}; resume with --resume {tracker.run_id}")
        raise
    except KeyboardInterrupt:
        if not finished:
            _end(tracker, "KILLED", f"interrupted by the user; resume with --resume {tracker.run_id}")
        raise
    except BaseException as err:
        if not finished:
            _end(tracker, "FAILED", f"{type(err).__name__}: {err}"[:5000])
        raise
    finally:
        bar.close()
    return TrainResult(tracker.run_id, "FINISHED", score)


def run_description(settings: RunSettings, config_files: list[str], bindings: list[str]) -> str:
    """The run's MLflow description (markdown, shown on its page): what ran and how to redo it."""
    data = f" on dataset `{settings.dataset}`" if settings.dataset else ""
    command = " ".join(["dmarl train", *config_files, *(f"--bind '{b}'" for b in bindings)])
    return (
        f"**{settings.algorithm}** on **{settings.task}**{data}, seed {settings.seed}.\n\n"
        f"Command: `{command}`. The configuration the run used is the artifact "
        "`config/operative_config.gin`; `dmarl train --resume RUN_ID` resumes it from its checkpoint."
    )


def log_dataset_input(tracker: Tracker, source: str, dataset: OfflineDataset) -> None:
    """The offline dataset as the run's MLflow input: a digest of its transitions (sha256 of
    actions, rewards, terminations and episode lengths) and a profile of its size and returns."""
    digest = hashlib.sha256()
    for array in (dataset.actions, dataset.reward, dataset.terminated, dataset.episodes.lengths):
        digest.update(np.ascontiguousarray(array).tobytes())
    profile = {
        "transitions": len(dataset), "episodes": len(dataset.episodes), "agents": dataset.n_agents,
        **{f"return_{k}": v for k, v in dataset.return_stats().items()},
    }
    tracker.log_dataset_input(Path(source).name or source, digest.hexdigest()[:16], source, profile)


def _end(tracker: Tracker, status: str, reason: str) -> None:
    """End the run as ``status`` with ``dmarl.failure_reason``; a store that fails now only warns
    (the original error is the one to report)."""
    try:
        tracker.set_tags({FAILURE_TAG: reason})
        tracker.finish(status)
    except Exception as err:  # noqa: BLE001 - never mask the exception being handled
        print(f"dmarl: warning: could not mark run {tracker.run_id} {status} ({type(err).__name__}: {err})", file=sys.stderr)


def _clear_failure_reason(tracker: Tracker) -> None:
    """A resumed run that finishes no longer carries the reason it once stopped for."""
    try:
        if FAILURE_TAG in tracker.client.get_run(tracker.run_id).data.tags:
            tracker.client.delete_tag(tracker.run_id, FAILURE_TAG)
    except MlflowException as err:  # the run finished; a stale reason is worth a warning, not a failure
        print(f"dmarl: warning: could not clear the old {FAILURE_TAG} tag of run {tracker.run_id} ({err})", file=sys.stderr)
