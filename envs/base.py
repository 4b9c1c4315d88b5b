"""EnvSpec and the batched multi-agent environment protocol shared by every family.

Every adapter steps E parallel copies of one task and speaks in padded arrays:
``obs [E, N, O_max]``, ``state [E, S]``, ``actions [E, N, A_max]`` in [-1, 1],
``reward [E]`` (the team reward under ``spec.reward_convention``), ``terminated [E]``,
``truncated [E]``. Copies reset themselves when an episode ends; ``info`` then carries the
finished episode's return and length and the final observation/state (the ``next_obs`` of
the last transition, since the returned ``obs`` already belongs to the new episode).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

REWARD_CONVENTIONS = ("shared", "sum", "mean", "agent0")


@dataclass(frozen=True)
class EnvSpec:
    """Static description of a task: agents, true (unpadded) dims, reward convention."""

    name: str
    family: str
    agent_ids: tuple[str, ...]
    obs_dims: tuple[int, ...]
    action_dims: tuple[int, ...]
    state_dim: int
    episode_limit: int
    reward_convention: str
    versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.agent_ids)
        if len(self.obs_dims) != n or len(self.action_dims) != n:
            raise ValueError(f"EnvSpec {self.name}: obs_dims/action_dims must have {n} entries")
        if self.reward_convention not in REWARD_CONVENTIONS:
            raise ValueError(
                f"EnvSpec {self.name}: reward_convention {self.reward_convention!r} "
                f"not in {REWARD_CONVENTIONS}"
            )

    @property
    def n_agents(self) -> int:
        return len(self.agent_ids)

    @property
    def obs_max(self) -> int:
        return max(self.obs_dims)

    @property
    def act_max(self) -> int:
        return max(self.action_dims)

    @property
    def joint_action_dim(self) -> int:
        return sum(self.action_dims)

    def obs_mask(self) -> np.ndarray:
        """``[N, O_max]`` bool: True where an agent's padded observation entry is real."""
        return np.arange(self.obs_max)[None, :] < np.asarray(self.obs_dims)[:, None]

    def action_mask(self) -> np.ndarray:
        """``[N, A_max]`` bool: True where an agent's padded action entry is real."""
        return np.arange(self.act_max)[None, :] < np.asarray(self.action_dims)[:, None]


class MultiAgentVecEnv(Protocol):
    """E parallel copies of one task behind the padded batched interface."""

    spec: EnvSpec
    num_envs: int

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Reset every copy (copy e seeded with ``seed + e``); return ``obs, state``."""
        ...

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every copy; return ``obs, state, reward, terminated, truncated, info``.

        ``info`` always holds ``done [E]`` (episode ended this step), ``final_obs``,
        ``final_state`` (equal to ``obs``/``state`` where not done), ``episode_return [E]`` and
        ``episode_length [E]`` (NaN / 0 where not done).
        """
        ...

    def close(self) -> None:
        ...


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (``"not installed"`` where absent)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def autoreset_info(
    done: np.ndarray,
    final_obs: np.ndarray,
    final_state: np.ndarray,
    episode_return: np.ndarray,
    episode_length: np.ndarray,
) -> dict[str, Any]:
    """The protocol's ``info`` dict for one batched step (see ``MultiAgentVecEnv.step``)."""
    return {
        "done": done,
        "final_obs": final_obs,
        "final_state": final_state,
        "episode_return": episode_return,
        "episode_length": episode_length,
    }


class EpisodeStats:
    """Running return and length of each of E copies; builds the auto-reset ``info``.

    Call ``record`` once per batched step with the team reward, the done flags and the
    observation/state reached by the step (before any copy was reset).
    """

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> None:
        self.returns[:] = 0.0
        self.lengths[:] = 0

    def record(
        self, reward: np.ndarray, done: np.ndarray, final_obs: np.ndarray, final_state: np.ndarray
    ) -> dict[str, Any]:
        self.returns += reward
        self.lengths += 1
        episode_return = np.where(done, self.returns, np.nan)
        episode_length = np.where(done, self.lengths, 0)
        self.returns[done] = 0.0
        self.lengths[done] = 0
        return autoreset_info(done, final_obs, final_state, episode_return, episode_length)


def box_bounds(spec: EnvSpec, lows: list[np.ndarray], highs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-agent action boxes as padded ``[N, A_max]`` arrays (padding maps to 0)."""
    low = np.zeros((spec.n_agents, spec.act_max), dtype=np.float32)
    high = np.zeros((spec.n_agents, spec.act_max), dtype=np.float32)
    for i, (lo, hi) in enumerate(zip(lows, highs)):
        low[i, : len(lo)] = lo
        high[i, : len(hi)] = hi
    return low, high


def rescale_actions(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map boundary actions ``[E, N, A_max]`` in [-1, 1] (clipped) affinely onto ``[low, high]``."""
    unit = (np.clip(actions, -1.0, 1.0) + 1.0) * 0.5
    return low + unit * (high - low)
