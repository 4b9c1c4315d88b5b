"""The DecSPG exploration game of DDPL (paper 002, Sec. 3.2.1-3.2.2, App. A), N agents.

The paper's constants were lost in extraction; the structure survives and is kept exactly:
three states {start, goal, fail}, fixed start state, 1-d actions in [-1, 1] per agent.

- **start**: team reward ``mean_i r0(a_i)`` with a strong bump at 0 and weak bumps at +-a*,
    r0(a) = START_REWARD exp(-a^2 / (2 START_WIDTH^2))
            + SIDE_REWARD exp(-(|a| - A_STAR)^2 / (2 SIDE_WIDTH^2));
  each agent independently *succeeds* with probability
  p(a_i) = SUCCESS_PROB exp(-(|a_i| - A_STAR)^2 / (2 SUCCESS_WIDTH^2)) if
  ``| |a_i| - A_STAR | < SUCCESS_WINDOW`` (= 3 SUCCESS_WIDTH), 0 elsewhere: success only near
  +-a*, with a smooth peak at +-a* (a learned critic fits it far better than a step). If every agent
  succeeds the game moves to **goal**, otherwise to the absorbing zero-reward **fail** state.
- **goal**: team reward ``GOAL_REWARD mean_i exp(-(a_i - GOAL_ACTION)^2 / (2 GOAL_WIDTH^2))``
  (the goal state's own optimal action GOAL_ACTION), then the episode ends.
- **fail** is absorbing with zero reward, so its value is 0 whatever follows; the episode
  terminates on entering it (the same values as staying there, without the idle steps).

Episodes are at most 2 steps. ``info['success']`` [E] is True where an episode ended this step
after reaching the goal (False where it failed; False where not done). Observation of every
agent and the state: one-hot of [start, goal, fail] (the final observation of a failed episode
is the fail one-hot).

Why these constants: staying at 0 earns 1.0 (then fail); playing +-a* earns 0.5 + 0.9 x 4 =
4.1 in expectation for N = 1 (0.5 + 0.81 x 4 = 3.74 for N = 2), so the optimum needs mass at
+-a*; the best policy's success rate is 0.9^N. The game is symmetric in a, so
a zero-mean Gaussian keeps a zero-mean gradient (Theorem 3.1); its strong bump at 0 pulls a
Gaussian's variance down, while the weak side bumps keep an exp(eta Q)-reweighted multi-modal
(diffusion) policy's mass near +-a*. Each agent succeeds independently, so a Gaussian's chance
of reaching the goal is a product over agents (Prop. 3.2).
"""
from __future__ import annotations

from typing import Any

import numpy as np

import dmarl
from dmarl.envs.base import EnvSpec, EpisodeStats, package_versions
from dmarl.registry import register_task

A_STAR = 0.75  # the distant modes +-a* where success is possible
SUCCESS_PROB = 0.9  # per-agent success probability at exactly +-a*
SUCCESS_WIDTH = 0.1  # std of the success-probability bump around +-a*
SUCCESS_WINDOW = 3 * SUCCESS_WIDTH  # success possible iff | |a_i| - A_STAR | < SUCCESS_WINDOW
START_REWARD = 1.0  # strong reward bump at a = 0 in the start state
START_WIDTH = 0.15
SIDE_REWARD = 0.5  # weak reward bumps at +-a* in the start state
SIDE_WIDTH = 0.1
GOAL_ACTION = -0.4  # the goal state's optimal action
GOAL_REWARD = 4.0  # goal-state reward at GOAL_ACTION
GOAL_WIDTH = 0.2
START, GOAL, FAIL = 0, 1, 2


def start_reward(a: np.ndarray) -> np.ndarray:
    """r0(a) per agent (strong bump at 0, weak bumps at +-a*), elementwise."""
    return START_REWARD * np.exp(-0.5 * (a / START_WIDTH) ** 2) + SIDE_REWARD * np.exp(
        -0.5 * ((np.abs(a) - A_STAR) / SIDE_WIDTH) ** 2
    )


def success_probability(a: np.ndarray) -> np.ndarray:
    """Per-agent probability of succeeding from the start state, elementwise."""
    gap = np.abs(a) - A_STAR
    return np.where(np.abs(gap) < SUCCESS_WINDOW, SUCCESS_PROB * np.exp(-0.5 * (gap / SUCCESS_WIDTH) ** 2), 0.0)


def goal_reward(a: np.ndarray) -> np.ndarray:
    """Goal-state reward per agent, elementwise (peak GOAL_REWARD at GOAL_ACTION)."""
    return GOAL_REWARD * np.exp(-0.5 * ((a - GOAL_ACTION) / GOAL_WIDTH) ** 2)


class DecSPGGameEnv:
    """E copies of the N-agent DecSPG game (module docstring)."""

    def __init__(self, num_envs: int, n_agents: int = 2) -> None:
        if n_agents < 1:
            raise ValueError(f"toy/decspg_game: n_agents must be >= 1, got {n_agents}")
        self.num_envs = num_envs
        self.spec = EnvSpec(
            name="toy/decspg_game",
            family="toy",
            agent_ids=tuple(f"agent_{i}" for i in range(n_agents)),
            obs_dims=(3,) * n_agents,
            action_dims=(1,) * n_agents,
            state_dim=3,
            episode_limit=2,
            reward_convention="shared",
            versions={"dmarl": dmarl.__version__, **package_versions("numpy")},
        )
        self._where = np.full(num_envs, START, dtype=np.int64)
        self._rng = np.random.default_rng()
        self._stats = EpisodeStats(num_envs)

    def _observe(self, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        state = np.eye(3, dtype=np.float32)[where]
        return np.repeat(state[:, None, :], self.spec.n_agents, axis=1), state

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every copy to the start state; ``seed`` seeds the success draws."""
        self._rng = np.random.default_rng(seed)
        self._where[:] = START
        self._stats.reset()
        return self._observe(self._where)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        a = np.clip(actions[:, :, 0], -1.0, 1.0)
        at_start = self._where == START
        reward = np.where(at_start, start_reward(a).mean(1), goal_reward(a).mean(1)).astype(np.float32)
        succeeded = (self._rng.random(a.shape) < success_probability(a)).all(axis=1)
        next_where = np.where(at_start, np.where(succeeded, GOAL, FAIL), GOAL)
        terminated = ~(at_start & succeeded)  # fail is absorbing (value 0); goal lasts one step
        truncated = np.zeros(self.num_envs, dtype=bool)
        final_obs, final_state = self._observe(next_where)
        info = self._stats.record(reward, terminated, final_obs, final_state)
        info["success"] = terminated & ~at_start  # the episode ended in the goal state
        self._where = np.where(terminated, START, next_where)
        obs, state = self._observe(self._where)
        return obs, state, reward, terminated, truncated, info

    def close(self) -> None:
        """Nothing to release: numpy arrays only."""


register_task(
    "toy/decspg_game",
    "toy",
    DecSPGGameEnv,
    "DDPL's DecSPG exploration game (paper 002, Sec. 3.2): reward bump at 0, goal only via +-a*; kwarg n_agents",
)
