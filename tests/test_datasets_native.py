"""The native format: exact, memory-mapped round trips; atomic writes; every bad-input case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dmarl.data.offline import EpisodeIndex, OfflineDataset
from dmarl.envs.base import EnvSpec
from dmarl.envs.datasets import detect_format, load_dataset
from dmarl.envs.datasets.native import load_native, write_native
from dmarl.errors import UserError


def sample_dataset(seed: int = 0, with_mask: bool = False) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    lengths = [3, 5, 2, 4]
    t, n = sum(lengths), 3
    arrays = {
        "obs": rng.normal(size=(t, n, 4)).astype(np.float32),
        "next_obs": rng.normal(size=(t, n, 4)).astype(np.float32),
        "state": rng.normal(size=(t, 6)).astype(np.float32),
        "next_state": rng.normal(size=(t, 6)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(t, n, 2)).astype(np.float32),
        "reward": rng.normal(size=t).astype(np.float32),
        "terminated": np.isin(np.arange(t), [2, 13]).astype(np.float32),
    }
    if with_mask:
        arrays["agent_mask"] = (rng.random((t, n)) > 0.3).astype(np.float32)
    returns = np.add.reduceat(arrays["reward"].astype(np.float64), [0, 3, 8, 10])
    return OfflineDataset(
        arrays,
        EpisodeIndex.from_lengths(lengths, returns, ids=[2, 5, 6, 9]),
        obs_dims=(4, 4, 3),
        action_dims=(2, 2, 1),
        metadata={"task": "test/x", "reward_convention": "sum", "provenance": {"policy": "random", "seed": 3}},
    )


@pytest.mark.parametrize("with_mask", [False, True])
def test_round_trip_is_exact_and_memory_mapped(tmp_path: Path, with_mask: bool) -> None:
    ds = sample_dataset(with_mask=with_mask)
    out = write_native(ds, tmp_path / "native")
    assert detect_format(out) == "native"
    back = load_dataset(out)
    assert set(back.arrays) == set(ds.arrays)
    for key, value in ds.arrays.items():
        np.testing.assert_array_equal(back.arrays[key], value, err_msg=key)
        assert isinstance(back.arrays[key], np.memmap)
    for key in ("ids", "starts", "lengths", "returns"):
        np.testing.assert_array_equal(getattr(back.episodes, key), getattr(ds.episodes, key))
    assert back.obs_dims == (4, 4, 3) and back.action_dims == (2, 2, 1)
    np.testing.assert_array_equal(back.return_to_go, ds.return_to_go)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["format"] == "dmarl-native" and meta["provenance"]["policy"] == "random"
    assert meta["fields"]["obs"] == {"shape": [14, 3, 4], "dtype": "float32"} and meta["task"] == "test/x"
    assert (back.batch(np.array([0, 13])).agent_mask is not None) == with_mask


def test_refuses_to_overwrite_and_force_replaces_atomically(tmp_path: Path) -> None:
    out = write_native(sample_dataset(0), tmp_path / "ds")
    before = (out / "obs.npy").read_bytes()
    with pytest.raises(UserError, match="already exists; pass --force"):
        write_native(sample_dataset(1), out)
    assert (out / "obs.npy").read_bytes() == before
    write_native(sample_dataset(1), out, force=True)
    np.testing.assert_array_equal(load_native(out).obs, sample_dataset(1).obs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_native(sample_dataset(), tmp_path / "a" / "b" / "ds")
    assert list(tmp_path.iterdir()) == []


def test_task_spec_checks_and_padding(tmp_path: Path) -> None:
    out = write_native(sample_dataset(), tmp_path / "ds")
    wider = EnvSpec("test/wide", "toy", ("a", "b", "c"), (4, 4, 3), (2, 2, 1), 6, 10, "sum")
    assert load_native(out, spec=wider).metadata["task"] == "test/wide"
    with pytest.raises(UserError, match=r"ds: agents: expected 2 agents for task test/two; found 3 agents"):
        load_native(out, spec=EnvSpec("test/two", "toy", ("a", "b"), (4, 4), (2, 2), 6, 10, "sum"))
    with pytest.raises(UserError, match=r"ds: state: expected state dim 7 for task test/s; found state dim 6"):
        load_native(out, spec=EnvSpec("test/s", "toy", ("a", "b", "c"), (4, 4, 3), (2, 2, 1), 7, 10, "sum"))


def corrupt(out: Path, damage: str) -> None:
    meta_file = out / "metadata.json"
    meta = json.loads(meta_file.read_text())
    if damage == "missing_key":
        del meta["n_agents"]
        meta_file.write_text(json.dumps(meta))
    elif damage == "missing_file":
        (out / "next_state.npy").unlink()
    elif damage == "dtype":
        np.save(out / "reward.npy", np.zeros(14))
    elif damage == "shape":
        np.save(out / "actions.npy", np.zeros((14, 3, 3), np.float32))
    elif damage == "nan":
        obs = np.load(out / "obs.npy")
        obs[9, 1, 2] = np.inf
        np.save(out / "obs.npy", obs)
    elif damage == "truncated":
        (out / "state.npy").write_bytes((out / "state.npy").read_bytes()[:200])
    elif damage == "pickle":
        np.save(out / "obs.npy", np.array([None] * 14, dtype=object), allow_pickle=True)
    elif damage == "ids":
        np.save(out / "episode_ids.npy", np.array([2, 6, 5, 9]))
    elif damage == "lengths":
        np.save(out / "episode_lengths.npy", np.array([3, 5, 2, 3]))
    elif damage == "json":
        meta_file.write_text("{not json")


@pytest.mark.parametrize(
    "damage, match",
    [
        ("missing_key", r"metadata\.json: key 'n_agents': expected keys format, version"),
        ("missing_file", r"next_state\.npy: next_state: expected an existing \.npy file"),
        ("dtype", r"reward\.npy: reward: expected float32 \(14,\) \(metadata\.json\); found float64 \(14,\)"),
        (
            "shape",
            r"actions\.npy: actions: expected float32 \(14, 3, 2\) \(metadata\.json\); found float32 \(14, 3, 3\)",
        ),
        ("nan", r"obs\.npy: obs: expected finite values; found NaN/Inf at row 9"),
        ("truncated", r"state\.npy: state: expected a complete \.npy array"),
        ("pickle", r"obs\.npy: obs: expected a complete \.npy array without pickled objects"),
        ("ids", r"episode_lengths\.npy: episode ids: expected strictly increasing episode ids; found id 5 after 6"),
        (
            "lengths",
            r"episode_lengths\.npy: episode lengths: expected positive lengths summing to 14 transitions; found sum 13",
        ),
        ("json", r"metadata\.json: metadata: expected valid JSON"),
    ],
)
def test_bad_native_inputs(tmp_path: Path, damage: str, match: str) -> None:
    out = write_native(sample_dataset(), tmp_path / "ds")
    corrupt(out, damage)
    with pytest.raises(UserError, match=match):
        load_native(out)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nothing: directory: expected a native dataset directory"):
        load_native(tmp_path / "nothing")
