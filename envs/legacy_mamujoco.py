"""MaMuJoCo tasks that speak the layouts of the public offline datasets' producers.

The offline datasets were recorded in older MaMuJoCo versions (mujoco-py, gym v2 robots) whose
observations and action orders differ from ``gymnasium_robotics.mamujoco_v1``. Each task here
runs gymnasium-robotics' robot (MuJoCo v5 physics: returns differ from the papers', versions
go in ``spec.versions``) but observes and acts like its producer, so a policy trained on the
data acts in it:

- ``omar/halfcheetah_2x3`` (OMAR, Pan et al. 2022): v1 HalfCheetah 2x3 with ``agent_obsk=0``
  and no global categories (6 observations per agent); actions map as in v1; state = the
  17-d single-agent observation (OMAR's ``states_i``).
- ``og_marl/halfcheetah_2x3`` (OG-MARL ``mamujoco/2halfcheetah``, schroederdewitt
  multiagent_mujoco v1.1.0): 13 observations = v1's 7 local values (``agent_obsk=1``, no
  global categories) + ``[qvel0, qvel2, qvel1, qpos0, qpos2, qpos1]`` (the root joints);
  each agent's 3 actions in reversed order relative to v1; state 17-d.
- ``omiga/halfcheetah_6x1``, ``omiga/hopper_3x1``, ``omiga/ant_2x4`` (OMIGA, Wang et al.
  2023, multiagent_mujoco v2): observation of agent i = ``z(concat(g, onehot_i))`` where g is
  the gym-v2 global observation (HalfCheetah 17, Hopper 11 with qvel clipped to [-10, 10],
  Ant 111 = qpos[2:], qvel, clip(cfrc_ext, -1, 1) over all 14 bodies) and ``z`` z-normalises
  each vector by its own mean and standard deviation (``obs_normalisation="per_vector"``, the
  producer's rule; ``"none"`` keeps the raw concatenation). Actions are split contiguously:
  the joint action is the agents' actions concatenated, in the robot's actuator order (for
  Ant 2x4 this differs from v1's partition). The state is agent 0's observation, as OMIGA
  stores it (``s[:, 0]``).

All tasks: one shared team reward (the robot's v5 reward), termination when the robot is
unhealthy (Hopper, Ant), truncation at 1000 steps. ``set_physics`` places a copy at a
recorded state (used to replay producers' transitions).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from dmarl.envs.base import EnvSpec, EpisodeStats, package_versions
from dmarl.envs.mamujoco import MaMuJoCoVecEnv
from dmarl.registry import register_task

OBS_NORMALISATIONS = ("per_vector", "none")
V2_POSITION_SKIP = {"HalfCheetah": 1, "Hopper": 1, "Ant": 2}  # qpos entries the gym-v2 observation omits
ROOT_ORDER = (0, 2, 1)  # og-marl 2halfcheetah appends qvel[0, 2, 1] then qpos[0, 2, 1]


def per_vector_z(x: np.ndarray) -> np.ndarray:
    """``(x - mean(x)) / std(x)`` over the last axis (population std, as numpy's default)."""
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(axis=-1, keepdims=True)) / x.std(axis=-1, keepdims=True)


def unnormalise_one_hot(z: np.ndarray, n_agents: int) -> np.ndarray:
    """Invert ``per_vector_z`` on ``[..., D]`` vectors ending in a one-hot of ``n_agents`` (>= 2):
    the one-hot's 0 and 1 entries fix the vector's mean and scale. Returns the raw vectors."""
    z = np.asarray(z, dtype=np.float64)
    hot = z[..., -n_agents:]
    one, zero = hot.max(axis=-1, keepdims=True), hot.min(axis=-1, keepdims=True)
    scale = 1.0 / (one - zero)
    return (z - zero) * scale


def v2_observation(env: Any, scenario: str) -> np.ndarray:
    """The gym-v2 ``_get_obs()`` of ``scenario`` from a v1 env's current MuJoCo data."""
    data = env.single_agent_env.unwrapped.data
    qpos, qvel = data.qpos.flat[V2_POSITION_SKIP[scenario]:], data.qvel.flat[:]
    if scenario == "Hopper":
        qvel = np.clip(qvel, -10.0, 10.0)
    parts = [qpos, qvel]
    if scenario == "Ant":
        parts.append(np.clip(data.cfrc_ext, -1.0, 1.0).flat)
    return np.concatenate(parts).astype(np.float64)


