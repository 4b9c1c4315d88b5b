"""The online loop: collect from E envs, replay, updates per env step, periodic evaluation,
checkpoints, and a final evaluation with 10x the episodes as the run's score.

Runs are *resumable by construction*: training is cut into segments of
``checkpoint_interval`` env steps. Every segment starts by resetting the training envs with a
seed derived from (run seed, segment index), and every segment boundary is a checkpoint. A
killed run resumed from its last checkpoint therefore replays exactly what an uninterrupted
run does (episodes in progress at a boundary are truncated, not terminated, in both).

Each stored row records which agents are present in its ``obs``: the step's
``info["agent_mask"]`` of the env that returned it (SMAX's dead allies), every agent after a
reset or where the env reports none (``ReplayBuffer.add``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import gin
import numpy as np
import torch

from dmarl.algorithms.base import Algorithm
from dmarl.data.coverage import state_coverage
from dmarl.data.replay import ReplayBuffer
from dmarl.envs.base import MultiAgentVecEnv
from dmarl.errors import NonFiniteLossError, UserError
from dmarl.runners.evaluation import EvaluationSchedule

LogFn = Callable[[dict[str, float], int], None]
CheckpointFn = Callable[[dict[str, Any]], None]


def segment_seed(seed: int, segment: int) -> int:
    """The reset seed of the training envs at the start of a segment."""
    return int(np.random.SeedSequence([seed, segment]).generate_state(1)[0] % (2**31 - 10_000))


def check_finite(metrics: dict[str, float], where: str) -> None:
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(f"{name} = {value} at {where}")


@gin.configurable
@dataclass
class OnlineRunner(EvaluationSchedule):
    """Budgets and schedule of an online run (all counts in env steps = E x vector steps)."""

    total_env_steps: int = 1_000_000
    num_envs: int = 10
    learning_starts: int = 10_000
    random_steps: int = 10_000
    updates_per_env_step: float = 0.05
    batch_size: int = 1000
    buffer_size: int = 1_000_000
    coverage_dims: tuple[int, int] | None = None
    coverage_low: tuple[float, float] = (-1.0, -1.0)
    coverage_high: tuple[float, float] = (1.0, 1.0)
    coverage_bin: float = 0.1

    def run(
        self,
        algorithm: Algorithm,
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
        spec = env.spec
        buffer = ReplayBuffer(  # n-step returns: gin ReplayBuffer.n_step, discounted by the algorithm's gamma
            self.buffer_size, spec.n_agents, spec.obs_max, spec.act_max, spec.state_dim,
            gamma=getattr(algorithm, "gamma", None),
        )
        if buffer.n_step > 1 and not getattr(algorithm, "supports_n_step", False):
            raise UserError(
                f"ReplayBuffer.n_step = {buffer.n_step}: {type(algorithm).__name__} does not read "
                "Batch.discount (set supports_n_step after using batch.bootstrap_discount); use n_step = 1"
            )
        rng = np.random.default_rng(seed)
        state = {"env_steps": 0, "updates": 0, "segment": 0, "update_debt": 0.0, "next_eval": 0}
        if resume is not None:
            buffer.load_state_dict(resume["buffer"])
            rng.bit_generator.state = resume["np_rng"]
            state = dict(resume["counters"])
        action_mask = spec.action_mask().astype(np.float32)
        steps_per_segment = max(1, self.checkpoint_interval // env.num_envs) * env.num_envs
        window: dict[str, list[float]] = {}
        window_start = (time.perf_counter(), state["env_steps"])
        obs = env_state = agent_mask = None
        if progress is not None:
            progress.update(state["env_steps"])
        if state["next_eval"] == 0:
            self._periodic_eval(algorithm, eval_env, buffer, state, log, progress)

        while state["env_steps"] < self.total_env_steps:
            if obs is None:
                obs, env_state = env.reset(seed=segment_seed(seed, state["segment"]))
                agent_mask = None  # every agent present after a reset
            if state["env_steps"] < self.random_steps:
                actions = rng.uniform(-1.0, 1.0, (env.num_envs, spec.n_agents, spec.act_max)).astype(np.float32)
                actions *= action_mask
            else:
                actions = algorithm.act(obs, explore=True)
            next_obs, next_state, reward, terminated, _, info = env.step(actions)
            buffer.add(
                obs=obs, state=env_state, actions=actions, reward=reward,
                next_obs=info["final_obs"], next_state=info["final_state"], terminated=terminated,
                done=info["done"], agent_mask=agent_mask,
            )
            obs, env_state, agent_mask = next_obs, next_state, info.get("agent_mask")
            state["env_steps"] += env.num_envs
            if progress is not None:
                progress.update(env.num_envs)
            for value in info["episode_return"][info["done"]]:
                window.setdefault("train/episode_return", []).append(float(value))

            if state["env_steps"] >= self.learning_starts:
                state["update_debt"] += env.num_envs * self.updates_per_env_step
                while state["update_debt"] >= 1.0:
                    state["update_debt"] -= 1.0
                    start = time.perf_counter()
                    metrics = algorithm.update(buffer.sample(self.batch_size, rng, device))
                    metrics["time/update_ms"] = 1000.0 * (time.perf_counter() - start)
                    state["updates"] += 1
                    check_finite(metrics, f"env step {state['env_steps']}, update {state['updates']}")
                    for name, value in metrics.items():
                        window.setdefault(name, []).append(value)

            if state["env_steps"] % self.log_interval < env.num_envs and window:
                elapsed = time.perf_counter() - window_start[0]
                summary = {k: float(np.mean(v)) for k, v in window.items()}
                summary["time/env_steps_per_s"] = (state["env_steps"] - window_start[1]) / max(elapsed, 1e-9)
                summary["train/updates"] = float(state["updates"])
                log(summary, state["env_steps"])
                window, window_start = {}, (time.perf_counter(), state["env_steps"])

            if state["env_steps"] >= state["next_eval"]:
                self._periodic_eval(algorithm, eval_env, buffer, state, log, progress)

            if state["env_steps"] % steps_per_segment == 0 or state["env_steps"] >= self.total_env_steps:
                state["segment"] += 1
                obs = None
                buffer.mark_episode_end()  # the envs are reset: the episodes in progress are truncated
                save_checkpoint(
                    {"buffer": buffer.state_dict(), "np_rng": rng.bit_generator.state, "counters": dict(state)}
                )

        final = self._eval_metrics(algorithm, eval_env, buffer, final=True)
        log(final, state["env_steps"])
        return final

    def _periodic_eval(
        self, algorithm: Algorithm, env: MultiAgentVecEnv, buffer: ReplayBuffer, state: dict[str, Any], log: LogFn,
        progress: Any,
    ) -> None:
        log(self._eval_metrics(algorithm, env, buffer, final=False, progress=progress), state["env_steps"])
        state["next_eval"] = (state["env_steps"] // self.eval_interval + 1) * self.eval_interval

    def _eval_metrics(
        self, algorithm: Algorithm, env: MultiAgentVecEnv, buffer: ReplayBuffer, *, final: bool, progress: Any = None
    ) -> dict[str, float]:
        """Evaluation metrics plus OMAD's state coverage of the replay buffer (Sec. 6.2)."""
        metrics = self.evaluation(algorithm, env, final=final, progress=progress)
        if self.coverage_dims is not None and len(buffer) > 0:
            prefix = "final" if final else "eval"
            metrics[f"{prefix}/state_coverage"] = state_coverage(
                buffer.filled("state"), self.coverage_dims, self.coverage_low, self.coverage_high, self.coverage_bin
            )
        return metrics
