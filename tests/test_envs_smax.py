"""Continuous SMAX adapter (envs/smax.py): spaces, dead-ally masks, scripted win / loss / time limit.

Scripted scenarios drive one E=2 env of 3s_vs_5z (compiled once for the module) with chosen
actions, or place the units through ``map_state`` and step once.
"""
from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dmarl.envs.factory import make_env
from dmarl.runners.evaluation import evaluation_metrics

E = 2
# suite actions in [-1, 1] for [shoot_last_enemy, do_shoot, coordinate_1 (r), coordinate_2 (angle / 2 pi)];
# JaxMARL moves with probability do_shoot's unit value, so +1 always moves.
STAND = np.array([0.0, 1.0, -1.0, 0.0], np.float32)  # move with radius 0
WEST = np.array([0.0, 1.0, 1.0, 0.0], np.float32)  # full speed at angle pi: towards the x = 0 wall


@pytest.fixture(scope="module")
def env() -> Iterator[Any]:
    env = make_env("smax/3s_vs_5z", E)
    yield env
    env.close()


def _all(action: np.ndarray, n: int = 3) -> np.ndarray:
    return np.broadcast_to(action, (E, n, 4)).copy()


def _enemies_on_wall(state: Any) -> Any:
    """Every enemy (units 3..7) outside the map's west edge: the wall kills them in the next step."""
    s = state.state
    return state.replace(state=s.replace(unit_positions=s.unit_positions.at[:, 3:, 0].set(-1.0)))


def test_spaces_3s_vs_5z(env: Any) -> None:
    spec = env.spec
    assert spec.agent_ids == ("ally_0", "ally_1", "ally_2")
    assert spec.obs_dims == (101,) * 3 and spec.state_dim == 96 and spec.action_dims == (4,) * 3
    assert spec.episode_limit == 100 and spec.reward_convention == "shared" and spec.family == "smax"
    obs, state = env.reset(seed=0)
    assert obs.shape == (E, 3, 101) and state.shape == (E, 96) and obs.dtype == state.dtype == np.float32
    obs, state, reward, terminated, truncated, info = env.step(_all(STAND))
    assert obs.shape == info["final_obs"].shape == (E, 3, 101) and state.shape == info["final_state"].shape == (E, 96)
    assert reward.shape == terminated.shape == truncated.shape == (E,)
    assert info["agent_mask"].shape == info["final_agent_mask"].shape == (E, 3) and info["agent_mask"].dtype == bool
    assert info["won"].shape == (E,) and info["won"].dtype == bool and not info["won"].any()


def test_spaces_6h_vs_8z() -> None:
    """Spec from JaxMARL's spaces; the traced reset/step outputs have the same shapes (no compile)."""
    import jax

    env = make_env("smax/6h_vs_8z", E)
    spec = env.spec
    assert spec.n_agents == 6 and spec.obs_dims == (179,) * 6 and spec.state_dim == 168 and spec.act_max == 4
    keys = env._seed_keys(0)
    _, env_state, obs, state, aux = jax.eval_shape(env._reset, keys)
    assert obs.shape == (E, 6, 179) and state.shape == (E, 168) and aux["agent_mask"].shape == (E, 6)
    zeros = np.zeros(E, np.float32)
    _, out = jax.eval_shape(env._step, keys, env_state, zeros, zeros.astype(np.int32), np.zeros((E, 6, 4), np.float32))
    assert out["obs"].shape == (E, 6, 179) and out["state"].shape == (E, 168) and out["won"].shape == (E,)


def test_dead_ally_masked(env: Any) -> None:
    env.reset(seed=1)
    env.map_state(lambda s: s.replace(state=s.state.replace(unit_health=s.state.unit_health.at[:, 0].set(0.0))))
    obs, state, _, terminated, truncated, info = env.step(_all(STAND))
    assert not (terminated | truncated).any()
    np.testing.assert_array_equal(info["agent_mask"], [[False, True, True]] * E)
    assert np.all(obs[:, 0] == 0.0) and np.all(np.abs(obs[:, 1:]).sum(axis=-1) > 0)
    assert np.all(state[:, :10] == 0.0), "the world state zeroes a dead unit's features"


