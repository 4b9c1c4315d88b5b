"""dmarl's Python API: the functions behind ``dmarl train``, ``dmarl bench``,
``dmarl leaderboard`` and ``dmarl info``, re-exported lazily by ``import dmarl``.

Config names resolve like on the command line (`dmarl.resources`): a path relative to the
working directory, else a shipped file (``gin/experiments/x.gin``, ``experiments/x``).
Bad input raises `dmarl.errors.UserError` with the message the CLI prints.

    import dmarl
    result = dmarl.train("experiments/hasac_simple_spread_cpu",
                         bind=["OnlineRunner.total_env_steps = 2000"])
    sweep = dmarl.bench("benchmarks/quickstart", bind=["comparison.seeds = 1"])
    env = dmarl.make_env("mpe/simple_spread_n3", num_envs=4)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from dmarl.bench.leaderboard import Leaderboard
    from dmarl.bench.sweep import SweepResult
    from dmarl.envs.base import MultiAgentVecEnv
    from dmarl.policy import Policy
    from dmarl.policy_eval import EvaluationResult
    from dmarl.train import RunSettings, TrainResult


def _files(config: str | Path | Sequence[str | Path]) -> list[str]:
    return [str(config)] if isinstance(config, (str, Path)) else [str(c) for c in config]


def train(
    config: str | Path | Sequence[str | Path],
    *,
    bind: Sequence[str] = (),
    tracking_uri: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    resume: str | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train one (algorithm, task, seed) run, as ``dmarl train CONFIG --bind ...``; returns its
    MLflow run id, status and final evaluation return. ``resume``: a run id to continue (its own
    saved config is used)."""
    from dmarl.train import run_training

    return run_training(
        _files(config) if not resume else [], list(bind) if not resume else [], tracking_uri=tracking_uri,
        experiment=experiment, resume_run_id=resume, run_name=run_name, progress=progress,
    )


def bench(
    benchmark: str | Path,
    *,
    bind: Sequence[str] = (),
    tracking_uri: str | None = None,
    experiment: str | None = None,
    workers: int | None = None,
    backend: str = "local",
    retry_failed: bool = False,
    leaderboard: str | Path | bool = True,
) -> SweepResult:
    """Run every unfinished cell of a benchmark gin file, as ``dmarl bench``; then write its
    leaderboard to ``leaderboard`` (a folder; True: ``leaderboards/EXPERIMENT``; False: none).
    A claims benchmark's claims page is written by the CLI (``dmarl bench``) only."""
    from dmarl.bench import spec, sweep

    declared = spec.load_benchmark(benchmark, list(bind))
    name = experiment or declared.name
    result = sweep.run_sweep(
        declared, tracking_uri=tracking_uri, experiment=name, backend=backend, workers=workers,
        retry_failed=retry_failed,
    )
    if leaderboard is not False:
        from dmarl.bench.leaderboard import build_leaderboard

        out = os.path.join("leaderboards", name) if leaderboard is True else leaderboard
        build_leaderboard(name, out, tracking_uri=result.tracking_uri)
    return result


def leaderboard(experiment: str, out: str | Path | None = None, *, tracking_uri: str | None = None) -> Leaderboard:
    """Build the leaderboard files of an MLflow experiment, as ``dmarl leaderboard``."""
    from dmarl.bench.leaderboard import build_leaderboard

    return build_leaderboard(experiment, out or os.path.join("leaderboards", experiment), tracking_uri=tracking_uri)


def load_config(config: str | Path | Sequence[str | Path], *, bind: Sequence[str] = ()) -> RunSettings:
    """Parse and check gin files and bindings with ``dmarl train``'s checks; returns the run's
    ``run.*`` settings. gin's global config keeps the parsed bindings (``gin.config_str()``)."""
    from dmarl.train import parse_settings

    return parse_settings(_files(config), list(bind))


def make_env(task: str, num_envs: int = 1, *, global_obs: bool = False, **overrides: Any) -> MultiAgentVecEnv:
    """``num_envs`` copies of a registered task (names: :func:`list_tasks`); ``overrides``
    replace the task's registered keyword arguments."""
    from dmarl import registry
    from dmarl.envs.factory import make_env as factory

    registry.load_all()
    return factory(task, num_envs, global_obs=global_obs, **overrides)


def load_policy(run_id: str, tracking_uri: str | None = None, *, device: str = "cpu") -> Policy:
    """Run ``run_id``'s trained policy, downloaded through MLflow (a remote tracking server
    works; the run's local directory is not needed), checksum-verified and rebuilt from its
    logged config: ``policy.act(obs)``, ``policy.make_env(num_envs)``, ``policy.spec``."""
    from dmarl.policy import load_policy as load

    return load(run_id, tracking_uri, device=device)


def evaluate(
    run_id: str,
    *,
    episodes: int = 10,
    task: str | None = None,
    task_kwargs: dict[str, Any] | None = None,
    video: str | Path | None = None,
    tracking_uri: str | None = None,
    log: bool = True,
) -> EvaluationResult:
    """Evaluate run ``run_id``'s policy, as ``dmarl evaluate``: ``.mean``, ``.std``, ``.returns``;
    ``video``: a ``.gif`` path to record one episode; ``log``: log the result to the run."""
    from dmarl.policy_eval import evaluate_run

    return evaluate_run(run_id, episodes=episodes, task=task, task_kwargs=task_kwargs, video=video,
                        tracking_uri=tracking_uri, log=log)


def list_tasks(family: str | None = None) -> list[str]:
    """Registered task names, sorted (only those of ``family``, e.g. ``mpe``, when given)."""
    from dmarl import registry

    registry.load_all()
    return sorted(t.name for t in registry.TASKS.values() if family is None or t.family == family)


def list_algorithms(kind: str | None = None) -> list[str]:
    """Registered algorithm names, sorted (only ``online`` or ``offline`` ones when given)."""
    from dmarl import registry

    registry.load_all()
    return sorted(a.name for a in registry.ALGORITHMS.values() if kind is None or a.kind == kind)


def list_configs(kind: str | None = None) -> list[str]:
    """Shipped gin files as ``kind/name``; any of them is a valid ``config``/``benchmark`` argument."""
    from dmarl.resources import list_configs as shipped

    return shipped(kind)
