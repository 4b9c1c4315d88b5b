"""One training run end to end: gin config -> env, algorithm, runner -> MLflow run + checkpoints.

`run_training` is what `dmarl train` and every `dmarl bench` cell call.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gin
import torch
from tqdm import tqdm

from dmarl import config, registry
from dmarl.algorithms.base import Algorithm
from dmarl.envs.base import EnvSpec
from dmarl.envs.datasets import load_dataset
from dmarl.errors import NonFiniteLossError, UserError
from dmarl.runners import checkpoint
from dmarl.runners.offline import OfflineRunner
from dmarl.runners.online import OnlineRunner
from dmarl.tracking import Tracker, get_run_tags, run_exists, standard_tags

RUN_DIR_TAG = "dmarl.run_dir"
FAILURE_TAG = "dmarl.failure_reason"


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

    def __post_init__(self) -> None:
        if not self.algorithm or not self.task:
            raise UserError("the config must set run.algorithm and run.task (e.g. include a gin/tasks/*.gin file)")


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
    """
    run_dir = saved_run_dir(resume_run_id, tracking_uri) if resume_run_id else None
    if run_dir is not None:
        config_files, bindings = [str(run_dir / checkpoint.CONFIG_FILE)], []
    settings = parse_settings(config_files, bindings)
    entry = registry.get_algorithm(settings.algorithm)
    runner = OnlineRunner() if entry.kind == "online" else OfflineRunner()
    torch.set_num_threads(settings.torch_threads)
    torch.manual_seed(settings.seed)
    device = torch.device(settings.device)
    eval_env = make_task_env(settings, runner.eval_num_envs)
    spec = eval_env.spec
    algorithm = build_algorithm(settings, spec)
    dataset = load_dataset(settings.dataset, spec=spec) if entry.kind == "offline" else None
    full_config = gin.config_str()

    if resume_run_id:
        tracker = Tracker.resume(tracking_uri=tracking_uri, run_id=resume_run_id)
        resume = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
        algorithm.load_state_dict(resume["algorithm"])
        checkpoint.set_rng_state(resume["rng"])
    else:
        name = run_name or f"{settings.algorithm}-{settings.task}-s{settings.seed}"
        run_tags = standard_tags(
            algorithm=settings.algorithm, task=settings.task, seed=settings.seed, extra_versions=spec.versions
        )
        if settings.dataset:
            run_tags["dataset"] = settings.dataset
        tracker = Tracker.create(
            tracking_uri=tracking_uri, experiment=experiment, run_name=name,
            tags={**run_tags, **(tags or {})}, parent_run_id=parent_run_id,
        )
        run_dir = checkpoint.checkpoint_root(settings.checkpoint_dir).resolve() / tracker.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / checkpoint.CONFIG_FILE).write_text(full_config)
        tracker.set_tags({RUN_DIR_TAG: str(run_dir)})
        tracker.log_params(config.flat_params())
        tracker.log_text(full_config, "config/full_config.gin")
        resume = None

    def save_checkpoint(runner_state: dict[str, Any]) -> None:
        payload = {"algorithm": algorithm.state_dict(), "rng": checkpoint.rng_state(), "run_id": tracker.run_id}
        checkpoint.save(run_dir / checkpoint.CHECKPOINT_FILE, {**payload, **runner_state})

    budget = runner.total_env_steps if isinstance(runner, OnlineRunner) else runner.total_updates
    bar = tqdm(total=budget, disable=not progress, unit="step", dynamic_ncols=True, file=sys.stderr)
    try:
        if isinstance(runner, OnlineRunner):
            env = make_task_env(settings, runner.num_envs)
            final = runner.run(
                algorithm, env, eval_env, seed=settings.seed, device=device, log=tracker.log_metrics,
                save_checkpoint=save_checkpoint, resume=resume, progress=bar,
            )
        else:
            final = runner.run(
                algorithm, dataset, eval_env, seed=settings.seed, device=device,
                log=tracker.log_metrics, save_checkpoint=save_checkpoint, resume=resume, progress=bar,
            )
    except NonFiniteLossError as err:
        bar.close()
        reason = f"non-finite loss: {err}; last good checkpoint kept at {run_dir / checkpoint.CHECKPOINT_FILE}"
        tracker.set_tags({FAILURE_TAG: reason})
        tracker.finish("FAILED")
        print(f"dmarl: run {tracker.run_id} stopped: {reason}", file=sys.stderr)
        return TrainResult(tracker.run_id, "FAILED", None)
    except KeyboardInterrupt:
        tracker.set_tags({FAILURE_TAG: "interrupted by the user; resume with --resume"})
        tracker.finish("KILLED")
        raise
    except BaseException as err:
        tracker.set_tags({FAILURE_TAG: f"{type(err).__name__}: {err}"[:5000]})
        tracker.finish("FAILED")
        raise
    finally:
        bar.close()
    tracker.log_text(gin.operative_config_str(), "config/operative_config.gin")
    tracker.log_artifact(run_dir / checkpoint.CHECKPOINT_FILE, "checkpoint")
    tracker.finish("FINISHED")
    return TrainResult(tracker.run_id, "FINISHED", final["final/return_mean"])
