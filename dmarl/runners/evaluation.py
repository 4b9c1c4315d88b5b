"""Deterministic evaluation on separate envs over a fixed list of seeds."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dmarl.algorithms.base import Algorithm
from dmarl.envs.base import MultiAgentVecEnv

SHIFT_PREFIX = "final/shift"  # final/shift/<name>/return_mean: the final policy on a shifted task


# Per-episode flags an env may put in ``info`` (bool [E], read where the episode ended) and the
# evaluation metric each becomes: ``<prefix>/<metric>`` = share of evaluated episodes flagged.
EPISODE_FLAGS = {"success": "success_rate", "won": "win_rate"}


def evaluate(
    algorithm: Algorithm, env: MultiAgentVecEnv, episodes: int, seed: int,
    flags: dict[str, list[bool]] | None = None,
) -> np.ndarray:
    """Return the team returns of ``episodes`` episodes with seeds ``seed, seed+1, ...``.

    Actions are deterministic (``explore=False``). The global torch RNG is forked, so
    evaluating never changes what training does next. ``flags``, when given, collects each
    episode's ``EPISODE_FLAGS`` entries of ``info`` (keys the env reports) in episode order.
    """
    returns: list[float] = []
    n = env.num_envs
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for first in range(0, episodes, n):
            obs, _ = env.reset(seed=seed + first)
            finished = np.zeros(n, dtype=bool)
            episode_returns = np.full(n, np.nan)
            flagged: dict[str, np.ndarray] = {}
            while not finished.all():
                obs, _, _, _, _, info = env.step(algorithm.act(obs, explore=False))
                newly = info["done"] & ~finished
                episode_returns[newly] = info["episode_return"][newly]
                for key in EPISODE_FLAGS.keys() & info.keys() if flags is not None else ():
                    flagged.setdefault(key, np.zeros(n, dtype=bool))[newly] = info[key][newly]
                finished |= info["done"]
            returns.extend(episode_returns[: min(n, episodes - first)].tolist())
            for key, values in flagged.items():
                flags.setdefault(key, []).extend(values[: min(n, episodes - first)].tolist())
    return np.asarray(returns)


def evaluation_metrics(
    algorithm: Algorithm, env: MultiAgentVecEnv, episodes: int, seed: int, prefix: str
) -> dict[str, float]:
    """``<prefix>/return_mean`` and ``<prefix>/return_std`` over ``episodes`` fixed seeds, and
    ``<prefix>/<EPISODE_FLAGS metric>`` for each flag the env reports."""
    flags: dict[str, list[bool]] = {}
    returns = evaluate(algorithm, env, episodes, seed, flags)
    metrics = {f"{prefix}/return_mean": float(returns.mean()), f"{prefix}/return_std": float(returns.std())}
    metrics.update({f"{prefix}/{EPISODE_FLAGS[key]}": float(np.mean(values)) for key, values in flags.items()})
    return metrics


@dataclass
class EvaluationSchedule:
    """Evaluation, logging and checkpoint cadence shared by the online and offline runners
    (intervals count env steps online, gradient updates offline)."""

    eval_interval: int = 10_000
    eval_episodes: int = 10
    eval_num_envs: int = 10
    eval_seed: int = 1_000_000
    final_eval_multiplier: int = 10
    checkpoint_interval: int = 10_000
    log_interval: int = 1_000
    last_eval_return: float = field(default=float("nan"), init=False)

    def evaluation(self, algorithm: Algorithm, env: MultiAgentVecEnv, *, final: bool, progress: Any = None) -> dict[str, float]:
        """Periodic (``eval/``) or final (``final/``, ``final_eval_multiplier`` x episodes) metrics."""
        episodes = self.eval_episodes * (self.final_eval_multiplier if final else 1)
        prefix = "final" if final else "eval"
        metrics = evaluation_metrics(algorithm, env, episodes, self.eval_seed, prefix)
        self.last_eval_return = metrics[f"{prefix}/return_mean"]
        if progress is not None:
            progress.set_postfix_str(f"eval return {self.last_eval_return:.2f}")
        return metrics

    def shift_evaluation(self, algorithm: Algorithm, envs: dict[str, MultiAgentVecEnv]) -> dict[str, float]:
        """The final evaluation (same episodes and seeds) on each shifted variant of the task:
        ``final/shift/<name>/return_mean`` and ``.../return_std`` (DOM2's shifted environments)."""
        episodes = self.eval_episodes * self.final_eval_multiplier
        metrics: dict[str, float] = {}
        for name, env in envs.items():
            metrics.update(evaluation_metrics(algorithm, env, episodes, self.eval_seed, f"{SHIFT_PREFIX}/{name}"))
        return metrics
