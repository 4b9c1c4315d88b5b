"""Measure fixed random/expert reference returns for online MPE tasks (not a test).

The numbers go into leaderboards/references.json by hand, with this script named as their
source; they are never computed from the runs a leaderboard ranks.

- random: uniform actions in [-1, 1].
- expert (simple_spread): a scripted cooperative-navigation controller. Every agent reads the
  relative positions of all landmarks and other agents from its own observation, solves the
  same agent-to-landmark assignment (Hungarian, scipy) and steers to its landmark with a PD
  law. It uses only decentralised observations, so a learned policy could match it.

    python scripts/measure_references.py [--episodes 200]
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import linear_sum_assignment

from dmarl.envs.factory import make_env
from dmarl.runners.evaluation import evaluate

EVAL_SEED = 1_000_000  # OnlineRunner.eval_seed


class RandomPolicy:
    def __init__(self, n_agents: int, act_dim: int, seed: int = 0) -> None:
        self.shape, self.rng = (n_agents, act_dim), np.random.default_rng(seed)

    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        return self.rng.uniform(-1, 1, (obs.shape[0], *self.shape)).astype(np.float32)


class SpreadController:
    """Scripted simple_spread policy; obs = [vel(2), pos(2), landmarks rel (2N), others rel (2N-2), comm]."""

    def __init__(self, n_agents: int, gain: float = 3.0, damping: float = 1.0) -> None:
        self.n, self.gain, self.damping = n_agents, gain, damping

    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        n = self.n
        actions = np.zeros((obs.shape[0], n, 5), np.float32)
        for e in range(obs.shape[0]):
            for i in range(n):
                o = obs[e, i]
                vel, landmarks = o[0:2], o[4 : 4 + 2 * n].reshape(n, 2)
                others = o[4 + 2 * n : 4 + 2 * n + 2 * (n - 1)].reshape(n - 1, 2)
                agents = np.insert(others, i, np.zeros(2), axis=0)  # positions relative to agent i
                cost = np.linalg.norm(agents[:, None, :] - landmarks[None, :, :], axis=-1)
                rows, cols = linear_sum_assignment(cost)
                force = self.gain * landmarks[cols[list(rows).index(i)]] - self.damping * vel
                fx, fy = np.clip(force, -1, 1)
                # boundary action in [-1, 1]; the adapter maps it to mpe2's [0, 1]^5
                move = np.array([0.0, max(-fx, 0), max(fx, 0), max(-fy, 0), max(fy, 0)])
                actions[e, i] = 2.0 * move - 1.0
        return actions


def main() -> None:
    parser = argparse.ArgumentParser(description="Random/expert reference returns for MPE tasks.")
    parser.add_argument("--episodes", type=int, default=200)
    args = parser.parse_args()
    for task, n in (("mpe/simple_spread_n3", 3), ("mpe/simple_spread_n4", 4)):
        env = make_env(task, 20)
        random = evaluate(RandomPolicy(n, 5), env, args.episodes, EVAL_SEED)
        expert = evaluate(SpreadController(n), env, args.episodes, EVAL_SEED)
        print(f"{task}: random {random.mean():.2f} +- {random.std():.2f}, "
              f"expert {expert.mean():.2f} +- {expert.std():.2f} ({args.episodes} episodes, seeds {EVAL_SEED}+)")


if __name__ == "__main__":
    main()
