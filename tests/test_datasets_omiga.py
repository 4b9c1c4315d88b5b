"""OMIGA HDF5 files: (N, 1) r/d, OMIGA's transition rule, catalogue and task checks, bad input."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from dmarl.envs.base import EnvSpec
from dmarl.envs.datasets import detect_format, load_dataset
from dmarl.envs.datasets.omiga import load_omiga
from dmarl.errors import UserError


def write_omiga(
    file: Path, d_flags: list[int], n: int = 2, width: int = 113, act: int = 4, seed: int = 0, **override: np.ndarray
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = len(d_flags)
    data = {
        "s": rng.normal(size=(rows, n, width)),
        "o": rng.normal(size=(rows, n, width)),
        "a": rng.uniform(-1, 1, size=(rows, n, act)),
        "r": rng.normal(size=(rows, 1)),
        "d": np.asarray(d_flags, dtype=np.float64)[:, None],
        **override,
    }
    file.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(file, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value)
    return data


# two episodes ending in a terminal row (OMIGA stores 1 + steps rows), then an unfinished one
FLAGS = [0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]


def test_omiga_transition_rule_and_catalogue(tmp_path: Path) -> None:
    file = tmp_path / "omiga" / "Ant-v2-2x4-expert.hdf5"
    raw = write_omiga(file, FLAGS)
    assert detect_format(file) == "omiga"
    ds = load_dataset(file)
    # OMIGA's own loader: rows with d == 0 and t < N - 1; next = t + 1; mask = 1 - d[t + 1]
    idx = np.flatnonzero((raw["d"][:, 0] == 0) & (np.arange(len(FLAGS)) < len(FLAGS) - 1))
    np.testing.assert_array_equal(idx, [0, 1, 2, 3, 5, 6, 7, 9, 10])
    np.testing.assert_array_equal(ds.obs, raw["o"][idx].astype(np.float32))
    np.testing.assert_array_equal(ds.next_obs, raw["o"][idx + 1].astype(np.float32))
    np.testing.assert_array_equal(ds.state, raw["s"][idx, 0].astype(np.float32))
    np.testing.assert_array_equal(ds.next_state, raw["s"][idx + 1, 0].astype(np.float32))
    np.testing.assert_array_equal(ds.actions, raw["a"][idx].astype(np.float32))
    np.testing.assert_array_equal(ds.reward, raw["r"][idx, 0].astype(np.float32))
    np.testing.assert_array_equal(1 - ds.terminated, 1 - raw["d"][idx + 1, 0])
    np.testing.assert_array_equal(ds.episodes.lengths, [4, 3, 2])
    expected_returns = [
        raw["r"][i, 0].astype(np.float32).astype(np.float64).sum() for i in (idx[:4], idx[4:7], idx[7:])
    ]
    np.testing.assert_allclose(ds.episodes.returns, expected_returns, rtol=1e-12)
    assert ds.metadata["catalogue"] == "omiga-hdf5/Ant-v2-2x4/expert" and ds.obs_dims == (113, 113)
    assert any("1001000 steps" in w for w in ds.metadata["warnings"])


def test_omiga_against_a_global_obs_task(tmp_path: Path) -> None:
    file = tmp_path / "custom-data.hdf5"
    write_omiga(file, FLAGS, n=3, width=14, act=1, r=np.ones((12, 3)), d=np.asarray(FLAGS, np.float32))
    spec = EnvSpec("test/hopper+global_obs", "mamujoco", ("a", "b", "c"), (14,) * 3, (1,) * 3, 11, 1000, "shared")
    ds = load_omiga(file, spec=spec)
    assert ds.metadata["catalogue"] is None and ds.state_dim == 14
    assert any("not task test/hopper+global_obs's state (width 11)" in w for w in ds.metadata["warnings"])
    np.testing.assert_array_equal(ds.reward, np.ones(9, np.float32))  # (N, n_agents) rewards, shared: agent 0
    with pytest.raises(
        UserError, match=r"custom-data\.hdf5: observations: expected per-agent observation dims \(15, 15, 15\)"
    ):
        load_omiga(
            file, spec=EnvSpec("test/wide", "mamujoco", ("a", "b", "c"), (15,) * 3, (1,) * 3, 11, 1000, "shared")
        )


@pytest.mark.parametrize(
    "damage, match",
    [
        ("missing", r"Ant-v2-2x4-expert\.hdf5: path: expected an existing dataset path"),
        ("no_d", r"Ant-v2-2x4-expert\.hdf5: key 'd': expected HDF5 datasets s, o, a, r, d"),
        (
            "agents",
            r"Ant-v2-2x4-expert\.hdf5: s \(catalogue omiga-hdf5/Ant-v2-2x4/expert\): "
            r"expected shape \(T, 2, 113\); found shape \(12, 3, 113\)",
        ),
        (
            "r_shape",
            r"Ant-v2-2x4-expert\.hdf5: r: expected shape \(12,\), \(12, 1\) or \(12, 2\); found shape \(12, 5\)",
        ),
        ("nan", r"Ant-v2-2x4-expert\.hdf5: o: expected finite values; found NaN/Inf at row 4"),
        ("truncated", r"Ant-v2-2x4-expert\.hdf5: file: expected a complete, readable HDF5 file"),
    ],
)
def test_bad_omiga_inputs(tmp_path: Path, damage: str, match: str) -> None:
    file = tmp_path / "Ant-v2-2x4-expert.hdf5"
    if damage == "agents":
        write_omiga(file, FLAGS, n=3)
    elif damage == "r_shape":
        write_omiga(file, FLAGS, r=np.zeros((12, 5)))
    elif damage == "nan":
        o = np.zeros((12, 2, 113))
        o[4, 1, 7] = np.nan
        write_omiga(file, FLAGS, o=o)
    elif damage != "missing":
        write_omiga(file, FLAGS)
    if damage == "no_d":
        with h5py.File(file, "a") as f:
            del f["d"]
    elif damage == "truncated":
        file.write_bytes(file.read_bytes()[:3000])
    with pytest.raises(UserError, match=match):
        load_dataset(file)
