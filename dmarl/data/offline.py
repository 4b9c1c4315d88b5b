"""Offline datasets in the Batch layout, with a trajectory index and samplers.

An :class:`OfflineDataset` holds T transitions as numpy arrays (in memory or memory-mapped):
``obs [T, N, O]``, ``state [T, S]``, ``actions [T, N, A]``, ``reward [T]``, ``next_obs``,
``next_state``, ``terminated [T]`` (0/1) and optionally ``agent_mask [T, N]``. Transitions
of one episode are stored contiguously, in order; the :class:`EpisodeIndex` lists each
episode's id, first row, number of transitions and return. Heterogeneous agents are padded
with zeros to ``O``/``A``; ``obs_dims``/``action_dims`` keep the true per-agent sizes.

Sampling (reproducible from a ``numpy.random.Generator``, as the offline runner passes):

- :meth:`OfflineDataset.sample` / :class:`UniformSampler`: transitions uniformly.
- :class:`ReturnWeightedSampler` (DOM2-style trajectory reweighting): episodes whose return
  is at or above the ``threshold`` quantile of episode returns are sampled ``copies`` times
  as often as the others, exactly as if they had been duplicated ``copies`` times; or
  (``mode = 'softmax'``) in proportion to exp(return / temperature).
- :meth:`OfflineDataset.subset`: a fraction of the episodes (e.g. 5 %, 10 %, 25 %), chosen
  by a seeded permutation, so smaller fractions are nested in larger ones for a given seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dmarl.data.batch import Batch

TRANSITION_FIELDS = ("obs", "state", "actions", "reward", "next_obs", "next_state", "terminated")
OPTIONAL_FIELDS = ("agent_mask",)


@dataclass(frozen=True)
class EpisodeIndex:
    """Per-episode id, first transition row, number of transitions and return."""

    ids: np.ndarray  # [E] int64, strictly increasing
    starts: np.ndarray  # [E] int64
    lengths: np.ndarray  # [E] int64, > 0
    returns: np.ndarray  # [E] float64

    @classmethod
    def from_lengths(
        cls,
        lengths: Sequence[int] | np.ndarray,
        returns: Sequence[float] | np.ndarray,
        ids: Sequence[int] | np.ndarray | None = None,
    ) -> "EpisodeIndex":
        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        ids = np.arange(len(lengths), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        return cls(ids, starts, lengths, np.asarray(returns, dtype=np.float64))

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def n_transitions(self) -> int:
        return int(self.lengths.sum())

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Transition rows of the episodes at ``positions`` (in the given order)."""
        starts, lengths = self.starts[positions], self.lengths[positions]
        offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return np.repeat(starts, lengths) + offsets

    def take(self, positions: np.ndarray) -> "EpisodeIndex":
        """The index of the episodes at ``positions``, re-based to contiguous rows."""
        return EpisodeIndex.from_lengths(self.lengths[positions], self.returns[positions], self.ids[positions])


def return_stats(returns: np.ndarray) -> dict[str, float]:
    """Mean, std, min, max, median and count of episode returns."""
    if returns.size == 0:
        return {"episodes": 0}
    return {
        "episodes": int(returns.size),
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "min": float(returns.min()),
        "max": float(returns.max()),
        "median": float(np.median(returns)),
    }


