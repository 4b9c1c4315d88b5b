"""Continuous SMAX (JaxMARL ``HeuristicEnemySMAX``, ``action_type="continuous"``): DDPL's SMAX tasks.

The allies are the agents; the enemies follow JaxMARL's heuristic policy (they shoot, attack
the closest ally). E copies step in one jitted, vmapped call (``envs/jaxmarl.JaxVecEnv``).

* Spaces: per-ally observation 101 (3s_vs_5z) / 179 (6h_vs_8z), world state 96 / 168 (the
  ``state``), action Box(0, 1, (4,)) = [shoot_last_enemy, do_shoot, coordinate_1,
  coordinate_2]; the suite's [-1, 1] maps affinely onto [0, 1].
* Reward: JaxMARL gives every ally the same team reward (enemy health removed this step / number
  of enemies, +1 on a win), taken once (``"shared"``): the largest episode return is 2.0.
* Episode end: ``terminated`` when all allies or all enemies are dead, ``truncated`` at
  ``max_steps`` (100) otherwise.
* Dead allies: ``info["agent_mask"]`` ``[E, N]`` is True where an ally of the returned
  observation is alive (``final_agent_mask`` for the step's final observation); a dead ally's
  observation is all zeros and its action is ignored by JaxMARL.
* ``info["won"]`` ``[E]``: True where an episode ended this step with every enemy dead and an
  ally alive (JaxMARL's win bonus condition); the evaluation logs its share as ``win_rate``.
"""
from __future__ import annotations

from typing import Any

from dmarl.envs.base import EnvSpec, package_versions
from dmarl.envs.jaxmarl import JaxVecEnv
from dmarl.registry import register_task

SMAX_MAPS = ("3s_vs_5z", "6h_vs_8z")


class SMAXVecEnv(JaxVecEnv):
    """E copies of one continuous ``HeuristicEnemySMAX`` map behind the padded batched protocol."""

    def __init__(
        self,
        num_envs: int,
        task: str,
        map_name: str,
        max_steps: int = 100,
        enemy_shoots: bool = True,
        attack_mode: str = "closest",
    ) -> None:
        import jax.numpy as jnp
        import jaxmarl
        from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO

        if map_name not in MAP_NAME_TO_SCENARIO:
            raise ValueError(f"{task}: map_name {map_name!r} is not a JaxMARL SMAX map ({sorted(MAP_NAME_TO_SCENARIO)})")
        if not (isinstance(max_steps, int) and max_steps > 0):
            raise ValueError(f"{task}: max_steps must be a positive int, got {max_steps!r}")
        env = jaxmarl.make(
            "HeuristicEnemySMAX",
            scenario=MAP_NAME_TO_SCENARIO[map_name],
            action_type="continuous",
            max_steps=max_steps,
            enemy_shoots=enemy_shoots,
            attack_mode=attack_mode,
        )
        agents = tuple(env.agents)
        n = len(agents)
        obs_dim = int(env.observation_space(agents[0]).shape[0])
        act_dim = int(env.action_space(agents[0]).shape[0])
        spec = EnvSpec(
            name=task,
            family="smax",
            agent_ids=agents,
            obs_dims=(obs_dim,) * n,
            action_dims=(act_dim,) * n,
            state_dim=int(env.state_size),
            episode_limit=max_steps,
            reward_convention="shared",
            versions={**package_versions("jaxmarl", "jax", "jaxlib", "numpy"), "smax_map": map_name},
        )

        def observe(obs: dict[str, Any], alive: Any) -> Any:
            return jnp.stack([obs[a] for a in agents]) * alive[:, None]

        def reset_fn(key: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
            obs, env_state = env.reset(key)
            alive = env_state.state.unit_alive[:n]
            return env_state, observe(obs, alive), obs["world_state"], {"agent_mask": alive}

        def transition_fn(key: Any, env_state: Any, unit: Any) -> tuple[Any, ...]:
            obs, next_state, rewards, _, _ = env.step_env(key, env_state, {a: unit[i] for i, a in enumerate(agents)})
            alive = next_state.state.unit_alive
            allies_dead, enemies_dead = ~alive[:n].any(), ~alive[n:].any()
            terminated = allies_dead | enemies_dead
            truncated = (next_state.state.step >= max_steps) & ~terminated
            won = enemies_dead & ~allies_dead
            aux = {"agent_mask": alive[:n]}
            return (next_state, observe(obs, alive[:n]), obs["world_state"], aux, rewards[agents[0]],
                    terminated, truncated, {"won": won})

        super().__init__(num_envs, spec, reset_fn, transition_fn)


for _map in SMAX_MAPS:
    register_task(
        f"smax/{_map}",
        "smax",
        SMAXVecEnv,
        f"JaxMARL continuous SMAX {_map} vs heuristic enemies (shared reward, max return 2, 100 steps, "
        "info won / agent_mask; jit + vmap over E copies)",
        task=f"smax/{_map}",
        map_name=_map,
    )
