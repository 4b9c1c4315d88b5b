"""OMIGA datasets (Wang et al. 2023): one HDF5 file per dataset, read with ``h5py``.

File ``<scenario>-<agent_conf>-<quality>.hdf5`` with keys ``s (N, n_agents, D)``,
``o (N, n_agents, D)``, ``a (N, n_agents, act_dim)``, ``r`` and ``d`` ((N, 1), (N,) or
(N, n_agents)). Observations are the global state plus the agent one-hot, normalised.

OMIGA's transition rule: rows t with ``d[t] == 0`` and ``t < N - 1`` are transitions with
next row t+1 and ``terminated = d[t+1]``; a row with ``d = 1`` only holds the final
observation of its episode (1001 rows per 1000-step episode). An episode ends at a
transition whose next row is terminal. The state is ``s[:, 0]`` (agent 0's copy, width D),
which is not the environment's own state: it is not checked against a task's state dim.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmarl.data.offline import OfflineDataset
from dmarl.envs.base import EnvSpec
from dmarl.envs.datasets import catalogue
from dmarl.envs.datasets.common import (
    as_float32,
    build_dataset,
    check_shape,
    dataset_error,
    episode_returns,
    finish,
    pick_convention,
    reduce_rewards,
    segment_lengths,
)

KEYS = ("s", "o", "a", "r", "d")


def _read(file: Path) -> dict[str, np.ndarray]:
    import h5py

    if not file.is_file():
        raise dataset_error(file, "file", "an existing OMIGA .hdf5 file", "no such file")
    try:
        with h5py.File(file, "r") as f:
            missing = [k for k in KEYS if k not in f]
            if missing:
                raise dataset_error(
                    file, f"key {missing[0]!r}", f"HDF5 datasets {', '.join(KEYS)}", f"keys {sorted(f.keys())}"
                )
            return {k: np.asarray(f[k][()]) for k in KEYS}
    except (OSError, ValueError, KeyError) as err:
        raise dataset_error(file, "file", "a complete, readable HDF5 file", f"unreadable ({err})") from None


def load_omiga(
    path: Path,
    *,
    spec: EnvSpec | None = None,
    reward_convention: str | None = None,
    entry: catalogue.CatalogueEntry | None = None,
) -> OfflineDataset:
    """Load an OMIGA HDF5 file under OMIGA's transition rule (module docstring)."""
    file = Path(path)
    raw = _read(file)
    entry = entry or catalogue.identify(file, "omiga")
    o = raw["o"]
    if o.ndim != 3:
        raise dataset_error(file, "o", "shape (N, n_agents, D)", f"shape {o.shape}")
    n_rows, n = o.shape[:2]
    if raw["s"].ndim == 2:
        raw["s"] = raw["s"][:, None]
    check_shape(file, "s", raw["s"].shape, (n_rows, None, None))
    check_shape(file, "a", raw["a"].shape, (n_rows, n, None))
    for key in ("r", "d"):
        if (
            raw[key].ndim not in (1, 2)
            or raw[key].shape[0] != n_rows
            or (raw[key].ndim == 2 and raw[key].shape[1] not in (1, n))
        ):
            raise dataset_error(
                file, key, f"shape ({n_rows},), ({n_rows}, 1) or ({n_rows}, {n})", f"shape {raw[key].shape}"
            )
    if entry is not None:
        for key in ("s", "o", "a"):
            entry.check_shape(file, key, raw[key].shape)
    arrays = {key: as_float32(file, key, raw[key]) for key in KEYS}
    done = (arrays["d"] if arrays["d"].ndim == 1 else arrays["d"][:, 0]) != 0
    rows = np.flatnonzero(~done & (np.arange(n_rows) < n_rows - 1))
    terminated = done[rows + 1]
    convention = pick_convention(reward_convention, spec, entry)
    steps = {
        "obs": arrays["o"],
        "state": arrays["s"][:, 0],
        "actions": arrays["a"],
        "reward": reduce_rewards(file, "r", arrays["r"], convention),
    }
    lengths = segment_lengths(terminated)
    width = o.shape[2]
    metadata = {
        "format": "omiga",
        "source": str(file),
        "catalogue": entry.name if entry else None,
        "reward_convention": convention,
        "steps_per_row": [n_rows],
        "true_dims_known": True,
        "state_source": "OMIGA s[:, 0] (agent 0's global observation)",
    }
    if spec is not None and spec.state_dim != raw["s"].shape[2]:
        metadata["warnings"] = [
            f"state is OMIGA's s[:, 0] (width {raw['s'].shape[2]}), "
            f"not task {spec.name}'s state (width {spec.state_dim})"
        ]
    dataset = build_dataset(
        steps,
        rows,
        rows + 1,
        terminated,
        lengths,
        episode_returns(steps["reward"][rows], lengths),
        obs_dims=[width] * n,
        action_dims=[raw["a"].shape[2]] * n,
        metadata=metadata,
    )
    return finish(dataset, file, spec, entry, check_state=False)
