"""Toy tasks from the papers, vectorised in numpy over E copies (no third-party simulator).

- ``toy/bandit``: the OMSD two-agent bandit (paper 004, Sec. 4.1).
- ``toy/coordination_game``: the DDPL coordination game (paper 002, Sec. 3.2), constants below.

Both are deterministic: ``reset(seed)`` accepts a seed for protocol compatibility only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

import dmarl
from dmarl.envs.base import EnvSpec, EpisodeStats, package_versions
from dmarl.registry import register_task

# DDPL coordination game constants (the paper's were lost in extraction; these show the effect).
COORD_HORIZON = 10  # steps per episode (truncation)
COORD_MODE = 0.8  # the distant mode every agent must hit to reach the goal state
COORD_WINDOW = 0.1  # success iff |a_i - COORD_MODE| < COORD_WINDOW for every agent
COORD_SMALL_REWARD = 0.1  # peak of the start-state reward, reached at a_i = 0
COORD_SMALL_WIDTH = 0.2  # std of the Gaussian bump of the start-state reward around 0
COORD_GOAL_REWARD = 1.0  # reward per step in the absorbing goal state


def _versions() -> dict[str, str]:
    return {"dmarl": dmarl.__version__, **package_versions("numpy")}


class BanditEnv:
    """OMSD bandit: 2 agents, one state, ``a in [-1, 1]^2``, ``r = a1 * a2``, one-step episodes.

    Observations and state are the constant vector ``[1.0]``; every step terminates.
    The optimum is ``a1 = a2 = +-1`` (reward 1).
    """

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.spec = EnvSpec(
            name="toy/bandit",
            family="toy",
            agent_ids=("agent_0", "agent_1"),
            obs_dims=(1, 1),
            action_dims=(1, 1),
            state_dim=1,
            episode_limit=1,
            reward_convention="shared",
            versions=_versions(),
        )
        self._stats = EpisodeStats(num_envs)

    def _observe(self) -> tuple[np.ndarray, np.ndarray]:
        return np.ones((self.num_envs, 2, 1), np.float32), np.ones((self.num_envs, 1), np.float32)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        self._stats.reset()
        return self._observe()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        a = np.clip(actions[:, :, 0], -1.0, 1.0)
        reward = (a[:, 0] * a[:, 1]).astype(np.float32)
        terminated = np.ones(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        obs, state = self._observe()
        info = self._stats.record(reward, terminated, obs.copy(), state.copy())
        return obs, state, reward, terminated, truncated, info

    def close(self) -> None:
        """Nothing to release: the toy tasks hold only numpy arrays."""


class CoordinationGameEnv:
    """DDPL coordination game: N agents with 1-d actions in [-1, 1], two states.

    In the start state the team reward is ``COORD_SMALL_REWARD * mean_i exp(-a_i^2 / (2
    COORD_SMALL_WIDTH^2))`` (a local optimum at a = 0); if every agent plays within
    ``COORD_WINDOW`` of ``COORD_MODE`` the game moves to the absorbing goal state, which pays
    ``COORD_GOAL_REWARD`` per step whatever the actions. Episodes truncate after
    ``COORD_HORIZON`` steps. Observation and state: one-hot ``[start, goal]``. A uniform policy
    succeeds with probability ``0.1^N`` per step; a Gaussian policy drawn to 0 by the small
    reward almost never does, so the optimum (return ~9) needs multimodal exploration, while
    staying at 0 earns 1.
    """

    def __init__(self, num_envs: int, n_agents: int = 2) -> None:
        if n_agents < 1:
            raise ValueError(f"toy/coordination_game: n_agents must be >= 1, got {n_agents}")
        self.num_envs = num_envs
        self.spec = EnvSpec(
            name="toy/coordination_game",
            family="toy",
            agent_ids=tuple(f"agent_{i}" for i in range(n_agents)),
            obs_dims=(2,) * n_agents,
            action_dims=(1,) * n_agents,
            state_dim=2,
            episode_limit=COORD_HORIZON,
            reward_convention="shared",
            versions=_versions(),
        )
        self._in_goal = np.zeros(num_envs, dtype=bool)
        self._t = np.zeros(num_envs, dtype=np.int64)
        self._stats = EpisodeStats(num_envs)

    def _observe(self) -> tuple[np.ndarray, np.ndarray]:
        state = np.stack([~self._in_goal, self._in_goal], axis=1).astype(np.float32)
        obs = np.repeat(state[:, None, :], self.spec.n_agents, axis=1)
        return obs, state

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        self._in_goal[:] = False
        self._t[:] = 0
        self._stats.reset()
        return self._observe()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        a = np.clip(actions[:, :, 0], -1.0, 1.0)
        small = COORD_SMALL_REWARD * np.exp(-0.5 * (a / COORD_SMALL_WIDTH) ** 2).mean(axis=1)
        reward = np.where(self._in_goal, COORD_GOAL_REWARD, small).astype(np.float32)
        self._in_goal |= np.all(np.abs(a - COORD_MODE) < COORD_WINDOW, axis=1)
        self._t += 1
        truncated = self._t >= COORD_HORIZON
        terminated = np.zeros(self.num_envs, dtype=bool)
        final_obs, final_state = self._observe()
        info = self._stats.record(reward, truncated, final_obs, final_state)
        self._in_goal[truncated] = False
        self._t[truncated] = 0
        obs, state = self._observe()
        return obs, state, reward, terminated, truncated, info

    def close(self) -> None:
        """Nothing to release: the toy tasks hold only numpy arrays."""


register_task("toy/bandit", "toy", BanditEnv, "OMSD two-agent bandit, r = a1 * a2 (paper 004)")
register_task(
    "toy/coordination_game",
    "toy",
    CoordinationGameEnv,
    "DDPL N-agent coordination game with a distant high-reward mode (paper 002); kwarg n_agents",
)
