"""Deterministic evaluation on separate envs over a fixed list of seeds."""
from __future__ import annotations

import numpy as np
import torch

from dmarl.algorithms.base import Algorithm
from dmarl.envs.base import MultiAgentVecEnv


def evaluate(algorithm: Algorithm, env: MultiAgentVecEnv, episodes: int, seed: int) -> np.ndarray:
    """Return the team returns of ``episodes`` episodes with seeds ``seed, seed+1, ...``.

    Actions are deterministic (``explore=False``). The global torch RNG is forked, so
    evaluating never changes what training does next.
    """
    returns: list[float] = []
    n = env.num_envs
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for first in range(0, episodes, n):
            obs, _ = env.reset(seed=seed + first)
            finished = np.zeros(n, dtype=bool)
            episode_returns = np.full(n, np.nan)
            while not finished.all():
                obs, _, _, _, _, info = env.step(algorithm.act(obs, explore=False))
                newly = info["done"] & ~finished
                episode_returns[newly] = info["episode_return"][newly]
                finished |= info["done"]
            returns.extend(episode_returns[: min(n, episodes - first)].tolist())
    return np.asarray(returns)


def evaluation_metrics(
    algorithm: Algorithm, env: MultiAgentVecEnv, episodes: int, seed: int, prefix: str
) -> dict[str, float]:
    """``<prefix>/return_mean`` and ``<prefix>/return_std`` over ``episodes`` fixed seeds."""
    returns = evaluate(algorithm, env, episodes, seed)
    return {f"{prefix}/return_mean": float(returns.mean()), f"{prefix}/return_std": float(returns.std())}
