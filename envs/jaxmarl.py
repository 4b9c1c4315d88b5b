"""JaxMARL tasks behind the numpy protocol: E copies vmapped in one jitted step (auto-reset inside).

``JaxVecEnv`` is the shared machinery (per-copy PRNG keys, the [-1, 1] -> [0, 1] action map,
episode return/length, auto-reset, extra ``info`` entries); a task supplies a pure reset and a
pure transition of one copy. Copy e uses ``PRNGKey(seed + e)``.

Continuous MPE simple_spread (``JaxMARLSpreadVecEnv``): same task and conventions as
``mpe/simple_spread_n*`` (see ``envs/mpe.py``): actions [-1, 1] -> [0, 1]^5, team reward
``"sum"`` by default (``reward_convention`` kwarg), state = concatenated agent observations,
truncation after 25 steps. The episode end is counted here (25 steps), not by JaxMARL's own
``done``, which fires one step late (after 26 steps). The environment randomness differs from
mpe2's, the dynamics do not. Continuous SMAX lives in ``envs/smax.py`` on the same machinery.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from dmarl.envs.base import EnvSpec, autoreset_info, package_versions
from dmarl.envs.mpe import check_mpe_convention, reduce_team_reward
from dmarl.registry import register_task

# reset_fn(key) -> (env_state, obs [N, O], state [S], aux)
ResetFn = Callable[[Any], tuple[Any, Any, Any, dict[str, Any]]]
# transition_fn(key, env_state, unit_actions [N, A] in [0, 1])
#   -> (env_state, obs, state, aux, reward, terminated, truncated, flags)
TransitionFn = Callable[[Any, Any, Any], tuple[Any, Any, Any, dict[str, Any], Any, Any, Any, dict[str, Any]]]


class JaxVecEnv:
    """E copies of one pure-JAX task: one jitted, vmapped step with auto-reset inside.

    ``reset_fn`` and ``transition_fn`` act on one copy (signatures above). ``aux`` (same keys
    from both) describes an observation: ``info[k]`` belongs to the returned observation (after
    any auto-reset), ``info["final_" + k]`` to the step's final one. ``flags`` are per-episode
    booleans: ``info[k]`` is True only where an episode ended this step with the flag set.
    """

    def __init__(self, num_envs: int, spec: EnvSpec, reset_fn: ResetFn, transition_fn: TransitionFn) -> None:
        import jax
        import jax.numpy as jnp

        self.num_envs = num_envs
        self.spec = spec

        def reset_one(key: Any) -> tuple[Any, ...]:
            key, sub = jax.random.split(key)
            env_state, obs, state, aux = reset_fn(sub)
            # strong dtypes (a weakly typed leaf would make the second step compile again)
            env_state = jax.tree.map(lambda x: jnp.asarray(x, x.dtype), env_state)
            return key, env_state, obs, state, aux

        def step_one(key: Any, env_state: Any, ret: Any, length: Any, action: Any) -> tuple[Any, ...]:
            key, k_step, k_reset = jax.random.split(key, 3)
            unit = (jnp.clip(action, -1.0, 1.0) + 1.0) * 0.5
            next_state, obs, state, aux, reward, terminated, truncated, flags = transition_fn(k_step, env_state, unit)
            ret, length = ret + reward, length + 1
            done = terminated | truncated
            reset_state, reset_obs, reset_world, reset_aux = reset_fn(k_reset)

            def pick(after_reset: Any, before: Any) -> Any:
                return jnp.where(done, after_reset, before)

            out = {
                "obs": pick(reset_obs, obs),
                "state": pick(reset_world, state),
                "reward": reward,
                "terminated": terminated,
                "truncated": truncated,
                "final_obs": obs,
                "final_state": state,
                "episode_return": jnp.where(done, ret, jnp.nan),
                "episode_length": jnp.where(done, length, 0),
                **{k: pick(reset_aux[k], v) for k, v in aux.items()},
                **{f"final_{k}": v for k, v in aux.items()},
                **{k: done & v for k, v in flags.items()},
            }
            env_state = jax.tree.map(pick, reset_state, next_state)
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
        keys, env_state, obs, state, _ = self._reset(keys)
        zeros = self._jnp.zeros(self.num_envs, self._jnp.float32)
        self._carry = (keys, env_state, zeros, self._jnp.zeros(self.num_envs, self._jnp.int32))
        self._keys = keys
        return np.array(obs, np.float32), np.array(state, np.float32)

    def map_state(self, fn: Callable[[Any], Any]) -> None:
        """Replace the batched JAX env state by ``fn(state)``: the next step starts from it
        (scripted scenarios and tests)."""
        if self._carry is None:
            raise RuntimeError(f"{self.spec.name}: call reset() before map_state()")
        keys, env_state, ret, length = self._carry
        self._carry = (keys, fn(env_state), ret, length)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._carry is None:
            raise RuntimeError(f"{self.spec.name}: call reset() before step()")
        self._carry, out = self._step(*self._carry, self._jnp.asarray(actions, self._jnp.float32))
        self._keys = self._carry[0]
        arrays = {k: np.array(v) for k, v in out.items()}
        obs, state = arrays.pop("obs").astype(np.float32), arrays.pop("state").astype(np.float32)
        reward, terminated, truncated = arrays.pop("reward"), arrays.pop("terminated"), arrays.pop("truncated")
        done = terminated | truncated
        info = autoreset_info(
            done,
            arrays.pop("final_obs").astype(np.float32),
            arrays.pop("final_state").astype(np.float32),
            arrays.pop("episode_return").astype(np.float64),
            arrays.pop("episode_length").astype(np.int64),
        )
        info.update(arrays)
        return obs, state, reward, terminated, truncated, info

    def close(self) -> None:
        self._carry = None


class JaxMARLSpreadVecEnv(JaxVecEnv):
    """JaxMARL ``MPE_simple_spread_v3`` (``action_type="Continuous"``) behind the numpy protocol."""

    def __init__(
        self, num_envs: int, task: str, num_agents: int = 3, reward_convention: str = "sum", max_steps: int = 25
    ) -> None:
        import jax.numpy as jnp
        import jaxmarl

        convention = check_mpe_convention(reward_convention)
        env = jaxmarl.make(
            "MPE_simple_spread_v3", num_agents=num_agents, num_landmarks=num_agents, action_type="Continuous"
        )
        agents = tuple(env.agents)
        obs_dim = int(env.observation_space(agents[0]).shape[0])
        act_dim = int(env.action_space(agents[0]).shape[0])
        spec = EnvSpec(
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

        def reset_fn(key: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
            obs, env_state = env.reset(key)
            obs = stack(obs)
            return env_state, obs, obs.reshape(-1), {}

        def transition_fn(key: Any, env_state: Any, unit: Any) -> tuple[Any, ...]:
            per_agent = {a: unit[i] for i, a in enumerate(agents)}
            obs, next_state, rewards, _, _ = env.step_env(key, env_state, per_agent)
            obs = stack(obs)
            reward = reduce_team_reward(stack(rewards), convention, jnp)
            truncated = next_state.step >= max_steps
            return next_state, obs, obs.reshape(-1), {}, reward, jnp.zeros_like(truncated), truncated, {}

        super().__init__(num_envs, spec, reset_fn, transition_fn)


for _n in (3, 4):
    register_task(
        f"jaxmarl/simple_spread_n{_n}",
        "jaxmarl",
        JaxMARLSpreadVecEnv,
        f"JaxMARL continuous simple_spread, {_n} agents (jit + vmap over E copies)",
        task=f"jaxmarl/simple_spread_n{_n}",
        num_agents=_n,
    )