def test_scripted_loss(env: Any) -> None:
    """Allies run into the west wall: all dead, terminated, no win, no enemy damage (return 0)."""
    env.reset(seed=2)
    for t in range(1, 21):
        obs, _, _, terminated, truncated, info = env.step(_all(WEST))
        if info["done"].all():
            break
    assert info["done"].all(), "the allies should reach the wall within 20 steps"
    assert terminated.all() and not truncated.any() and not info["won"].any()
    assert not info["final_agent_mask"].any() and np.all(info["final_obs"] == 0.0)
    np.testing.assert_array_equal(info["episode_return"], 0.0)
    np.testing.assert_array_equal(info["episode_length"], t)
    assert info["agent_mask"].all() and np.all(np.abs(obs).sum(axis=-1) > 0), "auto-reset revives the allies"


def test_scripted_win(env: Any) -> None:
    """Enemies placed outside the wall die in one step with the allies intact: a win worth 2.0 (the maximum)."""
    env.reset(seed=3)
    env.map_state(_enemies_on_wall)
    _, _, reward, terminated, truncated, info = env.step(_all(STAND))
    assert terminated.all() and not truncated.any() and info["won"].all()
    assert info["final_agent_mask"].all()
    np.testing.assert_allclose(reward, 2.0, rtol=1e-6)
    np.testing.assert_allclose(info["episode_return"], 2.0, rtol=1e-6)
    np.testing.assert_array_equal(info["episode_length"], 1)


def test_time_limit_truncates(env: Any) -> None:
    env.reset(seed=4)
    env.map_state(lambda s: s.replace(state=s.state.replace(step=s.state.step * 0 + 99)))
    _, _, _, terminated, truncated, info = env.step(_all(STAND))
    assert truncated.all() and not terminated.any() and not info["won"].any()


class _Scripted:
    """Stands still; before each action puts the enemies outside the wall (every episode is won)
    or leaves them (``win=False``: the allies run into the wall instead)."""

    def __init__(self, env: Any, win: bool) -> None:
        self.env, self.win = env, win

    def act(self, obs: np.ndarray, explore: bool = False) -> np.ndarray:
        if self.win:
            self.env.map_state(_enemies_on_wall)
            return _all(STAND)
        return _all(WEST)


@pytest.mark.parametrize("win", [True, False])
def test_evaluation_logs_win_rate(env: Any, win: bool) -> None:
    metrics = evaluation_metrics(_Scripted(env, win), env, episodes=3, seed=0, prefix="eval")
    assert metrics["eval/win_rate"] == float(win)
    assert metrics["eval/return_mean"] == pytest.approx(2.0 if win else 0.0, abs=1e-5)


def test_leaderboard_shows_final_win_rate(tmp_path: Path) -> None:
    """``final/win_rate`` of each run becomes a per-algorithm seed-mean column of the task's table
    (markdown) and of ``leaderboard.csv`` (``final_win_rate``)."""
    from dmarl.bench import stats
    from dmarl.bench.leaderboard import ExperimentData, RunRecord, compute, markdown, rate_scores, write
    from dmarl.bench.references import References

    metrics = {"final/return_mean": 1.5, "final/win_rate": 0.25, "final/shift/x/return_mean": 1.0, "eval/win_rate": 0.9}
    assert rate_scores(metrics) == (("win_rate", 0.25),)
    runs = [
        RunRecord(f"{algo}{seed}", f"{algo}|smax/3s_vs_5z|{seed}", algo, "smax/3s_vs_5z", seed, 1.0 + rate, {},
                  rates=(("win_rate", rate),))
        for algo, rates in (("a", (0.2, 0.4)), ("b", (0.0, 0.1)))
        for seed, rate in enumerate(rates)
    ]
    board = compute(ExperimentData("e", "uri", runs, []), References("t", "refs.json", {}), baselines=[],
                    boot=stats.Bootstrap(n_resamples=50))
    rows = {row.algorithm: dict(row.rates) for row in board.tasks[0].rows}
    assert rows == {"a": {"win_rate": pytest.approx(0.3)}, "b": {"win_rate": pytest.approx(0.05)}}
    page = markdown(board)
    header = next(line for line in page.splitlines() if line.startswith("| algorithm"))
    assert "final win rate" in header
    assert any(line.startswith("| a ") and "| 0.3 |" in line for line in page.splitlines())
    write(board, tmp_path)
    with (tmp_path / "leaderboard.csv").open() as handle:
        table = {row["algorithm"]: row for row in csv.DictReader(handle)}
    assert float(table["a"]["final_win_rate"]) == pytest.approx(0.3)
    assert float(table["b"]["final_win_rate"]) == pytest.approx(0.05)