def set_physics(env: Any, scenario: str, v2_obs: np.ndarray, root: np.ndarray | None = None) -> None:
    """Place a v1 env's robot at the state a gym-v2 observation records (positions it omits
    are ``root``, default 0: they do not change the dynamics or the reward)."""
    robot = env.single_agent_env.unwrapped
    skip = V2_POSITION_SKIP[scenario]
    nq, nv = robot.model.nq, robot.model.nv
    qpos = np.concatenate([np.zeros(skip) if root is None else root, v2_obs[: nq - skip]])
    robot.set_state(qpos, np.asarray(v2_obs[nq - skip : nq - skip + nv], dtype=np.float64))


class LegacyMaMuJoCoVecEnv:
    """E copies of a gymnasium-robotics MaMuJoCo robot observed and driven in a producer's layout.

    ``observe(env) -> [N] per-agent observations``, ``joint_action(env, per-agent actions in
    the robot's boxes) -> the single-agent action`` and ``state(env, observations)`` define
    the layout; the rest (stepping, resets, statistics) is shared. ``env_kwargs`` go to the
    robot (e.g. ``max_episode_steps``).
    """

    def __init__(
        self,
        num_envs: int,
        task: str,
        scenario: str,
        agent_conf: str,
        agent_obsk: int,
        observe: Callable[[Any], list[np.ndarray]],
        joint_action: Callable[[Any, list[np.ndarray]], np.ndarray],
        state: Callable[[Any, list[np.ndarray]], np.ndarray],
        **env_kwargs: Any,
    ) -> None:
        from gymnasium_robotics import mamujoco_v1

        self.num_envs = num_envs
        self.scenario = scenario
        self._observe, self._joint_action, self._state = observe, joint_action, state
        self._envs = [
            mamujoco_v1.parallel_env(scenario, agent_conf, agent_obsk=agent_obsk, global_categories=(), **env_kwargs)
            for _ in range(num_envs)
        ]
        env0 = self._envs[0]
        robot = env0.single_agent_env
        robot.reset(seed=0)
        obs0 = self._observe(env0)
        partitions = env0.agent_action_partitions
        self.spec = EnvSpec(
            name=task,
            family="mamujoco",
            agent_ids=tuple(env0.possible_agents),
            obs_dims=tuple(len(o) for o in obs0),
            action_dims=tuple(len(p) for p in partitions),
            state_dim=len(self._state(env0, obs0)),
            episode_limit=int(robot.spec.max_episode_steps),
            reward_convention="shared",
            versions=package_versions("gymnasium-robotics", "mujoco", "gymnasium", "numpy"),
        )
        self._low, self._high = robot.action_space.low[0], robot.action_space.high[0]
        self._stats = EpisodeStats(num_envs)

    def _empty(self) -> tuple[np.ndarray, np.ndarray]:
        obs = np.zeros((self.num_envs, self.spec.n_agents, self.spec.obs_max), np.float32)
        return obs, np.empty((self.num_envs, self.spec.state_dim), np.float32)

    def _write(self, e: int, obs: np.ndarray, state: np.ndarray) -> None:
        env = self._envs[e]
        agent_obs = self._observe(env)
        for i, o in enumerate(agent_obs):
            obs[e, i, : len(o)] = o
        state[e] = self._state(env, agent_obs)

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """The current ``obs, state`` of every copy (e.g. after ``set_physics``)."""
        obs, state = self._empty()
        for e in range(self.num_envs):
            self._write(e, obs, state)
        return obs, state

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        for e, env in enumerate(self._envs):
            env.single_agent_env.reset(seed=None if seed is None else seed + e)
        self._stats.reset()
        return self.observe()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        scaled = self._low + (np.clip(actions, -1.0, 1.0) + 1.0) * 0.5 * (self._high - self._low)
        dims = self.spec.action_dims
        obs, state = self._empty()
        reward = np.empty(self.num_envs, np.float32)
        terminated = np.empty(self.num_envs, dtype=bool)
        truncated = np.empty(self.num_envs, dtype=bool)
        for e, env in enumerate(self._envs):
            joint = self._joint_action(env, [scaled[e, i, : dims[i]] for i in range(len(dims))])
            _, reward[e], terminated[e], truncated[e], _ = env.single_agent_env.step(joint)
            self._write(e, obs, state)
        done = terminated | truncated
        info = self._stats.record(reward, done, obs.copy(), state.copy())
        for e in np.flatnonzero(done):
            self._envs[e].single_agent_env.reset()
            self._write(e, obs, state)
        return obs, state, reward, terminated, truncated, info

    def close(self) -> None:
        for env in self._envs:
            env.close()


