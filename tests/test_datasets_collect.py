"""`dmarl collect` and `dmarl datasets ...`: exact collect -> native/vault -> load round trips,
provenance, catalogue lookups, and CLI failures that write nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dmarl.cli import main
from dmarl.envs.datasets import load_dataset, write_dataset
from dmarl.envs.datasets.collect import collect, random_policy
from dmarl.envs.factory import make_env


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


def test_collect_cli_random_and_run_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
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

    class Fixed:
        def act(self, obs: np.ndarray, explore: bool = False) -> np.ndarray:
            return np.full((obs.shape[0], 2, 1), 0.5, np.float32)

    import dmarl.runners.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "load_algorithm_from_run", lambda run_id, uri: Fixed())
    import dmarl.tracking as tracking  # the fake run id must also pass the CLI's preflight (dmarl.validation)

    monkeypatch.setattr(tracking, "run_exists", lambda run_id, uri: True)
    monkeypatch.setattr(tracking, "get_run_tags", lambda run_id, uri: {"task": "toy/bandit"})
    vault = tmp_path / "v.vlt" / "run"
    assert (
        main(
            [
                "collect",
                "--task",
                "toy/bandit",
                "--policy",
                "abc123",
                "--episodes",
                "5",
                "--out",
                str(vault),
                "--format",
                "vault",
            ]
        )
        == 0
    )
    ds = load_dataset(vault)
    np.testing.assert_allclose(ds.reward, 0.25)
    assert ds.metadata["provenance"]["policy"] == "run:abc123"
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
