"""Every Table 2 task gin of the OMAD paper loads with the OMAD and the baseline algorithm gins
and runs a few hundred env steps end to end (tiny networks and budgets bound on top)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from dmarl.train import run_training

# One gin per Table 2 row (paper 000): file stem -> registered task.
TASKS = {
    "mpe_simple_spread_n3": "mpe/simple_spread_n3",
    "mpe_simple_spread_n4": "mpe/simple_spread_n4",
    "mpe_simple_adversary": "mpe/simple_adversary",
    "mamujoco_ant_2x4": "mamujoco/ant_2x4",
    "mamujoco_ant_2x4d": "mamujoco/ant_2x4d",
    "mamujoco_ant_4x2": "mamujoco/ant_4x2",
    "mamujoco_halfcheetah_2x3": "mamujoco/halfcheetah_2x3",
    "mamujoco_halfcheetah_6x1": "mamujoco/halfcheetah_6x1",
    "mamujoco_walker2d_2x3": "mamujoco/walker2d_2x3",
    "mamujoco_swimmer_2x1": "mamujoco/swimmer_2x1",
}

# Tiny networks per algorithm gin; an algorithm gin that does not exist (yet) is skipped.
TINY = {
    "omad": [
        "OMAD.critic_hidden = (32, 32)", "OMAD.actor_hidden = (16, 16, 16)", "OMAD.time_dim = 16",
        "OMAD.bn_warmup = 50",
    ],
    "hasac": ["HASAC.hidden = (16, 16)"],
    "hatd3": ["HATD3.hidden = (16, 16)"],
}
ALGORITHMS = [name for name in TINY if (REPO / f"gin/algorithms/{name}.gin").is_file()]

BUDGET = [
    "OnlineRunner.total_env_steps = 300",
    "OnlineRunner.num_envs = 2",
    "OnlineRunner.random_steps = 100",
    "OnlineRunner.learning_starts = 100",
    "OnlineRunner.updates_per_env_step = 0.1",
    "OnlineRunner.batch_size = 32",
    "OnlineRunner.buffer_size = 1000",
    "OnlineRunner.eval_interval = 1000000",
    "OnlineRunner.eval_episodes = 1",
    "OnlineRunner.eval_num_envs = 1",
    "OnlineRunner.final_eval_multiplier = 1",
    "OnlineRunner.checkpoint_interval = 300",
    "OnlineRunner.log_interval = 100",
]
# Shorter MaMuJoCo episodes so the evaluations stay cheap (1000 steps in the task itself).
SHORT_EPISODES = "run.task_kwargs = {'max_episode_steps': 50}"


@pytest.fixture(scope="module")
def shared_workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cwd / MLflow store / checkpoint dir for the module (the store's set-up is slow)."""
    path = tmp_path_factory.mktemp("task_gins")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path / 'mlflow.db'}")
        mp.setenv("DMARL_CHECKPOINT_DIR", str(path / "runs"))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield path


def test_every_table2_task_has_a_gin() -> None:
    assert set(TASKS) <= {p.stem for p in (REPO / "gin/tasks").glob("*.gin")}
    for stem, task in TASKS.items():
        text = (REPO / f"gin/tasks/{stem}.gin").read_text()
        assert f"run.task = '{task}'" in text and "OnlineRunner.total_env_steps" in text


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("stem", list(TASKS))
def test_task_gin_runs(stem: str, algorithm: str, shared_workdir: Path) -> None:
    configs = [str(REPO / f"gin/algorithms/{algorithm}.gin"), str(REPO / f"gin/tasks/{stem}.gin")]
    bindings = [*TINY[algorithm], *BUDGET, "run.seed = 0"]
    if stem.startswith("mamujoco"):
        bindings.append(SHORT_EPISODES)
    result = run_training(configs, bindings, experiment="task_gins", progress=False)
    assert result.status == "FINISHED"
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(result.run_id)
    assert run.data.tags["task"] == TASKS[stem] and run.data.tags["algorithm"] == algorithm
    assert run.data.params["OnlineRunner.total_env_steps"] == "300"
    metrics = run.data.metrics
    assert "train/critic_loss" in metrics and "final/return_mean" in metrics
    if stem == "mamujoco_ant_2x4":  # OMAD's coverage grid (Sec. 6.2) is bound by the task gin
        assert 0.0 <= metrics["final/state_coverage"] <= 1.0