def _v1_observe(env: Any) -> list[np.ndarray]:
    return [np.asarray(o) for o in env._get_obs().values()]


def _v1_state(env: Any, _obs: list[np.ndarray]) -> np.ndarray:
    return np.asarray(env.state())


def _og_marl_observe(env: Any) -> list[np.ndarray]:
    data = env.single_agent_env.unwrapped.data
    root = np.concatenate([data.qvel[list(ROOT_ORDER)], data.qpos[list(ROOT_ORDER)]])
    return [np.concatenate([o, root]) for o in _v1_observe(env)]


def _og_marl_action(env: Any, actions: list[np.ndarray]) -> np.ndarray:
    return env.map_local_actions_to_global_action({a: x[::-1] for a, x in zip(env.possible_agents, actions)})


def og_marl_halfcheetah(num_envs: int, task: str, **env_kwargs: Any) -> LegacyMaMuJoCoVecEnv:
    """OG-MARL ``mamujoco/2halfcheetah`` layout (module docstring)."""
    return LegacyMaMuJoCoVecEnv(
        num_envs, task, "HalfCheetah", "2x3", 1, _og_marl_observe, _og_marl_action, _v1_state, **env_kwargs
    )


def omiga(
    num_envs: int, task: str, scenario: str, agent_conf: str, obs_normalisation: str = "per_vector", **env_kwargs: Any
) -> LegacyMaMuJoCoVecEnv:
    """OMIGA layout (module docstring) of ``scenario agent_conf``."""
    if obs_normalisation not in OBS_NORMALISATIONS:
        raise ValueError(f"{task}: obs_normalisation {obs_normalisation!r} not in {OBS_NORMALISATIONS}")

    def observe(env: Any) -> list[np.ndarray]:
        g, n = v2_observation(env, scenario), len(env.possible_agents)
        raw = [np.concatenate([g, np.eye(n)[i]]) for i in range(n)]
        return [per_vector_z(x) if obs_normalisation == "per_vector" else x for x in raw]

    def joint_action(_env: Any, actions: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(actions)

    return LegacyMaMuJoCoVecEnv(
        num_envs, task, scenario, agent_conf, 0, observe, joint_action, lambda _env, obs: obs[0], **env_kwargs
    )


register_task(
    "omar/halfcheetah_2x3",
    "mamujoco",
    MaMuJoCoVecEnv,
    "OMAR's HalfCheetah 2x3 layout: agent_obsk=0, no global categories (obs 6), shared reward, 1000 steps",
    task="omar/halfcheetah_2x3",
    scenario="HalfCheetah",
    agent_conf="2x3",
    agent_obsk=0,
    global_categories=(),
)
register_task(
    "og_marl/halfcheetah_2x3",
    "mamujoco",
    og_marl_halfcheetah,
    "OG-MARL mamujoco/2halfcheetah layout (multiagent_mujoco v1.1: obs 13, reversed per-agent actions)",
    task="og_marl/halfcheetah_2x3",
)
for _scenario, _conf in (("HalfCheetah", "6x1"), ("Hopper", "3x1"), ("Ant", "2x4")):
    _name = f"omiga/{_scenario.lower()}_{_conf}"
    register_task(
        _name,
        "mamujoco",
        omiga,
        f"OMIGA's {_scenario}-v2 {_conf} layout: z-normalised (v2 global obs, one-hot id), contiguous actions",
        task=_name,
        scenario=_scenario,
        agent_conf=_conf,
    )
