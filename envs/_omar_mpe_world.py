"""OMAR's vendored MPE (ling-pan/OMAR ``multiagent-particle-envs``) rebuilt on mpe2's core.

Imported lazily by ``envs/omar_mpe.py`` (it imports mpe2, hence pygame). Everything here is
mpe2's ``World`` / ``Agent`` / ``Landmark`` / ``BaseScenario`` / ``SimpleEnv`` with the
vendored code's differences as overrides:

- ``OmarWorld.apply_action_force``: force ``mass * accel * u`` where ``u`` already carries the
  env's sensitivity ``accel`` (so ``mass * accel**2 * a``: 9a for predators, 16a for prey; 5a
  for agents without ``accel``); mpe2 applies ``u`` itself (3a, 4a, 5a).
- ``OmarWorld.integrate_state``: damping, force, speed clip, *then* ``p += v' dt``
  (semi-implicit Euler); mpe2 moves with the old velocity first (``p += v dt``), so even spread,
  whose forces agree, would drift from OMAR's data without this override.
- Collisions: OMAR scales contact forces by the mass ratio; every mass here is 1, so mpe2's
  ``get_collision_force`` gives the same forces. No motor noise (no scenario sets ``u_noise``).
- Scenarios follow the vendored ``simple_spread.py`` (OMAR's reward), ``simple_tag.py`` (shaped
  rewards) and ``simple_world.py`` (OMAR's own 3-vs-1 world, every agent a "leader", silent);
  reset distributions are the vendored ones (world draws each food/forest once; the vendored
  code draws them twice, which has the same distribution).
- ``OmarSimpleEnv``: actions are OMAR's 2-D ``a`` in [-1, 1]; ``_set_action`` maps them to the
  suite's 5-D MPE action ``[-1, -ax, ax, -ay, ay]`` and then mpe2's [0, 1]^5 input by
  ``(x + 1) / 2``, which mpe2 turns into ``u = accel * (right - left, up - down) = accel * a``.
  A ``prey`` controller (if given) replaces the good agents' actions before each world step;
  ``last_actions`` / ``last_rewards`` keep the step's applied actions and per-agent rewards
  (an auto-reset clears mpe2's own).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from gymnasium import spaces
from mpe2._mpe_utils.core import Agent, Landmark, World
from mpe2._mpe_utils.scenario import BaseScenario
from mpe2._mpe_utils.simple_env import SimpleEnv

PreyController = Callable[[Any, Any, Any], np.ndarray]  # (agent, world, scenario) -> OMAR 2-D action


def suite_action(a: np.ndarray) -> np.ndarray:
    """OMAR's 2-D action ``(ax, ay)`` as the suite's 5-D MPE action ``[-1, -ax, ax, -ay, ay]``."""
    a = np.asarray(a, dtype=np.float64)
    return np.array([-1.0, -a[0], a[0], -a[1], a[1]])


class OmarWorld(World):
    """mpe2's World with the vendored MPE's action force and integration order."""

    def apply_action_force(self, p_force: list[Any]) -> list[Any]:
        for i, agent in enumerate(self.agents):
            if agent.movable:
                scale = agent.mass * agent.accel if agent.accel is not None else agent.mass
                p_force[i] = scale * agent.action.u
        return p_force

    def integrate_state(self, p_force: list[Any]) -> None:
        for i, entity in enumerate(self.entities):
            if not entity.movable:
                continue
            vel = entity.state.p_vel * (1 - self.damping)
            if p_force[i] is not None:
                vel = vel + (p_force[i] / entity.mass) * self.dt
            if entity.max_speed is not None:
                speed = np.sqrt(np.square(vel[0]) + np.square(vel[1]))
                if speed > entity.max_speed:
                    vel = vel / speed * entity.max_speed
            entity.state.p_vel = vel
            entity.state.p_pos = entity.state.p_pos + vel * self.dt


def _agent(name: str, size: float, adversary: bool = False, accel: float | None = None,
           max_speed: float | None = None) -> Agent:
    agent = Agent()
    agent.name, agent.size, agent.adversary = name, size, adversary
    agent.collide, agent.silent = True, True
    agent.accel, agent.max_speed = accel, max_speed
    return agent


def _landmark(name: str, size: float, collide: bool) -> Landmark:
    landmark = Landmark()
    landmark.name, landmark.size, landmark.collide, landmark.movable = name, size, collide, False
    return landmark


def dist(a: Any, b: Any) -> float:
    return float(np.sqrt(np.sum(np.square(a.state.p_pos - b.state.p_pos))))


def is_collision(a: Any, b: Any) -> bool:
    return dist(a, b) < a.size + b.size


def _place(world: OmarWorld, rng: Any, agent_box: float, landmark_box: float) -> None:
    for agent in world.agents:
        agent.state.p_pos = rng.uniform(-agent_box, agent_box, world.dim_p)
        agent.state.p_vel = np.zeros(world.dim_p)
        agent.state.c = np.zeros(world.dim_c)
    for landmark in world.landmarks:
        landmark.state.p_pos = rng.uniform(-landmark_box, landmark_box, world.dim_p)
        landmark.state.p_vel = np.zeros(world.dim_p)


def _bound(x: float) -> float:
    """The vendored prey's out-of-arena penalty per coordinate."""
    if x < 0.9:
        return 0.0
    if x < 1.0:
        return (x - 0.9) * 10
    return min(float(np.exp(2 * x - 2)), 10.0)


