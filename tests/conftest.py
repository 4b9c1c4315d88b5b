"""Shared fixtures: every test runs in its own working directory with its own MLflow store."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

torch.set_num_threads(1)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary cwd with a private sqlite MLflow store and checkpoint dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DMARL_CHECKPOINT_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path


def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for `dmarl` subprocesses in a test directory."""
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        DMARL_CHECKPOINT_DIR=str(tmp_path / "runs"),
        OMP_NUM_THREADS="1",
    )
    return env
