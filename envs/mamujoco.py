"""MaMuJoCo tasks via ``gymnasium_robotics.mamujoco_v1`` (MuJoCo v5 robots), E copies in a loop.

Every copy is ``mamujoco_v1.parallel_env(scenario, agent_conf, agent_obsk=1)`` (never
``agent_obsk=None``, which turns the task single-agent). One shared team reward
(``"shared"``); ``state`` is ``env.state()`` (the single-agent observation); episodes end by
termination (unhealthy robot: Ant, Hopper, Walker2d) or by truncation at the 1000-step
time limit, reported separately. Boundary actions in [-1, 1] map affinely onto each agent's
box. Returns differ from the papers' mujoco-py (v2) MaMuJoCo: versions go in ``spec.versions``.

Many-agent tasks (DDPL's Ant 8x1 and HumanoidStandup 17x1, not built into gymnasium-robotics):
``agent_conf='custom'`` with ``single_joint_factorization`` (``single_joint_agents=True``), one
agent per actuated joint, agent i driving the robot's action i.

Shifted dynamics (DOM2's shifted environments; task kwargs, e.g. gin ``run.task_kwargs``):
``body_mass_scale`` multiplies every body's mass and rotational inertia (uniform density),
``friction_scale`` every geom's friction coefficients; set once on the compiled MjModel (a
reset does not restore them), recorded in ``spec.versions["shift"]``; 1.0 leaves the task as is.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dmarl.envs.base import EnvSpec, EpisodeStats, box_bounds, package_versions, rescale_actions
from dmarl.registry import register_task


class MaMuJoCoVecEnv:
    """E copies of one MaMuJoCo factorisation behind the padded batched protocol."""

    def __init__(
        self,
        num_envs: int,
        task: str,
        scenario: str,
        agent_conf: str,
        agent_obsk: int = 1,
        body_mass_scale: float = 1.0,
        friction_scale: float = 1.0,
        single_joint_agents: bool = False,
        **env_kwargs: Any,
    ) -> None:
        if single_joint_agents:
            env_kwargs["agent_factorization"] = single_joint_factorization(scenario)
        if agent_conf == "custom" and "agent_factorization" not in env_kwargs:
            raise ValueError(f"{task}: agent_conf='custom' needs an agent_factorization (or single_joint_agents=True)")
        if agent_obsk is None:
            raise ValueError(f"{task}: agent_obsk=None makes MaMuJoCo single-agent; use an int >= 0")
        shift = {"body_mass_scale": body_mass_scale, "friction_scale": friction_scale}
        for name, value in shift.items():
            if not value > 0:
                raise ValueError(f"{task}: {name} must be > 0, got {value!r}")
        shift = {k: float(v) for k, v in shift.items() if v != 1.0}
        from gymnasium_robotics import mamujoco_v1

        self.num_envs = num_envs
        self._envs = [
            mamujoco_v1.parallel_env(scenario, agent_conf, agent_obsk=agent_obsk, **env_kwargs)
            for _ in range(num_envs)
        ]
        for env in self._envs:
            model = env.single_agent_env.unwrapped.model
            model.body_mass[:] *= shift.get("body_mass_scale", 1.0)
            model.body_inertia[:] *= shift.get("body_mass_scale", 1.0)
            model.geom_friction[:] *= shift.get("friction_scale", 1.0)
        env0 = self._envs[0]
        self._agents = list(env0.possible_agents)
        spaces = [env0.action_space(a) for a in self._agents]
        self.spec = EnvSpec(
            name=task,
            family="mamujoco",
            agent_ids=tuple(self._agents),
            obs_dims=tuple(env0.observation_space(a).shape[0] for a in self._agents),
            action_dims=tuple(s.shape[0] for s in spaces),
            state_dim=int(env0.single_agent_env.observation_space.shape[0]),
            episode_limit=int(env0.single_agent_env.spec.max_episode_steps),
            reward_convention="shared",
            versions={
                **package_versions("gymnasium-robotics", "mujoco", "gymnasium", "numpy"),
                **({"shift": ",".join(f"{k}={v:g}" for k, v in sorted(shift.items()))} if shift else {}),
            },
        )
        self._low, self._high = box_bounds(self.spec, [s.low for s in spaces], [s.high for s in spaces])
        self._stats = EpisodeStats(num_envs)

    def _write(self, e: int, agent_obs: dict[str, np.ndarray], obs: np.ndarray, state: np.ndarray) -> None:
        """Write copy e's per-agent observations and global state into row e of the batches."""
        for i, agent in enumerate(self._agents):
            o = agent_obs[agent]
            obs[e, i, : len(o)] = o
        state[e] = self._envs[e].state()

    def _empty(self) -> tuple[np.ndarray, np.ndarray]:
        obs = np.zeros((self.num_envs, self.spec.n_agents, self.spec.obs_max), np.float32)
        return obs, np.empty((self.num_envs, self.spec.state_dim), np.float32)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        obs, state = self._empty()
        for e, env in enumerate(self._envs):
            agent_obs, _ = env.reset(seed=None if seed is None else seed + e)
            self._write(e, agent_obs, obs, state)
        self._stats.reset()
        return obs, state

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        scaled = rescale_actions(actions, self._low, self._high)
        dims = self.spec.action_dims
        agent0 = self._agents[0]
        obs, state = self._empty()
        reward = np.empty(self.num_envs, np.float32)
        terminated = np.empty(self.num_envs, dtype=bool)
        truncated = np.empty(self.num_envs, dtype=bool)
        for e, env in enumerate(self._envs):
            step_actions = {a: scaled[e, i, : dims[i]] for i, a in enumerate(self._agents)}
            agent_obs, rewards, terms, truncs, _ = env.step(step_actions)
            reward[e] = rewards[agent0]
            terminated[e] = terms[agent0]
            truncated[e] = truncs[agent0]
            self._write(e, agent_obs, obs, state)
        done = terminated | truncated
        info = self._stats.record(reward, done, obs.copy(), state.copy())
        for e in np.flatnonzero(done):
            agent_obs, _ = self._envs[e].reset()
            self._write(e, agent_obs, obs, state)
        return obs, state, reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """Copy 0's frame as an RGB array (build the env with ``render_mode='rgb_array'``)."""
        return self._envs[0].render()

    def close(self) -> None:
        for env in self._envs:
            env.close()