class OmarSpread(BaseScenario):
    """Cooperative navigation, 3 agents / 3 landmarks; reward ``sum_l min(1/d_l, 10) - 5 * collisions``."""

    def make_world(self, n: int = 3) -> OmarWorld:
        world = OmarWorld()
        world.dim_c = 2
        world.agents = [_agent(f"agent_{i}", 0.15) for i in range(n)]
        world.landmarks = [_landmark(f"landmark_{i}", 0.05, False) for i in range(n)]
        return world

    def reset_world(self, world: OmarWorld, np_random: Any) -> None:
        _place(world, np_random, 1.0, 1.0)

    def reward(self, agent: Agent, world: OmarWorld) -> float:
        rew = 0.0
        for landmark in world.landmarks:
            d = min(dist(a, landmark) for a in world.agents)
            rew += 10.0 if d <= 0.1 else min(1.0 / d, 10.0)
        return rew - 5.0 * sum(is_collision(a, agent) for a in world.agents if a is not agent)

    def observation(self, agent: Agent, world: OmarWorld) -> np.ndarray:
        others = [o for o in world.agents if o is not agent]
        return np.concatenate(
            [agent.state.p_vel, agent.state.p_pos]
            + [lm.state.p_pos - agent.state.p_pos for lm in world.landmarks]
            + [o.state.p_pos - agent.state.p_pos for o in others]
            + [o.state.c for o in others]
        )


class _PredatorPrey(BaseScenario):
    """Shared parts of tag and world: 3 predators (adversaries) then 1 prey."""

    prey_size = 0.05
    collision_bonus = 10.0
    bound_weight = 1.0

    def adversaries(self, world: OmarWorld) -> list[Agent]:
        return [a for a in world.agents if a.adversary]

    def good_agents(self, world: OmarWorld) -> list[Agent]:
        return [a for a in world.agents if not a.adversary]

    def _agents(self) -> list[Agent]:
        predators = [_agent(f"adversary_{i}", 0.075, True, 3.0, 1.0) for i in range(3)]
        return predators + [_agent("agent_0", self.prey_size, False, 4.0, 1.3)]

    def reward(self, agent: Agent, world: OmarWorld) -> float:
        return self.adversary_reward(world) if agent.adversary else self.agent_reward(agent, world)

    def adversary_reward(self, world: OmarWorld) -> float:
        """Shaped: ``-0.1 * sum_adv min_prey d`` plus the bonus per (prey, predator) contact."""
        preys, advs = self.good_agents(world), self.adversaries(world)
        rew = -0.1 * sum(min(dist(p, adv) for p in preys) for adv in advs)
        return rew + self.collision_bonus * sum(is_collision(p, adv) for p in preys for adv in advs)

    def agent_reward(self, agent: Agent, world: OmarWorld) -> float:
        advs = self.adversaries(world)
        rew = 0.1 * sum(dist(agent, adv) for adv in advs)
        rew -= self.collision_bonus * sum(is_collision(adv, agent) for adv in advs)
        return rew - self.bound_weight * sum(_bound(abs(float(x))) for x in agent.state.p_pos)


