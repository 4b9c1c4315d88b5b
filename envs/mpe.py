"""MPE tasks via ``mpe2`` (continuous actions), E copies stepped in a Python loop.

Conventions (all documented in the spec or here):

- Actions: boundary [-1, 1] -> mpe2's [0, 1]^A by ``(a + 1) / 2`` (A = 5 = [no-op, left,
  right, down, up]; world_comm's leader has 9 = 5 + 4 say; simple_reference 15 = 5 + 10 comm).
- Team reward: ``"sum"`` of the learning agents' rewards by default (what the MPE papers
  report); factory kwarg ``reward_convention`` in {"sum", "mean", "agent0"}.
- ``state``: concatenation of *all* agents' observations in mpe2 agent order (mpe2's
  ``env.state()``), heuristic-controlled agents included.
- Episodes truncate after ``max_cycles = 25`` steps; no MPE task here terminates early.
- Shifted dynamics (DOM2's shifted environments; task kwargs, e.g. gin ``run.task_kwargs``):
  ``agent_accel_scale`` multiplies the learning team's action sensitivity (mpe2's ``accel``,
  5.0 where a scenario leaves it unset), ``agent_max_speed`` caps their speed (None keeps the
  scenario's cap; simple_spread has none), ``landmark_size_scale`` multiplies every landmark's
  radius (a dynamic change only where landmarks collide: simple_tag, simple_world_comm). They
  are set once on the world ``make_world`` built (no scenario's ``reset_world`` resets them) and
  recorded in ``spec.versions["shift"]``; the defaults leave the task exactly as mpe2 builds it.
- Competitive scenarios: only the learning team is exposed; the other side is driven by a
  fixed heuristic whose name is recorded in ``spec.versions["opponent_policy"]``:
  ``simple_adversary`` learns the good agents against ``nearest_occupied_landmark-v1``
  (the adversary heads for the landmark closest to any good agent, its best guess of the
  goal); ``simple_tag`` / ``simple_world_comm`` learn the adversaries (predators) against
  ``flee_nearest_predator-v1`` prey (unit vector away from the nearest predator minus its own
  position, which keeps it inside the arena; full acceleration).

The copies are mpe2 ``raw_env`` objects driven through ``SimpleEnv._execute_world_step`` (the
hook mpe2's own scenarios override) rather than the AEC/parallel wrappers, which halves the
per-step cost; ``tests/test_envs.py`` checks the result against ``parallel_env``.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np

from dmarl.envs.base import EnvSpec, EpisodeStats, box_bounds, package_versions, rescale_actions
from dmarl.registry import register_task

MPE_REWARD_CONVENTIONS = ("sum", "mean", "agent0")
TEAMS = ("all", "good", "adversary")


def check_mpe_convention(convention: str) -> str:
    """Validate an MPE team-reward convention (per-agent rewards reduced over the team)."""
    if convention not in MPE_REWARD_CONVENTIONS:
        raise ValueError(f"MPE reward_convention must be one of {MPE_REWARD_CONVENTIONS}, got {convention!r}")
    return convention


def reduce_team_reward(rewards: Any, convention: str, xp: Any = np) -> Any:
    """Team reward from per-agent rewards ``[..., N]`` (numpy or jax.numpy via ``xp``)."""
    if convention == "sum":
        return xp.sum(rewards, axis=-1)
    if convention == "mean":
        return xp.mean(rewards, axis=-1)
    return rewards[..., 0]


def _move(direction: np.ndarray) -> np.ndarray:
    """mpe2 continuous movement action [0, 1]^5 accelerating fully along ``direction``."""
    d = direction / (np.linalg.norm(direction) + 1e-8)
    return np.array([0.0, max(-d[0], 0.0), max(d[0], 0.0), max(-d[1], 0.0), max(d[1], 0.0)], np.float32)


def flee_nearest_predator(agent: Any, world: Any) -> np.ndarray:
    """Prey heuristic: away from the nearest adversary, pulled back toward the origin."""
    pos = agent.state.p_pos
    preds = np.array([a.state.p_pos for a in world.agents if a.adversary])
    away = pos - preds[np.argmin(np.sum((preds - pos) ** 2, axis=1))]
    return _move(away / (np.linalg.norm(away) + 1e-8) - pos)


def nearest_occupied_landmark(agent: Any, world: Any) -> np.ndarray:
    """Adversary heuristic: head for the landmark closest to any good agent."""
    goods = np.array([a.state.p_pos for a in world.agents if not a.adversary])
    marks = np.array([lm.state.p_pos for lm in world.landmarks])
    dist = np.sum((marks[:, None, :] - goods[None, :, :]) ** 2, axis=2).min(axis=1)
    return _move(marks[np.argmin(dist)] - agent.state.p_pos)


OPPONENT_POLICIES: dict[str, Callable[[Any, Any], np.ndarray]] = {
    "flee_nearest_predator-v1": flee_nearest_predator,
    "nearest_occupied_landmark-v1": nearest_occupied_landmark,
}
MPE_DEFAULT_SENSITIVITY = 5.0  # mpe2 SimpleEnv._set_action: the action scale when agent.accel is None


def mpe_shift(task: str, accel_scale: float, max_speed: float | None, landmark_size_scale: float) -> dict[str, float]:
    """The non-default shift parameters of an MPE task (empty: the unshifted task); checks ranges."""
    for name, value in (("agent_accel_scale", accel_scale), ("landmark_size_scale", landmark_size_scale)):
        if not value > 0:
            raise ValueError(f"{task}: {name} must be > 0, got {value!r}")
    if max_speed is not None and not max_speed > 0:
        raise ValueError(f"{task}: agent_max_speed must be > 0 or None, got {max_speed!r}")
    shift = {"agent_accel_scale": accel_scale, "landmark_size_scale": landmark_size_scale}
    shift = {k: float(v) for k, v in shift.items() if v != 1.0}
    return shift if max_speed is None else {**shift, "agent_max_speed": float(max_speed)}


def apply_mpe_shift(world: Any, team: list[int], shift: dict[str, float]) -> None:
    """Shift an mpe2 world in place: the team's accel and speed cap, every landmark's size."""
    for i in team:
        agent = world.agents[i]
        base = MPE_DEFAULT_SENSITIVITY if agent.accel is None else agent.accel
        agent.accel = base * shift.get("agent_accel_scale", 1.0)
        agent.max_speed = shift.get("agent_max_speed", agent.max_speed)
    for landmark in world.landmarks:
        landmark.size *= shift.get("landmark_size_scale", 1.0)


class MPEVecEnv:
    """E copies of one mpe2 scenario; the learning team's agents are the protocol's agents."""

    def __init__(
        self,
        num_envs: int,
        task: str,
        scenario: str,
        team: str = "all",
        opponent_policy: str | None = None,
        reward_convention: str = "sum",
        max_cycles: int = 25,
        agent_accel_scale: float = 1.0,
        agent_max_speed: float | None = None,
        landmark_size_scale: float = 1.0,
        **env_kwargs: Any,
    ) -> None:
        if team not in TEAMS:
            raise ValueError(f"{task}: team must be one of {TEAMS}, got {team!r}")
        shift = mpe_shift(task, agent_accel_scale, agent_max_speed, landmark_size_scale)
        self._convention = check_mpe_convention(reward_convention)
        self.num_envs = num_envs
        self._envs = [self._make_copy(scenario, max_cycles, env_kwargs) for _ in range(num_envs)]
        env0 = self._envs[0]
        agents = env0.world.agents
        in_team = [team == "all" or agent.adversary == (team == "adversary") for agent in agents]
        self._team = [i for i, member in enumerate(in_team) if member]
        others = [i for i, member in enumerate(in_team) if not member]
        if others and opponent_policy not in OPPONENT_POLICIES:
            raise ValueError(f"{task}: opponent_policy must be one of {sorted(OPPONENT_POLICIES)}")
        self._opponents = [(i, OPPONENT_POLICIES[opponent_policy]) for i in others] if others else []
        if shift:
            for env in self._envs:
                apply_mpe_shift(env.world, self._team, shift)
        self._team_names = team_names = [agents[i].name for i in self._team]
        versions = package_versions("mpe2", "pettingzoo", "gymnasium", "numpy")
        if self._opponents:
            versions["opponent_policy"] = str(opponent_policy)
        if shift:
            versions["shift"] = ",".join(f"{k}={v:g}" for k, v in sorted(shift.items()))
        self.spec = EnvSpec(
            name=task,
            family="mpe",
            agent_ids=tuple(team_names),
            obs_dims=tuple(env0.observation_space(n).shape[0] for n in team_names),
            action_dims=tuple(env0.action_space(n).shape[0] for n in team_names),
            state_dim=int(env0.state_space.shape[0]),
            episode_limit=max_cycles,
            reward_convention=reward_convention,
            versions=versions,
        )
        self._low, self._high = box_bounds(
            self.spec,
            [env0.action_space(n).low for n in team_names],
            [env0.action_space(n).high for n in team_names],
        )
        self._max_cycles = max_cycles
        self._stats = EpisodeStats(num_envs)

    def _make_copy(self, scenario: str, max_cycles: int, env_kwargs: dict[str, Any]) -> Any:
        """One mpe2 ``raw_env`` copy (subclasses build other ``SimpleEnv`` copies: envs/omar_mpe.py)."""
        module = importlib.import_module(f"mpe2.{scenario}")
        return module.raw_env(max_cycles=max_cycles, continuous_actions=True, **env_kwargs)

    def _observe(self, e: int, obs: np.ndarray, state: np.ndarray) -> None:
        """Write copy e's team observations and global state into row e of the batches."""
        env = self._envs[e]
        all_obs = [env.scenario.observation(agent, env.world) for agent in env.world.agents]
        state[e] = np.concatenate(all_obs)
        for slot, i in enumerate(self._team):
            obs[e, slot, : len(all_obs[i])] = all_obs[i]

    def _empty(self) -> tuple[np.ndarray, np.ndarray]:
        obs = np.zeros((self.num_envs, self.spec.n_agents, self.spec.obs_max), np.float32)
        return obs, np.empty((self.num_envs, self.spec.state_dim), np.float32)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        obs, state = self._empty()
        for e, env in enumerate(self._envs):
            env.reset(seed=None if seed is None else seed + e)
            self._observe(e, obs, state)
        self._stats.reset()
        return obs, state

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        scaled = rescale_actions(actions, self._low, self._high)
        dims = self.spec.action_dims
        obs, state = self._empty()
        team_rewards = np.empty((self.num_envs, self.spec.n_agents), np.float64)
        truncated = np.zeros(self.num_envs, dtype=bool)
        terminated = np.zeros(self.num_envs, dtype=bool)
        for e, env in enumerate(self._envs):
            for slot, i in enumerate(self._team):
                env.current_actions[i] = scaled[e, slot, : dims[slot]]
            for i, policy in self._opponents:
                env.current_actions[i] = policy(env.world.agents[i], env.world)
            env._execute_world_step()
            env.steps += 1
            team_rewards[e] = [env.rewards[n] for n in self._team_names]
            truncated[e] = env.steps >= self._max_cycles
            terminated[e] = not truncated[e] and env.scenario.is_terminal(env.world)
            self._observe(e, obs, state)
        reward = reduce_team_reward(team_rewards, self._convention).astype(np.float32)
        done = terminated | truncated
        info = self._stats.record(reward, done, obs.copy(), state.copy())
        for e in np.flatnonzero(done):
            self._envs[e].reset()
            self._observe(e, obs, state)
        return obs, state, reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """Copy 0's frame as an RGB array (build the env with ``render_mode='rgb_array'``)."""
        return self._envs[0].render()

    def close(self) -> None:
        for env in self._envs:
            env.close()


def _register(name: str, description: str, **kwargs: Any) -> None:
    register_task(name, "mpe", MPEVecEnv, description, task=name, **kwargs)


_register("mpe/simple_spread_n3", "cooperative navigation, 3 agents / 3 landmarks", scenario="simple_spread_v3", N=3)
_register("mpe/simple_spread_n4", "cooperative navigation, 4 agents / 4 landmarks", scenario="simple_spread_v3", N=4)
_register(
    "mpe/simple_adversary",
    "physical deception: 2 good agents vs a heuristic adversary",
    scenario="simple_adversary_v3",
    team="good",
    opponent_policy="nearest_occupied_landmark-v1",
)
_register(
    "mpe/simple_tag",
    "predator-prey: 3 predators vs 1 heuristic fleeing prey",
    scenario="simple_tag_v3",
    team="adversary",
    opponent_policy="flee_nearest_predator-v1",
)
_register(
    "mpe/simple_world_comm",
    "predator-prey with leader, forests, food: 4 predators vs 2 heuristic fleeing prey",
    scenario="simple_world_comm_v3",
    team="adversary",
    opponent_policy="flee_nearest_predator-v1",
)
_register("mpe/simple_reference", "2 agents, each guides the other to a landmark", scenario="simple_reference_v3")
