"""Shared fixtures: every test runs in its own working directory with its own MLflow store."""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_gin_config() -> Iterator[None]:
    """No test sees another's gin bindings (a run leaves its config parsed, e.g. a gin's
    ``ReplayBuffer.n_step``, which made test order matter)."""
    import gin

    yield
    gin.clear_config()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary cwd with a private sqlite MLflow store and checkpoint dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DMARL_CHECKPOINT_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path


TABULAR_ALGORITHMS = {"decspg"}  # one-hot states and 1-d actions only


def algorithm_test_spec(name: str) -> Any:
    """The EnvSpec a test builds registered algorithm ``name`` on: MPE simple_spread N = 3, or the
    two-agent DecSPG toy game for tabular algorithms."""
    from dmarl.envs.factory import make_env

    if name in TABULAR_ALGORITHMS:
        return make_env("toy/decspg_game", 1, n_agents=2).spec
    return make_env("mpe/simple_spread_n3", 1).spec


def run_online_in_process(config_files: list[str], bindings: list[str], seed: int) -> tuple[dict[str, float], Any]:
    """One online run of ``config_files`` (+ ``bindings``, ``run.seed = seed``) with the online
    runner in this process, no MLflow or checkpoints: its final metrics and the trained algorithm."""
    from dmarl.runners.online import OnlineRunner
    from dmarl.train import build_algorithm, make_task_env, parse_settings

    settings = parse_settings(config_files, [*bindings, f"run.seed = {seed}"])
    torch.manual_seed(seed)
    runner = OnlineRunner()
    env, eval_env = make_task_env(settings, runner.num_envs), make_task_env(settings, runner.eval_num_envs)
    algorithm = build_algorithm(settings, env.spec)
    final = runner.run(algorithm, env, eval_env, seed=seed, device=torch.device("cpu"),
                       log=lambda metrics, step: None, save_checkpoint=lambda state: None)
    return final, algorithm


def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for `dmarl` subprocesses in a test directory."""
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        DMARL_CHECKPOINT_DIR=str(tmp_path / "runs"),
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with its own sqlite store and artifact folder; its URL."""
    from dmarl.mlflow_ui import mlflow_server as serve

    with serve(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts") as url:
        yield url


def rest(base: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """GET (or POST ``body`` as JSON) an MLflow REST endpoint, e.g. ``/api/2.0/mlflow/runs/search``."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
