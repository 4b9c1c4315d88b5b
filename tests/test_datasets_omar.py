"""OMAR per-agent .npy directories: seeds, padded prey observations, 25-step cuts, HalfCheetah."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dmarl.envs.base import EnvSpec
from dmarl.envs.datasets import detect_format, load_dataset
from dmarl.envs.datasets.omar import episode_cuts, load_omar
from dmarl.errors import UserError

TAG_DIMS = (16, 16, 16, 14)


def write_omar(
    seed_dir: Path,
    steps: int,
    obs_dims: tuple[int, ...],
    act_dim: int,
    *,
    seed: int = 0,
    states: int | None = None,
    dones: np.ndarray | None = None,
    obs_dtype: str = "float64",
) -> dict[str, list[np.ndarray]]:
    """One OMAR seed directory with random contents; returns what was written, per key."""
    rng = np.random.default_rng(seed)
    seed_dir.mkdir(parents=True)
    written: dict[str, list[np.ndarray]] = {}
    state = rng.normal(size=(steps, states)).astype(np.float32) if states else None
    next_state = rng.normal(size=(steps, states)).astype(np.float32) if states else None
    for i, d in enumerate(obs_dims):
        arrays = {
            "obs": rng.normal(size=(steps, d)).astype(obs_dtype),
            "next_obs": rng.normal(size=(steps, d)).astype(obs_dtype),
            "acs": rng.uniform(-1, 1, size=(steps, act_dim)).astype(np.float32),
            "rews": rng.normal(size=steps).astype(np.float32),
            "dones": np.zeros(steps, bool) if dones is None else dones,
        }
        if states:
            arrays.update(states=state, next_states=next_state)
        for key, value in arrays.items():
            np.save(seed_dir / f"{key}_{i}.npy", value)
            written.setdefault(key, []).append(value)
    return written


def padded(arrays: list[np.ndarray], width: int) -> np.ndarray:
    return np.stack([np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays], axis=1).astype(np.float32)


def test_tag_several_seeds_padded_prey_and_25_step_episodes(tmp_path: Path) -> None:
    quality = tmp_path / "omar" / "simple_tag" / "expert"
    seeds = {k: write_omar(quality / f"seed_{k}_data", 50, TAG_DIMS, 2, seed=k) for k in (3, 0)}
    assert detect_format(quality) == "omar"
    ds = load_dataset(quality)
    order = [seeds[0], seeds[3]]  # seed directories in seed order
    np.testing.assert_array_equal(ds.obs, np.concatenate([padded(s["obs"], 16) for s in order]))
    np.testing.assert_array_equal(ds.next_obs, np.concatenate([padded(s["next_obs"], 16) for s in order]))
    np.testing.assert_array_equal(ds.actions, np.concatenate([np.stack(s["acs"], axis=1) for s in order]))
    assert ds.obs_dims == TAG_DIMS and not ds.obs_mask()[3, 14:].any() and np.all(ds.obs[:, 3, 14:] == 0)
    # catalogue convention for tag: agent 0's (a predator's) reward
    np.testing.assert_array_equal(ds.reward, np.concatenate([s["rews"][0] for s in order]))
    np.testing.assert_array_equal(ds.state, ds.obs.reshape(100, 64))
    np.testing.assert_array_equal(ds.next_state, ds.next_obs.reshape(100, 64))
    assert not ds.terminated.any()
    np.testing.assert_array_equal(ds.episodes.lengths, [25] * 4)
    np.testing.assert_array_equal(ds.episodes.ids, np.arange(4))
    np.testing.assert_allclose(ds.episodes.returns, ds.reward.reshape(4, 25).sum(axis=1, dtype=np.float64))
    assert ds.metadata["catalogue"] == "omar-npy/simple_tag/expert" and ds.metadata["seeds"] == [
        "seed_0_data",
        "seed_3_data",
    ]
    assert any("1000000 steps" in w for w in ds.metadata["warnings"])  # tiny test files vs the real sizes

    one = load_omar(quality, seeds=[3])
    np.testing.assert_array_equal(one.obs, padded(seeds[3]["obs"], 16))
    np.testing.assert_array_equal(load_omar(quality / "seed_3_data").reward, one.reward)


def test_task_spec_pads_and_chooses_the_state_layout(tmp_path: Path) -> None:
    quality = tmp_path / "simple_tag" / "medium"
    written = write_omar(quality / "seed_0_data", 25, TAG_DIMS, 2)
    spec = EnvSpec("test/tag", "mpe", tuple(f"a{i}" for i in range(4)), TAG_DIMS, (2,) * 4, 62, 25, "sum")
    ds = load_omar(quality, spec=spec)
    np.testing.assert_array_equal(ds.state, np.concatenate([w.astype(np.float32) for w in written["obs"]], axis=1))
    # the dataset's convention (OMAR scores tag by agent 0) wins over the task's; an explicit one over both
    np.testing.assert_array_equal(ds.reward, written["rews"][0])
    assert ds.metadata["task"] == "test/tag" and ds.metadata["reward_convention"] == "agent0"
    summed = load_omar(quality, spec=spec, reward_convention="sum")
    np.testing.assert_allclose(summed.reward, np.sum(written["rews"], axis=0), rtol=1e-6)
    wider = EnvSpec("test/tag5", "mpe", spec.agent_ids, TAG_DIMS, (5,) * 4, 62, 25, "sum")
    with pytest.raises(UserError, match=r"actions: expected per-agent action dims \(5, 5, 5, 5\)"):
        load_omar(quality, spec=wider)
    three = EnvSpec("test/three", "mpe", ("a", "b", "c"), (16,) * 3, (2,) * 3, 48, 25, "sum")
    with pytest.raises(UserError, match="expected 3 agents for task test/three; found 4 agents"):
        load_omar(quality, spec=three)


def test_halfcheetah_states_dones_and_time_limit(tmp_path: Path) -> None:
    dones = np.zeros(2500, bool)
    dones[[999, 1999, 2099]] = True  # two time limits, then an early termination
    quality = tmp_path / "HalfCheetah-v2" / "medium-replay"
    w = write_omar(quality / "seed_1_data", 2500, (6, 6), 3, states=17, dones=dones, obs_dtype="float32")
    ds = load_dataset(quality)
    np.testing.assert_array_equal(ds.episodes.lengths, [1000, 1000, 100, 400])
    np.testing.assert_array_equal(np.flatnonzero(ds.terminated), [2099])
    np.testing.assert_array_equal(ds.state, w["states"][0])
    np.testing.assert_array_equal(ds.next_state, w["next_states"][0])
    np.testing.assert_array_equal(ds.obs, padded(w["obs"], 6))
    np.testing.assert_array_equal(ds.reward, w["rews"][0])  # shared reward: agent 0's
    assert ds.state_dim == 17 and ds.action_dims == (3, 3)
    np.testing.assert_array_equal(episode_cuts(np.zeros(60, bool), 25), [25, 25, 10])


@pytest.mark.parametrize(
    "damage, match",
    [
        ("missing_dir", r"expert/nowhere: path: expected an existing dataset path or a catalogue name"),
        ("missing_file", r"acs_1\.npy: acs_1: expected an existing \.npy file"),
        ("agents", r"seed_0_data: agents: expected 3 agents \(obs_0\.npy \.\. obs_2\.npy\); found 2"),
        ("catalogue_shape", r"obs_0\.npy: obs_0 \(catalogue omar-npy/simple_spread/expert\): expected shape \(T, 18\)"),
        ("nan", r"rews_2\.npy: rews_2: expected finite values; found NaN/Inf at row 7"),
        ("truncated", r"next_obs_0\.npy: next_obs_0: expected a complete \.npy array"),
        ("pickle", r"dones_1\.npy: dones_1: expected a complete \.npy array without pickled objects"),
        ("length", r"acs_0\.npy: acs_0: expected shape \(30, T\); found shape \(29, 2\)"),
    ],
)
def test_bad_omar_inputs(tmp_path: Path, damage: str, match: str) -> None:
    quality = tmp_path / "simple_spread" / "expert"
    seed_dir = quality / "seed_0_data"
    write_omar(seed_dir, 30, (18, 18) if damage == "agents" else (18, 18, 18), 2)
    if damage == "missing_dir":
        quality = quality / "nowhere"
    elif damage == "missing_file":
        (seed_dir / "acs_1.npy").unlink()
    elif damage == "catalogue_shape":
        np.save(seed_dir / "obs_0.npy", np.zeros((30, 17)))
    elif damage == "nan":
        rews = np.zeros(30, np.float32)
        rews[7] = np.nan
        np.save(seed_dir / "rews_2.npy", rews)
    elif damage == "truncated":
        data = (seed_dir / "next_obs_0.npy").read_bytes()
        (seed_dir / "next_obs_0.npy").write_bytes(data[: len(data) // 2])
    elif damage == "pickle":
        np.save(seed_dir / "dones_1.npy", np.array([{"evil": 1}] * 30, dtype=object), allow_pickle=True)
    elif damage == "length":
        np.save(seed_dir / "acs_0.npy", np.zeros((29, 2), np.float32))
    with pytest.raises(UserError, match=match):
        load_dataset(quality)
    if damage == "missing_dir":
        with pytest.raises(UserError, match=r"expert/nowhere: OMAR directory: expected <env_id>/<quality>/"):
            load_omar(quality)
