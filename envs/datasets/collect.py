"""Collect complete episodes from a policy on E parallel copies of a task, with provenance."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Callable

import numpy as np

import dmarl
from dmarl.data.offline import EpisodeIndex, OfflineDataset
from dmarl.envs.base import MultiAgentVecEnv, package_versions
from dmarl.envs.datasets.common import episode_returns

Policy = Callable[[np.ndarray], np.ndarray]  # obs [E, N, O] -> actions [E, N, A] in [-1, 1]


def random_policy(env: MultiAgentVecEnv, seed: int) -> Policy:
    """Uniform actions in [-1, 1] on each agent's real action entries (zeros on padding)."""
    rng = np.random.default_rng(seed)
    mask = env.spec.action_mask()

    def act(obs: np.ndarray) -> np.ndarray:
        actions = rng.uniform(-1.0, 1.0, size=(obs.shape[0], *mask.shape)).astype(np.float32)
        return actions * mask

    return act


def run_policy(run_id: str, tracking_uri: str | None, env: MultiAgentVecEnv) -> Policy:
    """The deterministic policy of a trained run (its logged ``policy/`` artifact, checksum-verified,
    through `dmarl.policy.load_policy`); its agent layout must equal ``env``'s, else one UserError."""
    from dmarl.policy import check_layout, load_policy

    policy = load_policy(run_id, tracking_uri)
    check_layout(policy.spec, env.spec)
    return lambda obs: np.asarray(policy.act(obs, explore=False))


def collect(env: MultiAgentVecEnv, policy: Policy, episodes: int, *, seed: int, policy_name: str) -> OfflineDataset:
    """Run ``policy`` until ``episodes`` episodes have finished; keep exactly those, whole.

    Episodes are ordered by the step they finished at (ties by env copy) and stored
    contiguously; the next observation of an episode's last transition is the env's
    ``final_obs``/``final_state``. Unfinished episodes are discarded.
    """
    if episodes < 1:
        raise ValueError(f"collect: episodes must be >= 1, got {episodes}")
    spec = env.spec
    obs, state = env.reset(seed=seed)
    steps: dict[str, list[np.ndarray]] = {
        k: [] for k in ("obs", "state", "actions", "reward", "next_obs", "next_state", "terminated")
    }
    start = np.zeros(env.num_envs, dtype=np.int64)
    finished: list[tuple[int, int, int]] = []  # (env copy, first step, last step + 1)
    while len(finished) < episodes:
        actions = np.clip(np.asarray(policy(obs), dtype=np.float32), -1.0, 1.0)
        next_obs, next_state, reward, terminated, _truncated, info = env.step(actions)
        t = len(steps["obs"])
        for key, value in (
            ("obs", obs),
            ("state", state),
            ("actions", actions),
            ("reward", reward),
            ("next_obs", info["final_obs"]),
            ("next_state", info["final_state"]),
            ("terminated", terminated),
        ):
            steps[key].append(np.asarray(value, dtype=np.float32))
        for e in np.flatnonzero(info["done"]):
            finished.append((int(e), int(start[e]), t + 1))
            start[e] = t + 1
        obs, state = next_obs, next_state
    finished = finished[:episodes]
    stacked = {k: np.stack(v, axis=0) for k, v in steps.items()}  # [steps, E, ...]
    arrays = {k: np.concatenate([v[a:b, e] for e, a, b in finished]) for k, v in stacked.items()}
    lengths = np.array([b - a for _, a, b in finished], dtype=np.int64)
    returns = episode_returns(arrays["reward"], lengths)  # the vault loader sums the same way
    provenance = {
        "env": spec.name,
        "family": spec.family,
        "policy": policy_name,
        "seed": seed,
        "num_envs": env.num_envs,
        "episodes": episodes,
        "versions": {**spec.versions, "dmarl": dmarl.__version__, **package_versions("numpy", "torch")},
        "python": sys.version.split()[0],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metadata = {
        "format": "collected",
        "task": spec.name,
        "reward_convention": spec.reward_convention,
        "true_dims_known": True,
        "provenance": provenance,
    }
    return OfflineDataset(
        arrays,
        EpisodeIndex.from_lengths(lengths, returns),
        obs_dims=spec.obs_dims,
        action_dims=spec.action_dims,
        metadata=metadata,
    )
