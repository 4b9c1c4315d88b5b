"""The on-policy loop of HARL's PPO family (MAPPO, HAPPO): E parallel envs, rollouts of
``episode_length`` vector steps, GAE with proper time limits, one PPO update per rollout,
the shared evaluation schedule and checkpoints at rollout boundaries.

Budget and schedule. The env-step budget, the number of training envs (HARL's
``n_rollout_threads``) and the evaluation / logging / checkpoint cadence are
`OnlineRunner`'s gin parameters (``OnlineRunner.total_env_steps``, ``OnlineRunner.num_envs``,
``OnlineRunner.eval_interval``, ...): a benchmark that binds one env-step budget for its
online algorithms gives the on-policy ones the same budget and evaluation protocol.
`OnlineRunner`'s replay parameters (batch size, warm-up, update ratio) are not read.
`OnPolicyRunner` adds ``episode_length`` (steps per env per rollout, HARL's name) and the
GAE constants. Evaluations and checkpoints happen at the first rollout boundary at or after
their due step (rollouts of E x episode_length env steps that divide the intervals give
exactly the off-policy runner's evaluation steps).

GAE with proper time limits (HARL ``use_proper_time_limits``; `gae`): with
delta_t = r_t + gamma (1 - term_t) V(s'_t) - V(s_t), A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}
and return target R_t = A_t + V(s_t). s'_t is the true successor: the final state reported in
``info`` when the episode ended at t (a truncation bootstraps from it; a termination does not),
the next rollout state otherwise, and the state after the last step at the rollout's end.
HARL instead zeroes the advantage of a truncated step (``bad_masks``, R_t = V(s_t)); this module
bootstraps from the final state, which is the unbiased target. Values are the critic's
normalised outputs, de-normalised with `ValueNorm` before GAE (as HARL's ``compute_returns``).

Resumability (as `OnlineRunner`): training is cut into segments of
``max(1, checkpoint_interval // (E x episode_length))`` rollouts; each segment resets the
training envs with a seed derived from (run seed, segment) and ends with a checkpoint, so a
run resumed from its last checkpoint replays exactly what an uninterrupted run does.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import gin
import numpy as np
import torch
from torch import nn

from dmarl.envs.base import MultiAgentVecEnv
from dmarl.runners.online import CheckpointFn, LogFn, OnlineRunner, check_finite, segment_seed


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    done: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and return targets ``[T, E]`` by GAE(gamma, lambda) with proper time limits.

    ``values[t]`` = V(s_t), ``next_values[t]`` = V(s'_t) of the true successor (module
    docstring); ``terminated`` stops the bootstrap, ``done`` (terminated or truncated) stops
    the advantage chain.
    """
    advantages = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[1:], dtype=np.float64)
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * (1.0 - terminated[t]) * next_values[t] - values[t]
        running = delta + gamma * lam * (1.0 - done[t]) * running
        advantages[t] = running
    return advantages, advantages + values


