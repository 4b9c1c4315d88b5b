"""OMAR datasets (Pan et al. 2022): per-agent ``.npy`` files, one directory per seed.

Layout: ``<root>/<env_id>/<quality>/seed_<k>_data/`` with, for each agent i,
``obs_i.npy (N, obs_dim_i)``, ``acs_i.npy (N, act_dim)``, ``rews_i.npy (N,)``,
``next_obs_i.npy``, ``dones_i.npy (N,)`` and, for HalfCheetah, ``states_i.npy`` /
``next_states_i.npy (N, 17)``. Pass the quality directory (every seed, concatenated in seed
order) or one seed directory.

Transitions come straight from the files (copied to float32). Observations of agents with
smaller observations (the prey in tag/world) are zero-padded to the largest, with true dims
kept for masks. The state is agent 0's ``states_i`` where present, else the concatenation of
the agents' observations (padded, as OG-MARL's vault conversion does, unless the task's
state is the unpadded concatenation). Episodes end at a ``done`` of any agent or after the
episode limit (MPE writes no dones: 25-step episodes; HalfCheetah: 1000); a done at the
limit is a truncation, so ``terminated`` is set only for dones before it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from dmarl.data.offline import EpisodeIndex, OfflineDataset
from dmarl.envs.base import EnvSpec
from dmarl.envs.datasets import catalogue
from dmarl.envs.datasets.common import (
    as_float32,
    check_shape,
    dataset_error,
    derived_state,
    episode_returns,
    finish,
    load_npy,
    pad_last,
    pick_convention,
    reduce_rewards,
)

SEED_DIR = re.compile(r"seed_(\d+)_data")
PER_AGENT = ("obs", "acs", "rews", "next_obs", "dones")
STATES = ("states", "next_states")


def seed_dirs(path: Path, seeds: Sequence[int] | None = None) -> list[Path]:
    """The seed directories under ``path`` (or ``path`` itself), sorted by seed number."""
    path = Path(path)
    if not path.is_dir():
        raise dataset_error(
            path, "OMAR directory", "<env_id>/<quality>/ or one of its seed_<k>_data/ directories", "no such directory"
        )
    if SEED_DIR.fullmatch(path.name):
        return [path]
    found = sorted((int(m.group(1)), p) for p in path.iterdir() if p.is_dir() and (m := SEED_DIR.fullmatch(p.name)))
    if seeds is not None:
        missing = sorted(set(seeds) - {k for k, _ in found})
        if missing:
            raise dataset_error(
                path, "seeds", f"seed_<k>_data directories for seeds {sorted(seeds)}", f"none for {missing}"
            )
        found = [(k, p) for k, p in found if k in seeds]
    if not found:
        raise dataset_error(path, "seed directories", "at least one seed_<k>_data/ directory", "none")
    return [p for _, p in found]


def _agent_count(seed_dir: Path, expected: int | None) -> int:
    n = 0
    while (seed_dir / f"obs_{n}.npy").is_file():
        n += 1
    if n == 0 or (expected is not None and n != expected):
        want = expected or "at least 1"
        names = f"obs_0.npy .. obs_{expected - 1}.npy" if expected else "obs_0.npy"
        raise dataset_error(seed_dir, "agents", f"{want} agents ({names})", f"{n} agents")
    return n


def _read_seed(seed_dir: Path, n: int, entry: catalogue.CatalogueEntry | None) -> dict[str, list[np.ndarray]]:
    """Per-agent float32 arrays of one seed directory, checked for shape, length and finiteness."""
    has_states = (seed_dir / "states_0.npy").is_file() or (entry is not None and entry.state_dim is not None)
    out: dict[str, list[np.ndarray]] = {key: [] for key in PER_AGENT + (STATES if has_states else ())}
    length = None
    for i in range(n):
        for key in out:
            file = seed_dir / f"{key}_{i}.npy"
            array = load_npy(file, f"{key}_{i}")
            if array.ndim == 2 and key in ("rews", "dones") and array.shape[1] == 1:
                array = array[:, 0]
            length = array.shape[0] if length is None else length
            rank = 1 if key in ("rews", "dones") else 2
            check_shape(file, f"{key}_{i}", array.shape, (length,) + (None,) * (rank - 1))
            if entry is not None:
                entry.check_shape(file, f"{key}_{i}", array.shape)
            out[key].append(as_float32(file, f"{key}_{i}", array))
    for i, (obs, nxt) in enumerate(zip(out["obs"], out["next_obs"])):
        check_shape(seed_dir / f"next_obs_{i}.npy", f"next_obs_{i}", nxt.shape, obs.shape)
    return out


def episode_cuts(dones: np.ndarray, limit: int) -> np.ndarray:
    """Episode lengths: an episode ends at a done or after ``limit`` steps, whichever is first."""
    lengths: list[int] = []
    start = 0
    for stop in [*(np.flatnonzero(dones) + 1).tolist(), dones.shape[0]]:
        full, rest = divmod(stop - start, limit)
        lengths += [limit] * full + ([rest] if rest else [])
        start = stop
    return np.asarray(lengths, dtype=np.int64)


def _seed_transitions(
    seed_dir: Path, seed: dict[str, list[np.ndarray]], limit: int, convention: str, state_dim: int | None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Padded transition arrays and episode lengths of one seed directory."""
    obs_dims = [o.shape[1] for o in seed["obs"]]
    width, act_width = max(obs_dims), max(a.shape[1] for a in seed["acs"])

    def stack(arrays: list[np.ndarray], w: int) -> np.ndarray:  # per-agent [N, d_i] -> [N, agents, w]
        return np.stack([pad_last(x, w) for x in arrays], axis=1)

    obs, next_obs = stack(seed["obs"], width), stack(seed["next_obs"], width)
    dones = np.stack(seed["dones"], axis=1).any(axis=1)
    lengths = episode_cuts(dones, limit)
    position = np.arange(dones.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded_state = state_dim != sum(obs_dims)
    arrays = {
        "obs": obs,
        "next_obs": next_obs,
        "actions": stack(seed["acs"], act_width),
        "reward": reduce_rewards(seed_dir, "rews_*", np.stack(seed["rews"], axis=1), convention),
        "terminated": (dones & (position + 1 < limit)).astype(np.float32),
    }
    if "states" in seed:
        arrays.update(state=seed["states"][0], next_state=seed["next_states"][0])
    else:
        arrays.update(
            state=derived_state(obs, obs_dims, padded_state), next_state=derived_state(next_obs, obs_dims, padded_state)
        )
    return arrays, lengths


def load_omar(
    path: Path,
    *,
    spec: EnvSpec | None = None,
    seeds: Sequence[int] | None = None,
    episode_limit: int | None = None,
    reward_convention: str | None = None,
    entry: catalogue.CatalogueEntry | None = None,
) -> OfflineDataset:
    """Load an OMAR quality directory (all or some ``seeds``) or one seed directory."""
    dirs = seed_dirs(path, seeds)
    entry = entry or catalogue.identify(dirs[0], "omar")
    env_id = dirs[0].parent.parent.name
    limit = episode_limit or (spec.episode_limit if spec else None) or catalogue.omar_episode_limit(env_id)
    if not limit:
        raise dataset_error(
            path,
            "episode limit",
            "a known environment (simple_spread, simple_tag, simple_world, HalfCheetah-v2), "
            "a task or an explicit episode limit",
            f"environment {env_id!r}",
        )
    convention = pick_convention(reward_convention, spec, entry)
    n = _agent_count(dirs[0], entry.n_agents if entry else None)
    parts, lengths, dims = [], [], None
    for seed_dir in dirs:
        _agent_count(seed_dir, n)
        seed = _read_seed(seed_dir, n, entry)
        seed_dims = [(o.shape[1], a.shape[1]) for o, a in zip(seed["obs"], seed["acs"])]
        if dims is not None and seed_dims != dims:
            raise dataset_error(
                seed_dir, "per-agent (obs, action) dims", f"{dims} as in {dirs[0].name}", str(seed_dims)
            )
        dims = seed_dims
        arrays, seed_lengths = _seed_transitions(seed_dir, seed, limit, convention, spec.state_dim if spec else None)
        parts.append(arrays)
        lengths.append(seed_lengths)
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    all_lengths = np.concatenate(lengths)
    metadata = {
        "format": "omar",
        "source": str(Path(path)),
        "seeds": [d.name for d in dirs],
        "catalogue": entry.name if entry else None,
        "reward_convention": convention,
        "episode_limit": limit,
        "steps_per_row": [int(p["reward"].shape[0]) for p in parts],
        "true_dims_known": True,
    }
    dataset = OfflineDataset(
        arrays,
        EpisodeIndex.from_lengths(all_lengths, episode_returns(arrays["reward"], all_lengths)),
        obs_dims=[d for d, _ in dims],
        action_dims=[a for _, a in dims],
        metadata=metadata,
    )
    return finish(dataset, path, spec, entry)
