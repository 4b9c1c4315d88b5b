"""Build a registered task's batched env by name, optionally in global-observation mode."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dmarl.envs.base import EnvSpec, MultiAgentVecEnv
from dmarl.registry import get_task


class GlobalObservation:
    """Each agent observes the global state followed by its one-hot agent id (HARL/OMIGA).

    Observation dims become ``state_dim + N`` for every agent (no padding); ``info["final_obs"]``
    is rebuilt from ``info["final_state"]``. The spec name gets a ``+global_obs`` suffix.
    """

    def __init__(self, env: MultiAgentVecEnv) -> None:
        self.env = env
        self.num_envs = env.num_envs
        inner = env.spec
        n = inner.n_agents
        self.spec: EnvSpec = dataclasses.replace(
            inner, name=f"{inner.name}+global_obs", obs_dims=(inner.state_dim + n,) * n
        )
        self._ids = np.eye(n, dtype=np.float32)

    def _global(self, state: np.ndarray) -> np.ndarray:
        n, s = self.spec.n_agents, state.shape[1]
        obs = np.empty((state.shape[0], n, s + n), np.float32)
        obs[:, :, :s] = state[:, None, :]
        obs[:, :, s:] = self._ids
        return obs

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        _, state = self.env.reset(seed)
        return self._global(state), state

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        _, state, reward, terminated, truncated, info = self.env.step(actions)
        info = {**info, "final_obs": self._global(info["final_state"])}
        return self._global(state), state, reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        return self.env.render()

    def close(self) -> None:
        self.env.close()


def make_env(task: str, num_envs: int, *, global_obs: bool = False, **overrides: Any) -> MultiAgentVecEnv:
    """E copies of a registered task; ``overrides`` replace the registered factory kwargs
    (e.g. ``reward_convention="mean"`` for MPE, ``n_agents=4`` for the coordination game)."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    entry = get_task(task)
    env = entry.factory(num_envs=num_envs, **{**entry.kwargs, **overrides})
    return GlobalObservation(env) if global_obs else env
