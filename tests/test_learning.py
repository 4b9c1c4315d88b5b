"""Slow learning checks: each algorithm's CPU-scale config beats the random policy on
MPE simple_spread (N=3) by a clear margin, measured on the same evaluation seeds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from dmarl.envs.factory import make_env
from dmarl.runners.evaluation import evaluate
from dmarl.train import run_training

MARGIN = 12.0  # return units; random scores about -78, the scripted expert about -20 (leaderboards/references.json)


class RandomPolicy:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        return self.rng.uniform(-1, 1, (obs.shape[0], obs.shape[1], 5)).astype(np.float32)


def random_return(episodes: int = 200) -> float:
    return float(evaluate(RandomPolicy(0), make_env("mpe/simple_spread_n3", 20), episodes, 1_000_000).mean())


@pytest.mark.slow
@pytest.mark.parametrize("config", ["hasac_simple_spread_cpu.gin", "omad_simple_spread_cpu.gin"])
def test_beats_random_on_simple_spread(workdir: Path, config: str) -> None:
    result = run_training([str(REPO / "gin/experiments" / config)], [], experiment="learning", progress=False)
    baseline = random_return()
    print(f"{config}: final {result.final_score:.2f} vs random {baseline:.2f}")
    assert result.status == "FINISHED"
    assert result.final_score > baseline + MARGIN
