"""End-to-end training: MLflow contents, SIGKILL + resume equality, NaN handling."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import REPO, cli_env
from dmarl.runners import checkpoint
from dmarl.train import FAILURE_TAG, run_training

CONFIG = str(REPO / "gin/experiments/hasac_simple_spread_cpu.gin")
SMALL = [
    "HASAC.hidden = (32, 32)",
    "OnlineRunner.total_env_steps = 2400",
    "OnlineRunner.random_steps = 400",
    "OnlineRunner.learning_starts = 400",
    "OnlineRunner.batch_size = 64",
    "OnlineRunner.eval_interval = 800",
    "OnlineRunner.eval_episodes = 4",
    "OnlineRunner.eval_num_envs = 4",
    "OnlineRunner.final_eval_multiplier = 2",
    "OnlineRunner.checkpoint_interval = 800",
    "OnlineRunner.log_interval = 400",
]


def _bind_args(bindings: list[str]) -> list[str]:
    return [arg for b in bindings for arg in ("--bind", b)]


def test_train_logs_params_tags_metrics_artifacts(workdir: Path) -> None:
    result = run_training([CONFIG], SMALL, experiment="e2e", progress=False)
    assert result.status == "FINISHED"
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert tags["algorithm"] == "hasac" and tags["task"] == "mpe/simple_spread_n3" and tags["seed"] == "0"
    for key in ("dmarl.version", "git_sha", "version.torch", "version.mpe2", "version.mujoco", "version.jaxmarl"):
        assert key in tags
    assert params["HASAC.hidden"] == "(32, 32)" and params["OnlineRunner.total_env_steps"] == "2400"
    history = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_metric_history(result.run_id, "eval/return_mean")
    assert [m.step for m in history] == [0, 800, 1600, 2400]
    assert run.data.metrics["final/return_mean"] == pytest.approx(result.final_score)
    for name in ("train/critic_loss", "train/alpha", "time/env_steps_per_s", "time/update_ms"):
        assert name in run.data.metrics
    artifacts = {a.path for a in MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).list_artifacts(result.run_id, "config")}
    assert artifacts == {"config/full_config.gin", "config/operative_config.gin"}
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert client.list_artifacts(result.run_id, "checkpoint") == []  # uploaded only with run.upload_checkpoint
    assert {a.path for a in client.list_artifacts(result.run_id, "policy")} == {
        "policy/policy.pt", "policy/spec.json", "policy/config.gin", "policy/manifest.json"}


def _final_metrics(run_id: str) -> dict[str, float]:
    metrics = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(run_id).data.metrics
    return {k: v for k, v in metrics.items() if k.startswith(("final/", "eval/"))}


def test_sigkill_then_resume_matches_uninterrupted(workdir: Path) -> None:
    env = cli_env(workdir)
    base = [sys.executable, "-m", "dmarl.cli", "train", CONFIG, "--no-progress", *_bind_args(SMALL)]
    full = subprocess.run(base + ["--experiment", "full"], cwd=workdir, env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    full_id = full.stdout.split()[1].rstrip(":")

    proc = subprocess.Popen(base + ["--experiment", "killed"], cwd=workdir, env=env)
    runs = workdir / "runs"
    deadline = time.time() + 120
    killed_id = None
    while time.time() < deadline and proc.poll() is None:
        ckpts = [p for p in runs.glob("*/checkpoint.pt") if p.parent.name != full_id]
        if ckpts:
            killed_id = ckpts[0].parent.name
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_id is not None and proc.returncode == -signal.SIGKILL, "run finished before it could be killed"
    saved = checkpoint.load(runs / killed_id / "checkpoint.pt")
    assert saved["counters"]["env_steps"] < 2400

    resumed = subprocess.run(
        [sys.executable, "-m", "dmarl.cli", "train", "--resume", killed_id, "--no-progress"],
        cwd=workdir, env=env, capture_output=True, text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(killed_id).info.status == "FINISHED"
    assert _final_metrics(killed_id) == _final_metrics(full_id)


def test_nan_loss_stops_run_keeps_checkpoint_and_marks_failed(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dmarl.algorithms.baselines.hasac import HASAC

    update = HASAC.update
    calls = {"n": 0}

    def poisoned(self: HASAC, batch: object) -> dict[str, float]:
        calls["n"] += 1
        metrics = update(self, batch)
        if calls["n"] > 150:  # after the first checkpoint (800 env steps = 100 updates in)
            metrics["train/critic_loss"] = float("nan")
        return metrics

    monkeypatch.setattr(HASAC, "update", poisoned)
    result = run_training([CONFIG], SMALL, experiment="nan", progress=False)
    assert result.status == "FAILED" and result.final_score is None
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(result.run_id)
    assert run.info.status == "FAILED"
    assert "train/critic_loss = nan" in run.data.tags[FAILURE_TAG]
    saved = torch.load(workdir / "runs" / result.run_id / "checkpoint.pt", weights_only=True)
    assert saved["counters"]["env_steps"] == 800
