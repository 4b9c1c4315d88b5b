"""Policy artifacts, `dmarl evaluate`, GIF recording and `dmarl.load_policy`.

- For every registered algorithm, a fresh instance loaded from the policy artifact acts
  exactly as the trained one (same seed), and the artifact leaves out what acting does not use.
- A tiny HASAC run on MPE logs ``policy/`` (not the resume checkpoint); `dmarl evaluate`
  evaluates it on its task and a shifted variant, writes a GIF that imageio reads back, and
  logs the result to the run; a layout mismatch, a corrupt artifact and a toy task fail with
  one message.
- (slow) A tiny MaMuJoCo run records a GIF through MuJoCo's offscreen (EGL) renderer.
- (slow) Through a `mlflow server` on loopback, with the run's local directory deleted, the policy
  still loads and evaluates.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import gin
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import dmarl
from dmarl import registry
from dmarl.cli import main
from dmarl.errors import UserError
from dmarl.policy import load_policy_state, policy_state, read_policy, write_policy
from dmarl.train import run_training

from conftest import algorithm_test_spec

REPO = Path(__file__).resolve().parents[1]
registry.load_all()
TINY = [
    "OnlineRunner.total_env_steps = 400", "OnlineRunner.random_steps = 200", "OnlineRunner.learning_starts = 200",
    "OnlineRunner.eval_interval = 400", "OnlineRunner.eval_episodes = 2", "OnlineRunner.eval_num_envs = 2",
    "OnlineRunner.checkpoint_interval = 400", "OnlineRunner.num_envs = 2", "HASAC.hidden = (32, 32)",
]


def _perturb(algorithm: object) -> None:
    """Move every network away from its initialisation (so a fresh instance differs)."""
    with torch.no_grad():
        for value in vars(algorithm).values():
            modules = value if isinstance(value, list) else [value]
            for module in modules:
                if isinstance(module, torch.nn.Module):
                    for p in module.parameters():
                        p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("name", sorted(registry.ALGORITHMS))
def test_policy_artifact_acts_like_the_trained_algorithm(name: str) -> None:
    entry = registry.get_algorithm(name)
    spec = algorithm_test_spec(name)
    gin.clear_config()
    torch.manual_seed(0)
    trained = entry.cls(spec=spec, device=torch.device("cpu"))
    _perturb(trained)
    state = policy_state(trained, spec)
    torch.manual_seed(1)
    fresh = entry.cls(spec=spec, device=torch.device("cpu"))
    obs = np.random.default_rng(0).normal(size=(5, spec.n_agents, spec.obs_max)).astype(np.float32)
    torch.manual_seed(3)
    before = fresh.act(obs, explore=False)
    load_policy_state(fresh, state, "test")
    torch.manual_seed(3)
    expected = trained.act(obs, explore=False)
    torch.manual_seed(3)
    np.testing.assert_array_equal(fresh.act(obs, explore=False), expected)
    assert not np.array_equal(before, expected)  # the fresh instance really acted differently
    assert state["modules"] and not any("critic" in key for key in state["modules"])  # critics are left out
    if any("critic" in key for key in vars(trained)):
        saved = sum(v.numel() for dicts in state["modules"].values() for sd in dicts for v in sd.values())
        everything = sum(v.numel() for value in vars(trained).values()
                         for m in (value if isinstance(value, list) else [value])
                         if isinstance(m, torch.nn.Module) for v in m.state_dict().values())
        assert saved < everything


@pytest.fixture(scope="module")
def mpe_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """A tiny finished HASAC run on MPE simple_spread N=3: (run id, tracking uri, run dir)."""
    root = tmp_path_factory.mktemp("mpe_run")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    bindings = [*TINY, f"run.checkpoint_dir = '{root / 'runs'}'"]
    result = run_training([str(REPO / "gin/experiments/hasac_simple_spread_cpu.gin")], bindings, tracking_uri=uri,
                          progress=False)
    assert result.status == "FINISHED"
    return result.run_id, uri, root / "runs" / result.run_id


def _gif_frames(path: Path) -> np.ndarray:
    frames = iio.imread(path, index=None)
    assert frames.ndim == 4 and frames.shape[0] > 1 and frames.shape[-1] in (3, 4)
    assert np.abs(np.diff(frames.astype(np.float32), axis=0)).mean() > 0.0  # it moves
    assert frames[0].std() > 0.0  # not a blank frame
    return frames


def test_run_logs_a_small_policy_artifact_and_keeps_the_checkpoint_local(mpe_run: tuple[str, str, Path]) -> None:
    run_id, uri, run_dir = mpe_run
    client = MlflowClient(uri)
    sizes = {a.path: a.file_size for a in client.list_artifacts(run_id, "policy")}
    assert set(sizes) == {"policy/policy.pt", "policy/spec.json", "policy/config.gin", "policy/manifest.json"}
    assert client.list_artifacts(run_id, "checkpoint") == []
    checkpoint = (run_dir / "checkpoint.pt").stat().st_size
    assert sum(sizes.values()) < checkpoint / 4  # no replay buffer, no critic, no optimiser
    policy = dmarl.load_policy(run_id, uri)
    assert policy.manifest["networks"] == ["actors"] and policy.settings.task == "mpe/simple_spread_n3"
    env = policy.make_env(2)
    obs, _ = env.reset(seed=0)
    actions = policy.act(obs)
    assert actions.shape == (2, 3, 5) and np.all(np.abs(actions) <= 1.0)


def test_evaluate_cli_writes_a_gif_and_logs_to_the_run(mpe_run: tuple[str, str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run_id, uri, _ = mpe_run
    gif = tmp_path / "spread.gif"
    assert main(["evaluate", run_id, "--episodes", "3", "--tracking-uri", uri, "--video", str(gif)]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id} (hasac) on mpe/simple_spread_n3: return" in out and "over 3 episodes" in out
    frames = _gif_frames(gif)
    assert max(frames.shape[1:3]) <= 320
    metrics = MlflowClient(uri).get_run(run_id).data.metrics
    logged = metrics["evaluate/mpe/simple_spread_n3/return_mean"]
    assert f"return {logged:.3f}" in out and metrics["evaluate/mpe/simple_spread_n3/episodes"] == 3
    assert [a.path for a in MlflowClient(uri).list_artifacts(run_id, "evaluate/mpe")] == [
        "evaluate/mpe/simple_spread_n3.gif"]
    # a shifted variant of the task: same agent layout, other dynamics; its own metric name
    assert main(["evaluate", run_id, "--episodes", "2", "--tracking-uri", uri,
                 "--task-kwargs", "{'local_ratio': 0.9}"]) == 0
    metrics = MlflowClient(uri).get_run(run_id).data.metrics
    assert "evaluate/mpe/simple_spread_n3/local_ratio:0.9/return_mean" in metrics
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def test_evaluate_refuses_other_layouts_corrupt_artifacts_and_unrenderable_tasks(
    mpe_run: tuple[str, str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id, uri, _ = mpe_run
    assert main(["evaluate", run_id, "--task", "mpe/simple_spread_n4", "--tracking-uri", uri, "--no-log"]) == 2
    err = capsys.readouterr().err
    assert err.count("dmarl: error:") == 1 and "has 4 agents" in err and "expected a task with the same agent layout" in err
    assert main(["evaluate", "0" * 32, "--tracking-uri", uri]) == 2
    assert "no MLflow run with id" in capsys.readouterr().err
    assert main(["evaluate", run_id, "--tracking-uri", uri, "--video", str(tmp_path / "x.mp4")]) == 2
    assert "expected a file name ending in .gif" in capsys.readouterr().err
    assert main(["evaluate", run_id, "--tracking-uri", uri, "--task-kwargs", "N=4"]) == 2
    assert "expected a dict literal" in capsys.readouterr().err
    policy = dmarl.load_policy(run_id, uri)
    folder = write_policy(tmp_path / "policy", policy.algorithm, policy.spec, "run.algorithm = 'hasac'\n",
                          algorithm_name="hasac", task=policy.spec.name)
    weights = folder / "policy.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"policy\.pt: sha256 .* does not match the manifest"):
        read_policy(folder)
    from dmarl.render import record_episode

    with pytest.raises(UserError, match="cannot be rendered; video supports the mpe and mamujoco families"):
        record_episode(policy, tmp_path / "bandit.gif", task="toy/bandit")


@pytest.mark.slow  # a MaMuJoCo run evaluates 1000-step episodes: ~30 s on a loaded 2-core machine
def test_mamujoco_run_renders_a_gif(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bindings = [
        "OnlineRunner.total_env_steps = 200", "OnlineRunner.random_steps = 100", "OnlineRunner.learning_starts = 100",
        "OnlineRunner.eval_interval = 200", "OnlineRunner.eval_episodes = 1", "OnlineRunner.eval_num_envs = 1",
        "OnlineRunner.final_eval_multiplier = 1", "OnlineRunner.checkpoint_interval = 200",
        "OnlineRunner.num_envs = 1", "HATD3.hidden = (32, 32)", f"run.checkpoint_dir = '{tmp_path / 'runs'}'",
    ]
    result = run_training([str(REPO / "gin/experiments/hatd3_halfcheetah_2x3_cpu.gin")], bindings, tracking_uri=uri,
                          progress=False)
    assert result.status == "FINISHED"
    gif = tmp_path / "cheetah.gif"
    args = ["evaluate", result.run_id, "--episodes", "1", "--num-envs", "1", "--tracking-uri", uri,
            "--video", str(gif), "--video-frames", "12"]
    assert main(args) == 0, capsys.readouterr().err
    assert "12 frames" in capsys.readouterr().out
    frames = _gif_frames(gif)
    assert frames.shape[0] >= 6  # identical consecutive frames may be merged by the GIF writer


@pytest.mark.slow  # starting `mlflow server` takes 20-80 s on a loaded 2-core machine
def test_evaluate_through_a_tracking_server_without_the_local_run_directory(
    mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bindings = [*TINY, f"run.checkpoint_dir = '{tmp_path / 'runs'}'"]
    result = run_training([str(REPO / "gin/experiments/hasac_simple_spread_cpu.gin")], bindings,
                          tracking_uri=mlflow_server, progress=False)
    assert result.status == "FINISHED"
    shutil.rmtree(tmp_path / "runs")  # another machine: only the tracking server has the run
    assert main(["evaluate", result.run_id, "--episodes", "2", "--tracking-uri", mlflow_server]) == 0
    assert "over 2 episodes" in capsys.readouterr().out
    run = MlflowClient(mlflow_server).get_run(result.run_id)
    assert "evaluate/mpe/simple_spread_n3/return_mean" in run.data.metrics
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # artifacts really went through the server
    manifest = json.loads((tmp_path / "server-artifacts").joinpath(
        *Path(run.info.artifact_uri.split(":", 1)[1].lstrip("/")).parts, "policy", "manifest.json").read_text())
    assert manifest["algorithm"] == "hasac"
