"""`dmarl collect` and `dmarl datasets ...`: exact collect -> native/vault -> load round trips,
provenance, catalogue lookups, and CLI failures that write nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dmarl.envs.datasets import load_dataset, write_dataset
from dmarl.envs.datasets.collect import collect, random_policy
from dmarl.envs.factory import make_env

import dmarl
from dmarl.cli import main
from dmarl.train import run_training

REPO = Path(__file__).resolve().parents[1]


def _tiny_bandit_run(root: Path) -> tuple[str, str]:
    """A finished 200-step HASAC run on toy/bandit in its own MLflow store: (run id, tracking uri)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    bindings = [
        "run.task = 'toy/bandit'", f"run.checkpoint_dir = '{root / 'runs'}'", "HASAC.hidden = (16, 16)",
        "OnlineRunner.total_env_steps = 200", "OnlineRunner.random_steps = 100", "OnlineRunner.learning_starts = 100",
        "OnlineRunner.num_envs = 2", "OnlineRunner.batch_size = 32", "OnlineRunner.eval_interval = 200",
        "OnlineRunner.eval_episodes = 2", "OnlineRunner.eval_num_envs = 2", "OnlineRunner.checkpoint_interval = 200",
    ]
    result = run_training([str(REPO / "gin/experiments/hasac_simple_spread_cpu.gin")], bindings, tracking_uri=uri,
                          progress=False)
    assert result.status == "FINISHED"
    return result.run_id, uri


@pytest.mark.parametrize("task, episodes, num_envs", [("toy/bandit", 20, 4), ("mpe/simple_spread_n3", 5, 3)])
def test_collect_round_trips_native_and_vault_exactly(tmp_path: Path, task: str, episodes: int, num_envs: int) -> None:
    env = make_env(task, num_envs)
    collected = collect(env, random_policy(env, 1), episodes, seed=1, policy_name="random")
    env.close()
    spec = env.spec
    assert len(collected.episodes) == episodes and collected.episodes.lengths.max() <= spec.episode_limit
    assert np.all(np.abs(collected.actions) <= 1.0)
    for fmt, out in (("native", tmp_path / "native"), ("vault", tmp_path / "v.vlt" / "uid")):
        write_dataset(collected, out, fmt)
        loaded = load_dataset(out, task=task)
        for key, value in collected.arrays.items():
            np.testing.assert_array_equal(loaded.arrays[key], value, err_msg=f"{fmt} {key}")
        np.testing.assert_array_equal(loaded.episodes.lengths, collected.episodes.lengths)
        np.testing.assert_array_equal(loaded.episodes.returns, collected.episodes.returns)
        np.testing.assert_array_equal(loaded.episode_id, collected.episode_id)
        assert loaded.metadata["provenance"]["policy"] == "random" and loaded.metadata["provenance"]["env"] == spec.name