def single_joint_factorization(scenario: str) -> dict[str, Any]:
    """One agent per actuated joint (DDPL's Ant 8x1, HumanoidStandup 17x1; gymnasium-robotics has no
    such ``agent_conf``): the scenario's unpartitioned graph from ``get_parts_and_edges`` split into
    single-joint parts ordered by action index (agent i drives the robot's action i), same edges and
    globals, for ``agent_conf='custom'``."""
    from gymnasium_robotics.envs.multiagent_mujoco.obsk import get_parts_and_edges

    parts, edges, globals_ = get_parts_and_edges(scenario, None)
    nodes = sorted((node for part in parts for node in part), key=lambda node: node.act_ids)
    return {"partition": [(node,) for node in nodes], "edges": edges, "globals": globals_}


def _register(name: str, scenario: str, agent_conf: str, **kwargs: Any) -> None:
    custom = "one agent per joint, custom factorisation, " if kwargs.get("single_joint_agents") else ""
    register_task(
        name,
        "mamujoco",
        MaMuJoCoVecEnv,
        f"MaMuJoCo {scenario} {name.rsplit('_', 1)[1]} ({custom}agent_obsk=1, shared reward, 1000 steps)",
        task=name,
        scenario=scenario,
        agent_conf=agent_conf,
        **kwargs,
    )


for _scenario, _conf in [
    ("Ant", "2x4"),
    ("Ant", "2x4d"),
    ("Ant", "4x2"),
    ("HalfCheetah", "2x3"),
    ("HalfCheetah", "6x1"),
    ("Walker2d", "2x3"),
    ("Swimmer", "2x1"),
    ("Hopper", "3x1"),
]:
    _register(f"mamujoco/{_scenario.lower()}_{_conf}", _scenario, _conf)
# DDPL's many-agent tasks: one agent per joint through a custom factorisation
_register("mamujoco/ant_8x1", "Ant", "custom", single_joint_agents=True)
_register("mamujoco/humanoidstandup_17x1", "HumanoidStandup", "custom", single_joint_agents=True)
