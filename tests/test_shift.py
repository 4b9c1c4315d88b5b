"""Shifted dynamics (DOM2's shifted environments): a shift changes the step from the same state
with the same action; the defaults leave the task exactly as built."""
from __future__ import annotations

import numpy as np
import pytest

from dmarl.envs.factory import make_env


def _mpe_step(task: str, actions: np.ndarray, place: dict[int, np.ndarray] | None = None, **shift: float) -> np.ndarray:
    """Observations after one step from the seed-3 reset (agents optionally moved to ``place``)."""
    env = make_env(task, 1, **shift)
    env.reset(seed=3)
    world = env._envs[0].world
    for i, pos in (place or {}).items():
        world.agents[i].state.p_pos = pos.copy()
    obs, *_ = env.step(actions)
    env.close()
    return obs


@pytest.mark.parametrize("shift", [{"agent_accel_scale": 2.0}, {"agent_max_speed": 0.05}])
def test_mpe_agent_shift_changes_the_step(shift: dict[str, float]) -> None:
    actions = np.zeros((1, 3, 5), np.float32)
    actions[..., 2] = 1.0  # full push to the right (mpe2: right - left)
    base = _mpe_step("mpe/simple_spread_n3", actions)
    assert np.array_equal(base, _mpe_step("mpe/simple_spread_n3", actions))
    assert np.array_equal(base, _mpe_step("mpe/simple_spread_n3", actions, agent_accel_scale=1.0, landmark_size_scale=1.0))
    shifted = _mpe_step("mpe/simple_spread_n3", actions, **shift)
    vel = slice(0, 2)  # simple_spread's observation starts with the agent's own velocity
    assert not np.allclose(base[0, :, vel], shifted[0, :, vel], atol=1e-3)
    speed = np.linalg.norm(shifted[0, :, vel], axis=-1) / np.linalg.norm(base[0, :, vel], axis=-1)
    if "agent_accel_scale" in shift:  # from rest, velocity after one step is linear in the force
        np.testing.assert_allclose(speed, 2.0, rtol=1e-5)
    else:
        assert np.all(np.linalg.norm(shifted[0, :, vel], axis=-1) <= 0.05 + 1e-6)


def test_mpe_landmark_size_changes_a_collision() -> None:
    """simple_tag's landmarks are obstacles: a predator placed just outside a landmark's
    unshifted reach is pushed away only when the landmark is made larger."""
    env = make_env("mpe/simple_tag", 1)
    env.reset(seed=3)
    world = env._envs[0].world
    mark, pred = world.landmarks[0], world.agents[0]
    place = {0: mark.state.p_pos + np.array([mark.size + pred.size + 0.02, 0.0])}
    env.close()
    actions = np.zeros((1, 3, 5), np.float32)
    base = _mpe_step("mpe/simple_tag", actions, place)
    shifted = _mpe_step("mpe/simple_tag", actions, place, landmark_size_scale=1.5)
    assert np.allclose(base[0, 0, :2], 0.0)  # no force on the predator unshifted: it stays at rest
    assert not np.allclose(shifted[0, 0, :2], 0.0)  # the larger landmark overlaps it and pushes


def test_mpe_shift_is_recorded_and_checked() -> None:
    env = make_env("mpe/simple_spread_n3", 1, agent_accel_scale=1.5)
    assert env.spec.versions["shift"] == "agent_accel_scale=1.5"
    assert "shift" not in make_env("mpe/simple_spread_n3", 1).spec.versions
    with pytest.raises(ValueError, match="agent_accel_scale must be > 0"):
        make_env("mpe/simple_spread_n3", 1, agent_accel_scale=0.0)


def _mamujoco_step(**shift: float) -> np.ndarray:
    env = make_env("mamujoco/halfcheetah_2x3", 1, **shift)
    env.reset(seed=5)
    actions = np.full((1, 2, 3), 0.7, np.float32)
    for _ in range(10):  # the robot settles onto the floor, so friction acts too
        obs, *_ = env.step(actions)
    env.close()
    return obs


@pytest.mark.parametrize("shift", [{"body_mass_scale": 1.5}, {"friction_scale": 0.3}])
def test_mamujoco_shift_changes_the_step(shift: dict[str, float]) -> None:
    base = _mamujoco_step()
    assert np.array_equal(base, _mamujoco_step())
    assert np.array_equal(base, _mamujoco_step(body_mass_scale=1.0, friction_scale=1.0))
    assert not np.allclose(base, _mamujoco_step(**shift), atol=1e-4)


SMALL_HASAC = [
    "HASAC.hidden = (16, 16)",
    "OnlineRunner.total_env_steps = 400",
    "OnlineRunner.random_steps = 200",
    "OnlineRunner.learning_starts = 200",
    "OnlineRunner.batch_size = 32",
    "OnlineRunner.eval_interval = 400",
    "OnlineRunner.eval_episodes = 4",
    "OnlineRunner.eval_num_envs = 4",
    "OnlineRunner.final_eval_multiplier = 2",
    "OnlineRunner.checkpoint_interval = 400",
    "run.shifts = {'same': {}, 'crawl': {'agent_max_speed': 0.01}}",
]


def test_final_evaluation_on_shifted_variants_is_logged_and_ranked(workdir) -> None:
    import csv
    import os

    from mlflow.tracking import MlflowClient

    from conftest import REPO
    from dmarl.bench.leaderboard import build_leaderboard
    from dmarl.train import run_training

    config = [str(REPO / "gin/experiments/hasac_simple_spread_cpu.gin")]
    ids = [run_training(config, SMALL_HASAC + [f"run.seed = {s}"], experiment="shift", progress=False).run_id
           for s in (0, 1)]
    metrics = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(ids[0]).data.metrics
    # 'same' is the unshifted task: same policy, episodes and seeds, so exactly the final score
    assert metrics["final/shift/same/return_mean"] == metrics["final/return_mean"]
    # agents that barely move cannot spread to the landmarks: a different (lower) return
    assert metrics["final/shift/crawl/return_mean"] < metrics["final/return_mean"] - 1.0
    build_leaderboard("shift", workdir / "board")
    rows = list(csv.DictReader((workdir / "board" / "shifts.csv").open()))
    assert [(r["shift"], r["seeds"]) for r in rows] == [("crawl", "2"), ("same", "2")]
    assert "## Shifted environments" in (workdir / "board" / "leaderboard.md").read_text()


def test_a_bad_shift_stops_before_any_run(workdir) -> None:
    from conftest import REPO
    from dmarl.errors import UserError
    from dmarl.train import run_training

    config = [str(REPO / "gin/experiments/hasac_simple_spread_cpu.gin")]
    with pytest.raises(UserError, match=r"run.shifts\['fast'\].*not valid task kwargs of mpe/simple_spread_n3"):
        run_training(config, SMALL_HASAC[:-1] + ["run.shifts = {'fast': {'agent_speed': 2.0}}"], progress=False)
    with pytest.raises(UserError, match="run.shifts: entry 'a b'"):
        run_training(config, SMALL_HASAC[:-1] + ["run.shifts = {'a b': {}}"], progress=False)
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())