class OmarTag(_PredatorPrey):
    """Predator-prey: 3 predators, 1 prey, 2 obstacles (obs 16, 16, 16, 14)."""

    def make_world(self) -> OmarWorld:
        world = OmarWorld()
        world.dim_c = 2
        world.agents = self._agents()
        world.landmarks = [_landmark(f"landmark_{i}", 0.2, True) for i in range(2)]
        return world

    def reset_world(self, world: OmarWorld, np_random: Any) -> None:
        _place(world, np_random, 1.0, 0.9)

    def observation(self, agent: Agent, world: OmarWorld) -> np.ndarray:
        others = [o for o in world.agents if o is not agent]
        return np.concatenate(
            [agent.state.p_vel, agent.state.p_pos]
            + [lm.state.p_pos - agent.state.p_pos for lm in world.landmarks]
            + [o.state.p_pos - agent.state.p_pos for o in others]
            + [o.state.p_vel for o in others if not o.adversary]
        )


class OmarWorldScenario(_PredatorPrey):
    """OMAR's simple_world: 3 predators, 1 prey; 1 obstacle, 2 food, 2 forests (obs 24, 24, 24, 22).

    Every agent is a "leader" in the vendored code, so forests never hide anyone; the last two
    observation entries are +1/-1 flags: the agent is inside forest 0 / forest 1.
    """

    prey_size = 0.045
    collision_bonus = 5.0
    bound_weight = 2.0

    def make_world(self) -> OmarWorld:
        world = OmarWorld()
        world.dim_c = 4
        world.agents = self._agents()
        world.food = [_landmark(f"food_{i}", 0.03, False) for i in range(2)]
        world.forests = [_landmark(f"forest_{i}", 0.3, False) for i in range(2)]
        world.landmarks = [_landmark("landmark_0", 0.2, True)] + world.food + world.forests
        return world

    def reset_world(self, world: OmarWorld, np_random: Any) -> None:
        _place(world, np_random, 1.0, 0.9)

    def agent_reward(self, agent: Agent, world: OmarWorld) -> float:
        rew = super().agent_reward(agent, world)
        rew += 2.0 * sum(is_collision(agent, food) for food in world.food)
        return rew + 0.05 * min(dist(food, agent) for food in world.food)

    def observation(self, agent: Agent, world: OmarWorld) -> np.ndarray:
        others = [o for o in world.agents if o is not agent]
        in_forest = [np.array([1.0 if is_collision(agent, f) else -1.0]) for f in world.forests]
        return np.concatenate(
            [agent.state.p_vel, agent.state.p_pos]
            + [lm.state.p_pos - agent.state.p_pos for lm in world.landmarks]
            + [o.state.p_pos - agent.state.p_pos for o in others]
            + [o.state.p_vel for o in others if not o.adversary]
            + in_forest
        )


SCENARIOS: dict[str, type[BaseScenario]] = {
    "simple_spread": OmarSpread,
    "simple_tag": OmarTag,
    "simple_world": OmarWorldScenario,
}


class OmarSimpleEnv(SimpleEnv):
    """mpe2's SimpleEnv over an OMAR scenario: 2-D actions in [-1, 1] per agent, optional prey controller."""

    def __init__(self, scenario: str, max_cycles: int, prey: PreyController | None = None) -> None:
        scene = SCENARIOS[scenario]()
        super().__init__(scenario=scene, world=scene.make_world(), max_cycles=max_cycles, continuous_actions=True)
        self.prey = prey
        dim = self.world.dim_p
        self.action_spaces = {a.name: spaces.Box(-1.0, 1.0, (dim,), np.float32) for a in self.world.agents}

    def _execute_world_step(self) -> None:
        if self.prey is not None:
            for i, agent in enumerate(self.world.agents):
                if not agent.adversary:
                    self.current_actions[i] = self.prey(agent, self.world, self.scenario)
        super()._execute_world_step()
        self.last_actions = np.stack([np.asarray(a, dtype=np.float32) for a in self.current_actions])
        self.last_rewards = np.array([self.rewards[a.name] for a in self.world.agents], dtype=np.float32)

    def _set_action(self, action: Any, agent: Agent, action_space: Any, time: Any = None) -> None:
        mpe2_input = (np.clip(suite_action(action[0]), -1.0, 1.0) + 1.0) * 0.5  # the suite's MPE map
        super()._set_action([mpe2_input], agent, action_space, time)