def test_collect_cli_random_and_run_policy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bandit"
    assert (
        main(
            [
                "collect",
                "--task",
                "toy/bandit",
                "--policy",
                "random",
                "--episodes",
                "12",
                "--out",
                str(out),
                "--seed",
                "4",
            ]
        )
        == 0
    )
    ds = load_dataset(out)
    prov = ds.metadata["provenance"]
    assert len(ds.episodes) == 12 and prov["seed"] == 4 and prov["task"] == "toy/bandit"
    assert "numpy" in prov["versions"] and prov["return_stats"]["episodes"] == 12 and "created" in prov
    assert main(["collect", "--task", "toy/bandit", "--policy", "random", "--episodes", "3", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert len(load_dataset(out).episodes) == 12

    run_id, uri = _tiny_bandit_run(tmp_path / "trained")
    policy = dmarl.load_policy(run_id, uri)
    vault = tmp_path / "v.vlt" / "run"
    argv = ["collect", "--task", "toy/bandit", "--policy", run_id, "--episodes", "5", "--out", str(vault),
            "--format", "vault", "--tracking-uri", uri]
    assert main(argv) == 0
    ds = load_dataset(vault)
    acted = policy.act(np.zeros((1, 2, 1), np.float32))  # the bandit has one state: every action is this one
    np.testing.assert_allclose(ds.actions, np.broadcast_to(acted, ds.actions.shape), atol=1e-6)
    np.testing.assert_allclose(ds.reward, acted[0, 0, 0] * acted[0, 1, 0], atol=1e-6)  # r = a1 * a2
    assert ds.metadata["provenance"]["policy"] == f"run:{run_id}"
    mismatched = ["collect", "--task", "mpe/simple_spread_n3", "--policy", run_id, "--episodes", "1",
                  "--out", str(tmp_path / "y"), "--tracking-uri", uri]
    assert main(mismatched) == 2
    assert "expected a run trained on --task" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert (
        main(["collect", "--task", "toy/nope", "--policy", "random", "--episodes", "1", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "unknown task 'toy/nope'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_datasets_cli_list_info_validate_convert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("DMARL_DATA_DIR", str(tmp_path / "data"))
    assert main(["datasets", "list"]) == 0
    listing = capsys.readouterr().out
    assert "og_marl/mamujoco/2halfcheetah/Good" in listing and "omar-npy/simple_spread/expert" in listing
    assert "omiga-hdf5/HalfCheetah-v2-6x1/medium-replay" in listing

    assert main(["datasets", "info", "og_marl/mamujoco/2halfcheetah/Good"]) == 0
    info = capsys.readouterr().out
    assert "core/mamujoco/2halfcheetah.zip" in info
    assert str(tmp_path / "data" / "vaults" / "og_marl" / "mamujoco" / "2halfcheetah.vlt" / "Good") in info

    from test_datasets_omar import write_omar

    write_omar(tmp_path / "data" / "omar" / "simple_spread" / "expert" / "seed_0_data", 50, (18, 18, 18), 2)
    assert len(load_dataset("omar-npy/simple_spread/expert").episodes) == 2  # a catalogue name, found locally
    assert main(["datasets", "info", "omar-npy/simple_spread/expert"]) == 0
    info = capsys.readouterr().out
    assert "catalogue entry: omar-npy/simple_spread/expert" in info and "catalogue returns: mean" in info
    assert "transitions 50, episodes 2, agents 3" in info and "warning: catalogue omar-npy/simple_spread/expert" in info

    src = tmp_path / "src"
    assert (
        main(
            [
                "collect",
                "--task",
                "mpe/simple_spread_n3",
                "--policy",
                "random",
                "--episodes",
                "4",
                "--out",
                str(src),
                "--num-envs",
                "2",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["datasets", "info", str(src), "--bins", "4"]) == 0
    info = capsys.readouterr().out
    assert "transitions 100, episodes 4, agents 3" in info and "return histogram:" in info and info.count("#") > 0
    assert main(["datasets", "validate", str(src), "--task", "mpe/simple_spread_n3"]) == 0
    assert "matches task mpe/simple_spread_n3" in capsys.readouterr().out
    assert main(["datasets", "validate", str(src), "--task", "mpe/simple_spread_n4"]) == 2
    assert "agents: expected 4 agents for task mpe/simple_spread_n4; found 3 agents" in capsys.readouterr().err

    vault = tmp_path / "spread.vlt" / "random"
    with pytest.raises(SystemExit):
        main(["datasets", "convert", str(src), str(vault), "--format", "vault", "--legacy-metadata"])
    assert "unrecognized arguments: --legacy-metadata" in capsys.readouterr().err  # removed: no flashbax reads it
    assert main(["datasets", "convert", str(src), str(vault), "--format", "vault"]) == 0
    back = tmp_path / "back"
    assert main(["datasets", "convert", str(vault), str(back)]) == 0
    original, converted = load_dataset(src), load_dataset(back)
    for key in original.arrays:
        np.testing.assert_array_equal(converted.arrays[key], original.arrays[key])
    assert converted.metadata["provenance"]["converted_from"]["source"] == str(src)  # the original source
    capsys.readouterr()
    assert main(["datasets", "convert", str(src), str(back)]) == 2  # exists, no --force
    assert "already exists" in capsys.readouterr().err
    (src / "reward.npy").write_bytes(b"\x93NUMPY garbage")
    failed = tmp_path / "failed"
    assert main(["datasets", "convert", str(src), str(failed)]) == 2
    assert "reward.npy: reward: expected a complete .npy array" in capsys.readouterr().err
    assert not failed.exists() and not list(tmp_path.glob(".failed*"))
