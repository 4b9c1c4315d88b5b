"""OMSD and BRPO-IND/CTDE/JAL train end to end (tiny budgets) through `run_training` from small
datasets in each format the suite reads — OMAR .npy directories, an OG-MARL vault, an OMIGA
.hdf5 file — and from a `dmarl collect` dataset of MPE simple_spread, with the environment
evaluation logged to MLflow. Also: a trained phase reused by a second run through the runner."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from dmarl.cli import main
from dmarl.envs.datasets import write_dataset
from dmarl.envs.datasets.collect import collect, random_policy
from dmarl.envs.factory import make_env
from dmarl.train import run_training
from test_datasets_omar import write_omar
from test_datasets_omiga import write_omiga

ALGORITHMS = {"omsd": "OMSD", "brpo_ind": "BRPOInd", "brpo_ctde": "BRPOCTDE", "brpo_jal": "BRPOJAL"}
SPREAD = "mpe/simple_spread_n3"
RUNNER = [
    "OfflineRunner.total_updates = 4",
    "OfflineRunner.batch_size = 16",
    "OfflineRunner.eval_interval = 2",
    "OfflineRunner.eval_episodes = 1",
    "OfflineRunner.eval_num_envs = 1",
    "OfflineRunner.final_eval_multiplier = 1",
    "OfflineRunner.log_interval = 2",
    "OfflineRunner.checkpoint_interval = 4",
]


def tiny(cls: str) -> list[str]:
    return [
        f"{cls}.critic_hidden = (16, 16)", f"{cls}.behaviour_hidden = (16, 16)", f"{cls}.actor_hidden = (16, 16)",
        f"{cls}.time_dim = 8", f"{cls}.critic_steps = 4", f"{cls}.behaviour_steps = 4",
        f"{cls}.pretrain_batch_size = 16", f"{cls}.pretrain_log_interval = 2",
    ]


def train_all(task: str, dataset: Path, extra: dict[str, list[str]] | None = None) -> dict[str, dict[str, float]]:
    """Train every algorithm on (task, dataset); return each run's final MLflow metrics."""
    client = MlflowClient()
    out = {}
    for name, cls in ALGORITHMS.items():
        bindings = [f"run.task = '{task}'", f"run.dataset = '{dataset}'", *RUNNER, *tiny(cls)]
        bindings += [b.format(cls=cls) for b in (extra or {}).get("all", [])]
        config = [str(REPO / f"gin/algorithms/{name}.gin")]
        result = run_training(config, bindings, experiment="omsd_e2e", progress=False)
        assert result.status == "FINISHED", name
        assert result.final_score is not None and np.isfinite(result.final_score)
        run = client.get_run(result.run_id)
        metrics = run.data.metrics
        for key in ("eval/return_mean", "final/return_mean", "train/actor_loss", "pretrain/critic_q_loss",
                    "pretrain/behaviour_loss"):
            assert key in metrics, (name, key, sorted(metrics))
        assert [m.step for m in client.get_metric_history(result.run_id, "eval/return_mean")] == [2, 4]
        assert run.data.tags["algorithm"] == name and run.data.tags["dataset"] == str(dataset)
        out[name] = metrics
    return out


def test_train_from_omar_format(workdir: Path) -> None:
    quality = workdir / "omar" / "spread_small" / "expert"  # not a catalogue name: dims come from the task
    write_omar(quality / "seed_0_data", 50, (18, 18, 18), 5)
    metrics = train_all(SPREAD, quality)
    assert all(m["final/return_mean"] < 0 for m in metrics.values())  # spread rewards are negative distances


def test_train_from_vault_format(workdir: Path) -> None:
    env = make_env("toy/bandit", 4)
    data = collect(env, random_policy(env, 0), 64, seed=0, policy_name="random")
    uid = write_dataset(data, workdir / "vaults" / "test" / "bandit.vlt" / "uniform", "vault")
    metrics = train_all("toy/bandit", uid)
    assert all(-1.0 <= m["final/return_mean"] <= 1.0 for m in metrics.values())


def test_train_from_omiga_format(workdir: Path) -> None:
    # OMIGA stores s as (N, n_agents, D) with D the observation width: the critic is built on it
    flags = ([0] * 25 + [1]) * 3
    file = workdir / "omiga" / "spread-small-expert.hdf5"
    write_omiga(file, flags, n=3, width=18, act=5)
    train_all(SPREAD, file, {"all": ["{cls}.state_dim = 18"]})


def test_train_from_collected_spread_and_reuse_a_phase(workdir: Path) -> None:
    out = workdir / "spread_random"
    assert main(["collect", "--task", SPREAD, "--policy", "random", "--episodes", "4", "--num-envs", "2", "--out",
                 str(out)]) == 0
    train_all(SPREAD, out, {"all": ["{cls}.phase_dir = 'phases/{cls}'"]})
    critic = workdir / "phases" / "OMSD" / "critic.pt"
    assert critic.is_file() and (workdir / "phases" / "BRPOInd" / "behaviour.pt").is_file()
    # BRPO-CTDE reuses OMSD's central critic (loaded, not retrained) and trains its own behaviour models
    bindings = [f"run.task = '{SPREAD}'", f"run.dataset = '{out}'", *RUNNER, *tiny("BRPOCTDE"),
                f"BRPOCTDE.pretrained_critic = '{critic}'"]
    result = run_training([str(REPO / "gin/algorithms/brpo_ctde.gin")], bindings, experiment="reuse", progress=False)
    client = MlflowClient()
    metrics = client.get_run(result.run_id).data.metrics
    assert result.status == "FINISHED"
    assert "pretrain/critic_q_loss" not in metrics and "pretrain/behaviour_loss" in metrics