class OfflineDataset:
    """Transitions in the Batch layout plus a trajectory index and metadata/provenance."""

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        episodes: EpisodeIndex,
        *,
        obs_dims: Sequence[int] | None = None,
        action_dims: Sequence[int] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        missing = [name for name in TRANSITION_FIELDS if name not in arrays]
        unknown = [name for name in arrays if name not in TRANSITION_FIELDS + OPTIONAL_FIELDS]
        if missing or unknown:
            raise ValueError(f"OfflineDataset: missing fields {missing}, unknown fields {unknown}")
        self.arrays: dict[str, np.ndarray] = dict(arrays)
        self.episodes = episodes
        t, n, o = self.obs.shape
        a = self.actions.shape[2]
        s = self.state.shape[1]
        expected = {
            "obs": (t, n, o),
            "next_obs": (t, n, o),
            "actions": (t, n, a),
            "state": (t, s),
            "next_state": (t, s),
            "reward": (t,),
            "terminated": (t,),
            "agent_mask": (t, n),
        }
        for name, array in self.arrays.items():
            if tuple(array.shape) != expected[name]:
                raise ValueError(f"OfflineDataset: {name} has shape {array.shape}, expected {expected[name]}")
        if episodes.n_transitions != t or np.any(episodes.lengths <= 0):
            raise ValueError(
                f"OfflineDataset: episode lengths cover {episodes.n_transitions} rows, expected {t} (all > 0)"
            )
        self.obs_dims = tuple(int(d) for d in (obs_dims if obs_dims is not None else (o,) * n))
        self.action_dims = tuple(int(d) for d in (action_dims if action_dims is not None else (a,) * n))
        if len(self.obs_dims) != n or len(self.action_dims) != n or max(self.obs_dims) > o or max(self.action_dims) > a:
            raise ValueError(
                f"OfflineDataset: per-agent dims {self.obs_dims}/{self.action_dims} do not fit [N={n}, O={o}, A={a}]"
            )
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._return_to_go: np.ndarray | None = None
        self._episode_id: np.ndarray | None = None
        self._views: dict[str, np.ndarray] | None = None

    # -- arrays ---------------------------------------------------------------------------
    @property
    def obs(self) -> np.ndarray:
        return self.arrays["obs"]

    @property
    def state(self) -> np.ndarray:
        return self.arrays["state"]

    @property
    def actions(self) -> np.ndarray:
        return self.arrays["actions"]

    @property
    def reward(self) -> np.ndarray:
        return self.arrays["reward"]

    @property
    def next_obs(self) -> np.ndarray:
        return self.arrays["next_obs"]

    @property
    def next_state(self) -> np.ndarray:
        return self.arrays["next_state"]

    @property
    def terminated(self) -> np.ndarray:
        return self.arrays["terminated"]

    @property
    def agent_mask(self) -> np.ndarray | None:
        return self.arrays.get("agent_mask")

    @property
    def episode_id(self) -> np.ndarray:
        """``[T]`` int64 id of each transition's episode."""
        if self._episode_id is None:
            self._episode_id = np.repeat(self.episodes.ids, self.episodes.lengths)
        return self._episode_id

    @property
    def return_to_go(self) -> np.ndarray:
        """``[T]`` float32 undiscounted sum of the rewards from each transition to its episode's end."""
        if self._return_to_go is None:
            csum = np.cumsum(self.reward, dtype=np.float64)
            last = np.repeat(self.episodes.starts + self.episodes.lengths - 1, self.episodes.lengths)
            self._return_to_go = (csum[last] - csum + self.reward).astype(np.float32)
        return self._return_to_go

    # -- sizes ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.reward.shape[0])

    @property
    def n_agents(self) -> int:
        return int(self.obs.shape[1])

    @property
    def obs_dim(self) -> int:
        return int(self.obs.shape[2])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[2])

    @property
    def state_dim(self) -> int:
        return int(self.state.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the stored transition arrays."""
        return int(sum(array.nbytes for array in self.arrays.values()))

    def obs_mask(self) -> np.ndarray:
        """``[N, O]`` bool: True where an agent's padded observation entry is real."""
        return np.arange(self.obs_dim)[None, :] < np.asarray(self.obs_dims)[:, None]

    def action_mask(self) -> np.ndarray:
        """``[N, A]`` bool: True where an agent's padded action entry is real."""
        return np.arange(self.action_dim)[None, :] < np.asarray(self.action_dims)[:, None]

    def return_stats(self) -> dict[str, float]:
        return return_stats(self.episodes.returns)

    # -- derived datasets -----------------------------------------------------------------
    def select_episodes(self, positions: np.ndarray) -> "OfflineDataset":
        """A new in-memory dataset holding the episodes at ``positions`` (index positions)."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = self.episodes.rows(positions)
        return OfflineDataset(
            {name: np.asarray(array[rows]) for name, array in self.arrays.items()},
            self.episodes.take(positions),
            obs_dims=self.obs_dims,
            action_dims=self.action_dims,
            metadata=self.metadata,
        )

    def subset(self, fraction: float, seed: int = 0) -> "OfflineDataset":
        """A reproducible by-episode subset holding ``ceil(fraction * E)`` episodes (at least 1).

        Episodes are the first ones of a permutation drawn from ``seed``, kept in their
        original order; for a given seed a smaller fraction is contained in a larger one.
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"subset fraction must be in (0, 1], got {fraction}")
        if fraction == 1.0:
            return self
        n = len(self.episodes)
        k = max(1, math.ceil(fraction * n - 1e-9))
        chosen = np.sort(np.random.default_rng(seed).permutation(n)[:k])
        subset = self.select_episodes(chosen)
        subset.metadata = {**self.metadata, "subset": {"fraction": fraction, "seed": seed, "episodes": k, "of": n}}
        return subset

    # -- batches --------------------------------------------------------------------------
    def batch(self, rows: np.ndarray, device: torch.device | str = "cpu") -> Batch:
        """The transitions at ``rows`` as a :class:`Batch` on ``device``."""
        if self._views is None:  # plain ndarray views: np.take on them skips np.memmap's per-call overhead
            self._views = {name: np.asarray(array) for name, array in self.arrays.items()}
            self._views.update(episode_id=self.episode_id, return_to_go=self.return_to_go)

        def tensor(name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.from_numpy(np.take(self._views[name], rows, axis=0)).to(device=device, dtype=dtype)

        return Batch(
            obs=tensor("obs"),
            state=tensor("state"),
            actions=tensor("actions"),
            reward=tensor("reward"),
            next_obs=tensor("next_obs"),
            next_state=tensor("next_state"),
            terminated=tensor("terminated"),
            episode_id=tensor("episode_id", torch.int64),
            return_to_go=tensor("return_to_go"),
            agent_mask=tensor("agent_mask") if "agent_mask" in self._views else None,
        )

    def sample(self, batch_size: int, generator: np.random.Generator, device: torch.device | str = "cpu") -> Batch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        return UniformSampler(self).sample(batch_size, generator, device)


class UniformSampler:
    """Transitions uniformly with replacement."""

    def __init__(self, dataset: OfflineDataset) -> None:
        self.dataset = dataset

    def rows(self, batch_size: int, generator: np.random.Generator) -> np.ndarray:
        # sorted rows read memory-mapped files front to back; a batch's order carries no meaning
        return np.sort(generator.integers(0, len(self.dataset), size=batch_size))

    def sample(self, batch_size: int, generator: np.random.Generator, device: torch.device | str = "cpu") -> Batch:
        return self.dataset.batch(self.rows(batch_size, generator), device)


REWEIGHT_MODES = ("top_quantile", "softmax")
SAMPLERS = ("uniform", "return_weighted", "softmax")  # make_sampler's kinds


class ReturnWeightedSampler(UniformSampler):
    """DOM2-style trajectory reweighting: transitions drawn with probability proportional to
    a weight w_e of their episode's return R_e, p(row) = w_e(row) / sum_rows w_e(row).

    - ``mode = 'top_quantile'``: w_e = ``copies`` if R_e >= the ``threshold`` quantile (in
      [0, 1]) of episode returns, else 1, exactly as if the top episodes had been duplicated
      ``copies`` times (no data is copied).
    - ``mode = 'softmax'``: w_e = exp(R_e / ``temperature``) (computed as exp((R_e - max R) / T)).

    An episode is picked with probability proportional to weight x length, then a row within
    it uniformly.
    """

    def __init__(
        self,
        dataset: OfflineDataset,
        *,
        mode: str = "top_quantile",
        copies: int | None = None,
        threshold: float | None = None,
        temperature: float | None = None,
    ) -> None:
        super().__init__(dataset)
        returns = dataset.episodes.returns
        if mode == "top_quantile":
            if copies is None or copies < 1:
                raise ValueError(f"ReturnWeightedSampler: copies must be >= 1, got {copies}")
            if threshold is None or not 0.0 <= threshold <= 1.0:
                raise ValueError(f"ReturnWeightedSampler: threshold must be a quantile in [0, 1], got {threshold}")
            self.cutoff = float(np.quantile(returns, threshold))
            self.episode_weights = np.where(returns >= self.cutoff, float(copies), 1.0)
        elif mode == "softmax":
            if temperature is None or not temperature > 0.0:
                raise ValueError(f"ReturnWeightedSampler: temperature must be > 0, got {temperature}")
            self.episode_weights = np.exp((returns - returns.max()) / temperature)
        else:
            raise ValueError(f"ReturnWeightedSampler: mode must be one of {REWEIGHT_MODES}, got {mode!r}")
        self.mode = mode
        mass = np.cumsum(self.episode_weights * dataset.episodes.lengths)
        self._cdf = mass / mass[-1]

    def transition_probabilities(self) -> np.ndarray:
        """``[T]`` probability of drawing each row: its episode's weight / the sum over rows."""
        weights = np.repeat(self.episode_weights, self.dataset.episodes.lengths)
        return weights / weights.sum()

    def rows(self, batch_size: int, generator: np.random.Generator) -> np.ndarray:
        picks = np.searchsorted(self._cdf, generator.random(batch_size), side="right")
        episodes = np.minimum(picks, len(self._cdf) - 1)
        offsets = generator.random(batch_size)
        lengths = self.dataset.episodes.lengths[episodes]
        rows = self.dataset.episodes.starts[episodes] + np.minimum((offsets * lengths).astype(np.int64), lengths - 1)
        return np.sort(rows)


def make_sampler(
    dataset: OfflineDataset,
    kind: str = "uniform",
    *,
    copies: int | None = None,
    threshold: float | None = None,
    temperature: float | None = None,
) -> UniformSampler:
    """``kind`` "uniform", "return_weighted" (top-quantile episodes ``copies`` times, with
    ``threshold``) or "softmax" (episode weight exp(R / ``temperature``)); config values."""
    if kind == "uniform":
        return UniformSampler(dataset)
    if kind == "return_weighted":
        if copies is None or threshold is None:
            raise ValueError("return_weighted sampling needs copies and threshold")
        return ReturnWeightedSampler(dataset, copies=copies, threshold=threshold)
    if kind == "softmax":
        return ReturnWeightedSampler(dataset, mode="softmax", temperature=temperature)
    raise ValueError(f"unknown sampler {kind!r} (valid: {SAMPLERS})")