class ValueNorm(nn.Module):
    """HARL's ValueNorm: debiased exponential running mean and variance of the return targets
    (decay ``beta`` per batch); the critic regresses normalised targets and its outputs are
    de-normalised for GAE. The variance is clamped below at 1e-2 as in HARL."""

    def __init__(self, beta: float = 0.99999, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.beta, self.epsilon = beta, epsilon
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_mean_sq", torch.zeros(()))
        self.register_buffer("debiasing_term", torch.zeros(()))

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        debias = self.debiasing_term.clamp(min=self.epsilon)
        mean, mean_sq = self.running_mean / debias, self.running_mean_sq / debias
        return mean, (mean_sq - mean**2).clamp(min=1e-2)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        w = self.beta
        self.running_mean.mul_(w).add_(x.mean() * (1.0 - w))
        self.running_mean_sq.mul_(w).add_((x**2).mean() * (1.0 - w))
        self.debiasing_term.mul_(w).add_(1.0 - w)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return (x - mean) / var.sqrt()

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return x * var.sqrt() + mean


@dataclass
class Rollout:
    """One rollout, time-major: ``obs [T, E, N, O_max]``, ``state [T, E, S]``, ``actions
    [T, E, N, A_max]`` (unclipped samples), ``logp [T, E, N]`` (behaviour log-probs),
    ``values [T, E]`` (the critic's normalised outputs at collection), ``advantages`` and
    ``returns`` ``[T, E]`` (de-normalised GAE, `gae`)."""

    obs: torch.Tensor
    state: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class OnPolicyAlgorithm(Protocol):
    """What `OnPolicyRunner` needs of an algorithm (see ``algorithms/baselines/ppo.py``)."""

    gamma: float

    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        """Env actions ``[E, N, A_max]`` in [-1, 1] (evaluation uses ``explore=False``)."""

    def sample_actions(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Behaviour samples ``[E, N, A_max]`` (unclipped) and their log-probs ``[E, N]``."""

    def values(self, state: np.ndarray) -> np.ndarray:
        """The critic's raw (normalised) outputs for states ``[M, S]``: ``[M]``."""

    def denormalize(self, values: np.ndarray) -> np.ndarray:
        """Raw critic outputs -> values in return units (identity without ValueNorm)."""

    def train_on(self, rollout: Rollout, rng: np.random.Generator) -> dict[str, float]:
        """One update on a rollout (epochs, mini-batches drawn with ``rng``); scalar metrics."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@gin.configurable
@dataclass
class OnPolicyRunner:
    """Rollout settings of an on-policy run; budget and schedule come from `OnlineRunner`'s
    gin parameters (module docstring). HARL defaults: episode_length 200, lambda 0.95."""

    episode_length: int = 200
    gae_lambda: float = 0.95
    schedule: OnlineRunner = field(default_factory=OnlineRunner)

    @property
    def total_env_steps(self) -> int:
        return self.schedule.total_env_steps

    @property
    def num_envs(self) -> int:
        return self.schedule.num_envs

    @property
    def eval_num_envs(self) -> int:
        return self.schedule.eval_num_envs

    def run(
        self,
        algorithm: OnPolicyAlgorithm,
        env: MultiAgentVecEnv,
        eval_env: MultiAgentVecEnv,
        *,
        seed: int,
        device: torch.device,
        log: LogFn,
        save_checkpoint: CheckpointFn,
        resume: dict[str, Any] | None = None,
        progress: Any = None,
    ) -> dict[str, float]:
        """Train to ``total_env_steps``; return the final evaluation metrics."""
        sched = self.schedule
        rng = np.random.default_rng(seed)
        state = {"env_steps": 0, "rollouts": 0, "segment": 0, "next_eval": 0, "next_log": sched.log_interval}
        if resume is not None:
            rng.bit_generator.state = resume["np_rng"]
            state = dict(resume["counters"])
        rollout_steps = env.num_envs * self.episode_length
        rollouts_per_segment = max(1, sched.checkpoint_interval // rollout_steps)
        window: dict[str, list[float]] = {}
        window_start = (time.perf_counter(), state["env_steps"])
        obs = env_state = None
        if progress is not None:
            progress.update(state["env_steps"])
        if state["next_eval"] == 0:
            self._periodic_eval(algorithm, eval_env, state, log, progress)

        while state["env_steps"] < sched.total_env_steps:
            if obs is None:
                obs, env_state = env.reset(seed=segment_seed(seed, state["segment"]))
            remaining = -(-(sched.total_env_steps - state["env_steps"]) // env.num_envs)
            steps = min(self.episode_length, remaining)
            rollout, obs, env_state, returns = self._collect(algorithm, env, obs, env_state, steps, device)
            state["env_steps"] += steps * env.num_envs
            if progress is not None:
                progress.update(steps * env.num_envs)
            window.setdefault("train/episode_return", []).extend(returns)
            start = time.perf_counter()
            metrics = algorithm.train_on(rollout, rng)
            metrics["time/update_ms"] = 1000.0 * (time.perf_counter() - start)
            state["rollouts"] += 1
            check_finite(metrics, f"env step {state['env_steps']}, rollout {state['rollouts']}")
            for name, value in metrics.items():
                window.setdefault(name, []).append(value)

            if state["env_steps"] >= state["next_log"]:
                elapsed = time.perf_counter() - window_start[0]
                summary = {k: float(np.mean(v)) for k, v in window.items() if v}
                summary["time/env_steps_per_s"] = (state["env_steps"] - window_start[1]) / max(elapsed, 1e-9)
                summary["train/updates"] = float(state["rollouts"])
                log(summary, state["env_steps"])
                window, window_start = {}, (time.perf_counter(), state["env_steps"])
                state["next_log"] = (state["env_steps"] // sched.log_interval + 1) * sched.log_interval

            if state["env_steps"] >= state["next_eval"]:
                self._periodic_eval(algorithm, eval_env, state, log, progress)

            if state["rollouts"] % rollouts_per_segment == 0 or state["env_steps"] >= sched.total_env_steps:
                state["segment"] += 1
                obs = None  # the next segment starts from freshly seeded envs
                save_checkpoint({"np_rng": rng.bit_generator.state, "counters": dict(state)})

        final = sched.evaluation(algorithm, eval_env, final=True)
        log(final, state["env_steps"])
        return final

    def _collect(
        self,
        algorithm: OnPolicyAlgorithm,
        env: MultiAgentVecEnv,
        obs: np.ndarray,
        env_state: np.ndarray,
        steps: int,
        device: torch.device,
    ) -> tuple[Rollout, np.ndarray, np.ndarray, list[float]]:
        """Run ``steps`` vector steps; return the rollout with GAE, the last obs/state and the
        returns of the episodes that ended."""
        e, spec = env.num_envs, env.spec
        action_mask = spec.action_mask().astype(np.float32)
        buf = {k: [] for k in ("obs", "state", "actions", "logp", "values", "rewards", "terminated", "done")}
        next_values = np.zeros((steps, e), dtype=np.float32)
        finished: list[float] = []
        for t in range(steps):
            actions, logp = algorithm.sample_actions(obs)
            values = algorithm.values(env_state)
            env_actions = np.clip(actions, -1.0, 1.0) * action_mask
            next_obs, next_state, reward, terminated, _, info = env.step(env_actions)
            done = info["done"]
            if done.any():  # the true successor of a finished episode is its final state
                next_values[t, done] = algorithm.values(info["final_state"][done])
            for key, value in (("obs", obs), ("state", env_state), ("actions", actions), ("logp", logp),
                               ("values", values), ("rewards", reward), ("terminated", terminated), ("done", done)):
                buf[key].append(np.asarray(value))
            finished += [float(r) for r in info["episode_return"][done]]
            obs, env_state = next_obs, next_state
        arrays = {k: np.stack(v) for k, v in buf.items()}
        last_values = algorithm.values(env_state)
        following = np.concatenate([arrays["values"][1:], last_values[None]], axis=0)
        done = arrays["done"].astype(bool)
        next_values = np.where(done, next_values, following)
        f64 = lambda x: np.asarray(x, dtype=np.float64)
        advantages, returns = gae(
            f64(arrays["rewards"]), f64(algorithm.denormalize(arrays["values"])),
            f64(algorithm.denormalize(next_values)), f64(arrays["terminated"]), f64(done),
            algorithm.gamma, self.gae_lambda,
        )
        as_t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)
        batch = Rollout(
            obs=as_t(arrays["obs"]), state=as_t(arrays["state"]), actions=as_t(arrays["actions"]),
            logp=as_t(arrays["logp"]), values=as_t(arrays["values"]), advantages=as_t(advantages),
            returns=as_t(returns),
        )
        return batch, obs, env_state, finished

    def shift_evaluation(self, algorithm: OnPolicyAlgorithm, envs: dict[str, MultiAgentVecEnv]) -> dict[str, float]:
        """The final evaluation on shifted variants of the task (the shared schedule's)."""
        return self.schedule.shift_evaluation(algorithm, envs)

    def _periodic_eval(
        self, algorithm: OnPolicyAlgorithm, env: MultiAgentVecEnv, state: dict[str, Any], log: LogFn, progress: Any
    ) -> None:
        log(self.schedule.evaluation(algorithm, env, final=False, progress=progress), state["env_steps"])
        state["next_eval"] = (state["env_steps"] // self.schedule.eval_interval + 1) * self.schedule.eval_interval

