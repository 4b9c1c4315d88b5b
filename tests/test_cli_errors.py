"""Bad input fails before any work starts: one clear message, exit code 2, no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_env

BASE = f"include '{REPO}/gin/experiments/hasac_simple_spread_cpu.gin'\n"


def _dmarl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dmarl.cli", *args], cwd=tmp_path, env=cli_env(tmp_path),
        capture_output=True, text=True, timeout=120,
    )


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.gin"
    path.write_text(text)
    return str(path)


CASES = {
    "unknown algorithm": (BASE + "run.algorithm = 'hasacc'\n", ["unknown algorithm 'hasacc'", "'hasac'"]),
    "unknown task": (BASE + "run.task = 'mpe/simple_sprad_n3'\n", ["unknown task", "mpe/simple_spread_n3"]),
    "misspelled parameter": (BASE + "HASAC.actor_lrr = 1e-3\n", ["actor_lrr", "line 2", "actor_lr"]),
    "unknown configurable": (BASE + "HASACC.actor_lr = 1e-3\n", ["HASACC", "line 2", "HASAC"]),
    "malformed line": (BASE + "HASAC.actor_lr = (1e-3\n", ["malformed gin"]),
    "wrong type": (BASE + "OnlineRunner.num_envs = 'eight'\n", ["line 2", "num_envs", "expected int"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_exits_2_with_one_message(tmp_path: Path, case: str) -> None:
    text, needles = CASES[case]
    result = _dmarl(tmp_path, "train", _write(tmp_path, text), "--no-progress")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    assert not (tmp_path / "runs").exists(), "no work may start on a bad config"


def test_wrong_typed_bind_names_the_binding(tmp_path: Path) -> None:
    config = str(REPO / "gin/experiments/hasac_simple_spread_cpu.gin")
    result = _dmarl(tmp_path, "train", config, "--bind", "HASAC.gamma = 'high'", "--no-progress")
    assert result.returncode == 2
    assert "--bind 'HASAC.gamma = 'high''" in result.stderr and "expected float" in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = _dmarl(tmp_path, "train", "nope.gin")
    assert result.returncode == 2 and "config file not found: nope.gin" in result.stderr


def test_missing_include(tmp_path: Path) -> None:
    result = _dmarl(tmp_path, "train", _write(tmp_path, "include 'gin/nope.gin'\n"))
    assert result.returncode == 2 and "nope.gin" in result.stderr and "Traceback" not in result.stderr


def test_resume_unknown_run(tmp_path: Path) -> None:
    result = _dmarl(tmp_path, "train", "--resume", "0123456789abcdef")
    assert result.returncode == 2 and "no MLflow run with id '0123456789abcdef'" in result.stderr


def test_help_everywhere(tmp_path: Path) -> None:
    for args in (["--help"], ["train", "--help"], ["info", "--help"]):
        result = _dmarl(tmp_path, *args)
        assert result.returncode == 0 and "usage: dmarl" in result.stdout


def test_info_lists_tasks_and_algorithms(tmp_path: Path) -> None:
    result = _dmarl(tmp_path, "info")
    assert result.returncode == 0
    for name in ("mpe/simple_spread_n3", "mamujoco/ant_2x4", "jaxmarl/simple_spread_n3", "toy/bandit", "hasac"):
        assert name in result.stdout
