"""The suite's native offline dataset format: one ``.npy`` per array plus ``metadata.json``.

A native dataset is a directory::

    metadata.json         {"format": "dmarl-native", "version": 1, ...}   (see below)
    obs.npy               float32 [T, N, O]   observations, agents padded to O with zeros
    state.npy             float32 [T, S]      global state
    actions.npy           float32 [T, N, A]   actions in [-1, 1], padded to A with zeros
    reward.npy            float32 [T]         team reward
    next_obs.npy          float32 [T, N, O]
    next_state.npy        float32 [T, S]
    terminated.npy        uint8   [T]         1 = termination (truncation is not termination)
    agent_mask.npy        float32 [T, N]      optional: 1 where an agent is present
    episode_ids.npy       int64   [E]         strictly increasing
    episode_lengths.npy   int64   [E]         transitions per episode (rows are contiguous,
                                              episode by episode, in id order)
    episode_returns.npy   float64 [E]         undiscounted return of each episode

``metadata.json`` holds ``format``, ``version``, ``n_transitions``, ``n_episodes``,
``n_agents``, ``obs_dims``/``action_dims`` (true per-agent dims), ``state_dim``, ``task``,
``reward_convention``, ``fields`` (name -> shape and dtype of every file),
``action_range`` (``[-1, 1]``, the suite's convention, when absent; ``null`` for data recorded
without an action box), ``episode_returns`` (``"reward_sum"``: each return is the sum of its
episode's rewards, checked on load; ``"source"``: returns kept from a source that also summed
rewards of steps without a transition, e.g. a vault's truncated last step; not checkable) and
``provenance`` (env, package versions, policy, seed, return statistics, the source a
conversion came from, creation time).

Arrays are plain little-endian ``.npy`` files: loading memory-maps them read-only
(``np.load(mmap_mode="r", allow_pickle=False)``), so opening a dataset costs almost no
memory and pages are read as batches touch them. Loading checks every file against the
metadata (presence, dtype, shape), scans float arrays for NaN/Inf, checks the episode index,
the stored episode returns against the rewards and the actions against ``action_range``.
Writing goes to a temporary sibling directory renamed into place at the end; only a dataset
dmarl wrote is ever replaced (``common.check_output``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dmarl.data.offline import OPTIONAL_FIELDS, TRANSITION_FIELDS, EpisodeIndex, OfflineDataset
from dmarl.envs.base import EnvSpec
from dmarl.envs.datasets.common import (
    ACTION_RANGE,
    NATIVE_FORMAT,
    action_range,
    atomic_output,
    check_action_range,
    check_episode_index,
    check_episode_returns,
    check_finite,
    check_shape,
    dataset_error,
    finish,
    load_npy,
    read_json,
    returns_match_rewards,
    written_provenance,
)

FORMAT = NATIVE_FORMAT
VERSION = 1
DTYPES = {
    "obs": "float32",
    "state": "float32",
    "actions": "float32",
    "reward": "float32",
    "next_obs": "float32",
    "next_state": "float32",
    "terminated": "uint8",
    "agent_mask": "float32",
    "episode_ids": "int64",
    "episode_lengths": "int64",
    "episode_returns": "float64",
}
INDEX_FIELDS = ("episode_ids", "episode_lengths", "episode_returns")
REQUIRED_KEYS = (
    "format",
    "version",
    "n_transitions",
    "n_episodes",
    "n_agents",
    "obs_dims",
    "action_dims",
    "state_dim",
    "fields",
)


def is_native(path: Path) -> bool:
    meta = Path(path) / "metadata.json"
    try:
        return meta.is_file() and json.loads(meta.read_text()).get("format") == FORMAT
    except (ValueError, OSError, AttributeError):
        return False


def _arrays_to_write(dataset: OfflineDataset) -> dict[str, np.ndarray]:
    out = {
        name: np.asarray(dataset.arrays[name], dtype=DTYPES[name]) for name in TRANSITION_FIELDS if name != "terminated"
    }
    out["terminated"] = (np.asarray(dataset.terminated) != 0).astype(np.uint8)
    if dataset.agent_mask is not None:
        out["agent_mask"] = np.asarray(dataset.agent_mask, dtype=np.float32)
    ep = dataset.episodes
    out.update(
        episode_ids=ep.ids.astype(np.int64),
        episode_lengths=ep.lengths.astype(np.int64),
        episode_returns=ep.returns.astype(np.float64),
    )
    return out


def write_native(dataset: OfflineDataset, path: Path, *, force: bool = False) -> Path:
    """Write ``dataset`` as a native directory at ``path`` (atomically; refuses to overwrite unless ``force``)."""
    path = Path(path)
    bounds = action_range(dataset.metadata)
    check_action_range(f"{path} (to be written)", dataset.actions, bounds)
    arrays = _arrays_to_write(dataset)
    provenance = written_provenance(dataset)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "n_transitions": len(dataset),
        "n_episodes": len(dataset.episodes),
        "n_agents": dataset.n_agents,
        "obs_dims": list(dataset.obs_dims),
        "action_dims": list(dataset.action_dims),
        "state_dim": dataset.state_dim,
        "task": dataset.metadata.get("task"),
        "reward_convention": dataset.metadata.get("reward_convention"),
        "fields": {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in arrays.items()},
        "action_range": None if bounds is None else list(bounds),
        "episode_returns": "reward_sum" if returns_match_rewards(dataset) else "source",
        "provenance": provenance,
    }
    source = dataset.metadata.get("source")
    with atomic_output(path, force, sources=[source] if source else ()) as tmp:
        tmp.mkdir()
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=1))
    return path


def _check_metadata(path: Path, meta: dict[str, Any]) -> None:
    file = path / "metadata.json"
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise dataset_error(file, f"key {missing[0]!r}", f"keys {', '.join(REQUIRED_KEYS)}", f"keys {sorted(meta)}")
    if meta["format"] != FORMAT or meta["version"] != VERSION:
        raise dataset_error(
            file, "format/version", f"{FORMAT!r} version {VERSION}", f"{meta['format']!r} version {meta['version']}"
        )
    fields = meta["fields"]
    for name in (*TRANSITION_FIELDS, *INDEX_FIELDS):
        if name not in fields:
            raise dataset_error(file, f"fields.{name}", "an entry for every array file", "none")


def load_native(path: Path, *, spec: EnvSpec | None = None, mmap: bool = True) -> OfflineDataset:
    """Open a native dataset (memory-mapped unless ``mmap=False``), checked file by file."""
    path = Path(path)
    if not path.is_dir():
        raise dataset_error(path, "directory", "a native dataset directory with metadata.json", "no such directory")
    meta = read_json(path / "metadata.json")
    _check_metadata(path, meta)
    t, n_ep = int(meta["n_transitions"]), int(meta["n_episodes"])
    arrays: dict[str, np.ndarray] = {}
    for name, info in meta["fields"].items():
        if name not in DTYPES:
            raise dataset_error(
                path / "metadata.json", f"fields.{name}", f"fields among {', '.join(DTYPES)}", repr(name)
            )
        file = path / f"{name}.npy"
        array = load_npy(file, name, mmap=mmap)
        if array.dtype != np.dtype(DTYPES[name]) or list(array.shape) != list(info["shape"]):
            raise dataset_error(
                file, name, f"{DTYPES[name]} {tuple(info['shape'])} (metadata.json)", f"{array.dtype} {array.shape}"
            )
        check_shape(file, name, array.shape, (n_ep,) if name in INDEX_FIELDS else (t, *array.shape[1:]))
        check_finite(file, name, array)
        arrays[name] = array
    ids, lengths = np.asarray(arrays.pop("episode_ids")), np.asarray(arrays.pop("episode_lengths"))
    check_episode_index(path / "episode_lengths.npy", ids, lengths, t)
    returns = np.asarray(arrays.pop("episode_returns"))
    if meta.get("episode_returns", "reward_sum") == "reward_sum":
        check_episode_returns(path / "episode_returns.npy", arrays["reward"], lengths, returns)
    episodes = EpisodeIndex.from_lengths(lengths, returns, ids)
    metadata = {
        "format": FORMAT,
        "source": str(path),
        "catalogue": None,
        "task": meta.get("task"),
        "reward_convention": meta.get("reward_convention"),
        "provenance": meta.get("provenance", {}),
        "true_dims_known": True,
        "action_range": meta.get("action_range", list(ACTION_RANGE)),
    }
    try:
        dataset = OfflineDataset(
            {k: v for k, v in arrays.items() if k in TRANSITION_FIELDS + OPTIONAL_FIELDS},
            episodes,
            obs_dims=meta["obs_dims"],
            action_dims=meta["action_dims"],
            metadata=metadata,
        )
    except ValueError as err:
        raise dataset_error(
            path / "metadata.json",
            "shapes",
            "arrays consistent with each other and with obs_dims/action_dims",
            str(err),
        ) from None
    return finish(dataset, path, spec, None, actions_file=path / "actions.npy")
