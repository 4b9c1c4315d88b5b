"""OfflineDataset: trajectory index, return-to-go, batches, samplers, fraction subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmarl.data.offline import EpisodeIndex, OfflineDataset, ReturnWeightedSampler, UniformSampler, make_sampler


def make_dataset(lengths: list[int], rewards_per_episode: list[float] | None = None, n: int = 2) -> OfflineDataset:
    """Episodes of the given lengths; every reward in episode e is ``rewards_per_episode[e]``."""
    t = sum(lengths)
    per_ep = rewards_per_episode or [float(e) for e in range(len(lengths))]
    reward = np.repeat(np.asarray(per_ep, np.float32), lengths)
    rows = np.arange(t, dtype=np.float32)
    arrays = {
        "obs": np.broadcast_to(rows[:, None, None], (t, n, 3)).copy(),
        "next_obs": np.broadcast_to(rows[:, None, None] + 0.5, (t, n, 3)).copy(),
        "state": np.stack([rows, -rows], axis=1),
        "next_state": np.stack([rows + 0.5, -rows - 0.5], axis=1),
        "actions": np.zeros((t, n, 2), np.float32),
        "reward": reward,
        "terminated": np.zeros(t, np.float32),
    }
    returns = [r * length for r, length in zip(per_ep, lengths)]
    return OfflineDataset(
        arrays,
        EpisodeIndex.from_lengths(lengths, returns, ids=np.arange(len(lengths)) * 10),
        obs_dims=(3, 2),
        action_dims=(2, 1),
    )


def test_index_episode_ids_return_to_go_and_masks() -> None:
    ds = make_dataset([2, 3, 1], [1.0, 2.0, 5.0])
    np.testing.assert_array_equal(ds.episodes.starts, [0, 2, 5])
    np.testing.assert_array_equal(ds.episode_id, [0, 0, 10, 10, 10, 20])
    np.testing.assert_allclose(ds.return_to_go, [2, 1, 6, 4, 2, 5])
    np.testing.assert_array_equal(ds.obs_mask(), [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(ds.action_mask(), [[1, 1], [1, 0]])
    assert ds.return_stats()["max"] == 6.0 and ds.nbytes > 0


def test_batch_layout_and_dtypes() -> None:
    ds = make_dataset([2, 3])
    batch = ds.batch(np.array([1, 4]))
    assert batch.obs.shape == (2, 2, 3) and batch.state.shape == (2, 2) and batch.actions.shape == (2, 2, 2)
    assert batch.obs.dtype == torch.float32 and batch.episode_id.dtype == torch.int64
    torch.testing.assert_close(batch.obs[:, 0, 0], torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(batch.next_state[:, 0], torch.tensor([1.5, 4.5]))
    assert batch.episode_id.tolist() == [0, 10] and batch.agent_mask is None


def test_uniform_sampling_is_reproducible_and_covers_rows() -> None:
    ds = make_dataset([5] * 20)
    a = ds.sample(64, np.random.default_rng(3))
    b = UniformSampler(ds).sample(64, np.random.default_rng(3))
    torch.testing.assert_close(a.obs, b.obs)
    rows = UniformSampler(ds).rows(5000, np.random.default_rng(0))
    assert len(np.unique(rows)) == len(ds)


def test_return_weighted_sampler_matches_duplication() -> None:
    # 10 episodes of equal length with returns 0..9; threshold 0.8 -> episodes 8, 9 (>= quantile 7.2) get 4x.
    ds = make_dataset([4] * 10, [float(e) for e in range(10)])
    sampler = ReturnWeightedSampler(ds, copies=4, threshold=0.8)
    np.testing.assert_array_equal(sampler.episode_weights, [1] * 8 + [4] * 2)
    rows = sampler.rows(200_000, np.random.default_rng(0))
    freq = np.bincount(ds.episode_id[rows] // 10, minlength=10) / rows.size
    expected = np.array([1] * 8 + [4] * 2) / 16
    np.testing.assert_allclose(freq, expected, atol=0.005)
    assert isinstance(make_sampler(ds, "return_weighted", copies=1, threshold=0.5), ReturnWeightedSampler)
    with pytest.raises(ValueError):
        make_sampler(ds, "nope")


def test_fraction_subsets_are_by_episode_reproducible_and_nested() -> None:
    ds = make_dataset([3] * 40)
    subsets = {f: ds.subset(f, seed=7) for f in (0.05, 0.10, 0.25)}
    assert [len(s.episodes) for s in subsets.values()] == [2, 4, 10]
    ids = {f: set(s.episodes.ids.tolist()) for f, s in subsets.items()}
    assert ids[0.05] <= ids[0.10] <= ids[0.25]
    sub = subsets[0.25]
    np.testing.assert_array_equal(sub.episode_id, np.repeat(sub.episodes.ids, 3))
    np.testing.assert_array_equal(
        sub.obs[:, 0, 0], np.concatenate([np.arange(3) + i // 10 * 3 for i in sub.episodes.ids])
    )
    assert set(ds.subset(0.25, seed=7).episodes.ids.tolist()) == ids[0.25]
    assert set(ds.subset(0.25, seed=8).episodes.ids.tolist()) != ids[0.25]
    assert ds.subset(1.0) is ds and sub.metadata["subset"]["fraction"] == 0.25


def test_inconsistent_arrays_are_rejected() -> None:
    ds = make_dataset([2, 2])
    with pytest.raises(ValueError):
        OfflineDataset({**ds.arrays, "reward": np.zeros(3, np.float32)}, ds.episodes)
    with pytest.raises(ValueError):
        OfflineDataset(ds.arrays, EpisodeIndex.from_lengths([1, 2], [0.0, 0.0]))
