"""JaxMARL continuous MPE simple_spread: E copies vmapped in one jitted step (auto-reset inside).

Same task and conventions as ``mpe/simple_spread_n*`` (see ``envs/mpe.py``): actions
[-1, 1] -> [0, 1]^5, team reward ``"sum"`` by default (``reward_convention`` kwarg), state =
concatenated agent observations, truncation after 25 steps. The episode end is counted here
(25 steps), not by JaxMARL's own ``done``, which fires one step late (after 26 steps). Copy e
uses ``PRNGKey(seed + e)``; the environment randomness differs from mpe2's, the dynamics do not.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dmarl.envs.base import EnvSpec, autoreset_info, package_versions
from dmarl.envs.mpe import check_mpe_convention, reduce_team_reward
from dmarl.registry import register_task


class JaxMARLSpreadVecEnv:
    """JaxMARL ``MPE_simple_spread_v3`` (``action_type="Continuous"``) behind the numpy protocol."""

    def __init__(
        self, num_envs: int, task: str, num_agents: int = 3, reward_convention: str = "sum", max_steps: int = 25
    ) -> None:
        import jax
        import jax.numpy as jnp
        import jaxmarl

        convention = check_mpe_convention(reward_convention)
        env = jaxmarl.make(
            "MPE_simple_spread_v3", num_agents=num_agents, num_landmarks=num_agents, action_type="Continuous"
        )
        agents = tuple(env.agents)
        obs_dim = int(env.observation_space(agents[0]).shape[0])
        act_dim = int(env.action_space(agents[0]).shape[0])
        self.num_envs = num_envs
        self.spec = EnvSpec(
            name=task,
            family="jaxmarl",
            agent_ids=agents,
            obs_dims=(obs_dim,) * num_agents,
            action_dims=(act_dim,) * num_agents,
            state_dim=obs_dim * num_agents,
            episode_limit=max_steps,
            reward_convention=convention,
            versions=package_versions("jaxmarl", "jax", "jaxlib", "numpy"),
        )

        def stack(per_agent: dict[str, Any]) -> Any:
            return jnp.stack([per_agent[a] for a in agents])

        def reset_one(key: Any) -> tuple[Any, Any, Any]:
            key, sub = jax.random.split(key)
            obs, env_state = env.reset(sub)
            return key, env_state, stack(obs)

        def step_one(key: Any, env_state: Any, ret: Any, length: Any, action: Any) -> tuple[Any, ...]:
            key, k_step, k_reset = jax.random.split(key, 3)
            unit = (jnp.clip(action, -1.0, 1.0) + 1.0) * 0.5
            per_agent = {a: unit[i] for i, a in enumerate(agents)}
            obs, next_state, rewards, _, _ = env.step_env(k_step, env_state, per_agent)
            reward = reduce_team_reward(stack(rewards), convention, jnp)
            final_obs = stack(obs)
            ret, length = ret + reward, length + 1
            done = next_state.step >= max_steps
            reset_obs, reset_state = env.reset(k_reset)
            env_state = jax.tree.map(lambda r, s: jnp.where(done, r, s), reset_state, next_state)
            new_obs = jnp.where(done, stack(reset_obs), final_obs)
            out = (
                new_obs,
                reward,
                done,
                final_obs,
                jnp.where(done, ret, jnp.nan),
                jnp.where(done, length, 0),
            )
            return (key, env_state, jnp.where(done, 0.0, ret), jnp.where(done, 0, length)), out

        self._reset = jax.jit(jax.vmap(reset_one))
        self._step = jax.jit(jax.vmap(step_one))
        self._keys_from_seeds = jax.jit(jax.vmap(jax.random.PRNGKey))
        self._jnp = jnp
        self._carry: tuple[Any, ...] | None = None
        self._keys = self._seed_keys(int(np.random.SeedSequence().generate_state(1)[0]))

    def _seed_keys(self, seed: int) -> Any:
        seeds = (seed + np.arange(self.num_envs, dtype=np.uint64)) % (1 << 32)
        return self._keys_from_seeds(self._jnp.asarray(seeds.astype(np.uint32)))

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        keys = self._keys if seed is None else self._seed_keys(seed)
        keys, env_state, obs = self._reset(keys)
        zeros = self._jnp.zeros(self.num_envs, self._jnp.float32)
        self._carry = (keys, env_state, zeros, self._jnp.zeros(self.num_envs, self._jnp.int32))
        self._keys = keys
        obs = np.array(obs)
        return obs, obs.reshape(self.num_envs, -1).copy()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._carry is None:
            raise RuntimeError(f"{self.spec.name}: call reset() before step()")
        self._carry, out = self._step(*self._carry, self._jnp.asarray(actions, self._jnp.float32))
        self._keys = self._carry[0]
        obs, reward, done, final_obs, ep_return, ep_length = (np.array(x) for x in out)
        state = obs.reshape(self.num_envs, -1).copy()
        final_state = final_obs.reshape(self.num_envs, -1).copy()
        info = autoreset_info(done, final_obs, final_state, ep_return.astype(np.float64), ep_length.astype(np.int64))
        return obs, state, reward, np.zeros_like(done), done, info

    def close(self) -> None:
        self._carry = None


for _n in (3, 4):
    register_task(
        f"jaxmarl/simple_spread_n{_n}",
        "jaxmarl",
        JaxMARLSpreadVecEnv,
        f"JaxMARL continuous simple_spread, {_n} agents (jit + vmap over E copies)",
        task=f"jaxmarl/simple_spread_n{_n}",
        num_agents=_n,
    )
