"""Evaluate a trained run's policy, on its own task or another with the same agent layout,
optionally recording a GIF; what `dmarl evaluate` and `dmarl.evaluate` do.

The result is logged to the evaluated run itself (a choice: one place to look, next to the
run's training curves; MLflow accepts metrics on a finished run and does not reopen it):
``evaluate/<label>/return_mean``, ``return_std`` and ``episodes``, where ``<label>`` is the
task name followed by ``/key:value`` for each task kwarg given (characters MLflow refuses in
metric names become ``_``), and the GIF as the artifact ``evaluate/<label>.gif``. A run
evaluated twice the same way gets a second point in each metric's history.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmarl.errors import UserError
from dmarl.policy import download_policy, read_policy

METRIC_PREFIX = "evaluate"
_UNSAFE = re.compile(r"[^\w.\-/: ]")


@dataclass
class EvaluationResult:
    run_id: str
    algorithm: str
    task: str
    label: str
    returns: np.ndarray
    video: dict[str, Any] | None

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def std(self) -> float:
        return float(self.returns.std())


def metric_label(task: str, task_kwargs: dict[str, Any] | None) -> str:
    """``task`` plus ``/key:value`` per kwarg, restricted to characters MLflow accepts."""
    parts = [task, *(f"{k}:{v}" for k, v in sorted((task_kwargs or {}).items()))]
    return _UNSAFE.sub("_", "/".join(parts))


def evaluate_run(
    run_id: str,
    *,
    episodes: int = 10,
    task: str | None = None,
    task_kwargs: dict[str, Any] | None = None,
    seed: int = 1_000_000,
    num_envs: int = 10,
    video: str | Path | None = None,
    video_frames: int = 300,
    tracking_uri: str | None = None,
    log: bool = True,
) -> EvaluationResult:
    """Download, rebuild and evaluate run ``run_id``'s policy over ``episodes`` episodes with
    deterministic actions (seeds ``seed, seed+1, ...``; the training runs' evaluation seed by
    default); record one episode to ``video`` (a ``.gif``) when given; log to the run when ``log``."""
    from dmarl.render import check_video_path, prefer_headless_gl, record_episode
    from dmarl.runners.evaluation import evaluate

    if episodes < 1 or num_envs < 1:
        raise UserError("--episodes and --num-envs must be at least 1")
    if task_kwargs is not None and not isinstance(task_kwargs, dict):
        raise UserError(f"--task-kwargs {task_kwargs!r}: expected a dict of task keyword arguments")
    if video is not None:
        check_video_path(video)
        prefer_headless_gl()
    with tempfile.TemporaryDirectory(prefix="dmarl-policy-") as tmp:
        policy = read_policy(download_policy(run_id, Path(tmp), tracking_uri), run_id=run_id)
    name = task or policy.settings.task
    env = policy.make_env(min(num_envs, episodes), task=task, task_kwargs=task_kwargs)
    try:
        torch.manual_seed(seed)  # samplers that draw noise even when acting deterministically
        returns = evaluate(policy.algorithm, env, episodes, seed)
    finally:
        env.close()
    recorded = None
    if video is not None:
        torch.manual_seed(seed)
        recorded = record_episode(policy, video, task=task, task_kwargs=task_kwargs, seed=seed, max_frames=video_frames)
    result = EvaluationResult(run_id, policy.settings.algorithm, name, metric_label(name, task_kwargs), returns,
                              recorded)
    if log:
        _log(result, tracking_uri)
    return result


def _log(result: EvaluationResult, tracking_uri: str | None) -> None:
    from mlflow.tracking import MlflowClient

    from dmarl.tracking import Tracker, resolve_tracking_uri

    tracker = Tracker(MlflowClient(resolve_tracking_uri(tracking_uri)), result.run_id)
    prefix = f"{METRIC_PREFIX}/{result.label}"
    tracker.log_metrics({f"{prefix}/return_mean": result.mean, f"{prefix}/return_std": result.std,
                         f"{prefix}/episodes": float(len(result.returns))}, step=0)
    if result.video is not None:
        with tempfile.TemporaryDirectory(prefix="dmarl-video-") as tmp:
            copy = Path(tmp) / f"{Path(result.label).name}.gif"
            copy.write_bytes(Path(result.video["path"]).read_bytes())
            tracker.log_artifact(copy, str(Path(METRIC_PREFIX) / Path(result.label).parent))
