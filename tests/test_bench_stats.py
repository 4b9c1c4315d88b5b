"""Leaderboard statistics against hand-computed values; references and reported numbers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dmarl.bench import stats
from dmarl.bench.references import load_references, load_reported
from dmarl.errors import UserError


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    assert stats.iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)
    # sorted: 0 1 | 2 3 4 5 | 6 100 -> (2 + 3 + 4 + 5) / 4
    assert stats.iqm(np.array([100.0, 0, 6, 1, 5, 2, 4, 3])) == pytest.approx(3.5)


def test_normalisation_uses_fixed_references() -> None:
    # Paper 004's simple_spread references: random 159.8, expert 516.8.
    assert stats.normalise(159.8, 159.8, 516.8) == pytest.approx(0.0)
    assert stats.normalise(516.8, 159.8, 516.8) == pytest.approx(100.0)
    assert stats.normalise(338.3, 159.8, 516.8) == pytest.approx(50.0)
    assert stats.normalise(-4.1 + 0.25 * 189.7, -4.1, 185.6) == pytest.approx(25.0)
    with pytest.raises(ValueError):
        stats.normalise(1.0, 2.0, 2.0)


def test_summary_values_and_interval_contain_the_mean() -> None:
    scores = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
    s = stats.summarize(scores)
    assert (s.n, s.mean, s.iqm) == (8, pytest.approx(5.0), pytest.approx(4.5))
    assert s.std == pytest.approx(math.sqrt(32 / 7))  # sample std, ddof = 1
    assert s.ci_low < s.mean < s.ci_high
    assert min(scores) <= s.ci_low and s.ci_high <= max(scores)


def test_intervals_are_deterministic_given_the_seed() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(10.0, 2.0, size=10)
    a, b = stats.summarize(scores), stats.summarize(scores)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    c = stats.summarize(scores, stats.Bootstrap(seed=1))
    assert (c.ci_low, c.ci_high) != (a.ci_low, a.ci_high)
    wide = stats.summarize(scores, stats.Bootstrap(confidence=0.99))
    assert wide.ci_low <= a.ci_low and wide.ci_high >= a.ci_high


def test_one_seed_has_no_interval() -> None:
    s = stats.summarize([3.0])
    assert s.mean == 3.0 and s.std == 0.0 and math.isnan(s.ci_low) and math.isnan(s.ci_high)


def test_aggregate_iqm_pools_tasks_with_a_stratified_interval() -> None:
    per_task = [[10.0, 20.0, 30.0, 40.0], [50.0, 60.0, 70.0, 80.0]]
    est = stats.aggregate_iqm(per_task)
    assert est.value == pytest.approx(45.0)  # middle half of the 8 pooled scores: 30 40 50 60
    assert est.ci_low <= 45.0 <= est.ci_high
    assert stats.aggregate_iqm(per_task) == est


def test_probability_of_improvement_counts_ties_half() -> None:
    x, y = [[1.0, 2.0, 3.0]], [[0.0, 2.0, 2.5]]
    # pairs with x > y: (1,0) (2,0) (3,0) (3,2) (3,2.5) -> 5, one tie (2,2) -> 0.5; out of 9.
    p = stats.probability_of_improvement(x, y)
    assert p.value == pytest.approx(5.5 / 9)
    assert stats.probability_of_improvement(y, x).value == pytest.approx(1 - 5.5 / 9)
    assert p.ci_low <= p.value <= p.ci_high
    two_tasks = stats.probability_of_improvement([[1.0, 2.0], [5.0, 6.0]], [[3.0, 4.0], [0.0, 1.0]])
    assert two_tasks.value == pytest.approx(0.5)  # 0 on the first task, 1 on the second


def test_learning_curve_uses_the_steps_all_seeds_share() -> None:
    steps, mean, low, high = stats.learning_curve([{0: 1.0, 10: 2.0, 20: 3.0}, {0: 3.0, 10: 4.0}, {0: 2.0, 10: 6.0}])
    assert steps.tolist() == [0.0, 10.0]
    assert mean.tolist() == pytest.approx([2.0, 4.0])
    assert np.all(low <= mean) and np.all(mean <= high)
    steps, mean, low, _ = stats.learning_curve([{0: 1.0, 5: 2.0}])
    assert mean.tolist() == [1.0, 2.0] and np.isnan(low).all()


def test_sample_efficiency_against_the_best_baseline() -> None:
    steps = [100.0, 200.0, 400.0, 800.0]
    curves = {
        "base_good": (steps, [1.0, 2.0, 3.0, 4.0]),
        "base_poor": (steps, [0.0, 1.0, 1.0, 2.0]),
        "new": (steps, [2.0, 4.5, 5.0, 5.0]),
        "weak": (steps, [0.0, 0.0, 1.0, 1.0]),
    }
    finals = {"base_good": 4.0, "base_poor": 2.0, "new": 5.0, "weak": 1.0}
    eff = stats.sample_efficiency(curves, finals, ["base_good", "base_poor"])
    assert eff is not None and eff.reference == "base_good" and eff.target == 4.0
    assert eff.steps == {"base_good": 800.0, "base_poor": None, "new": 200.0, "weak": None}
    assert eff.speedup["new"] == pytest.approx(4.0) and eff.speedup["base_good"] == pytest.approx(1.0)
    assert eff.speedup["weak"] is None
    # A reference whose curve never reaches its own (10x-episode) final score: its last step.
    eff = stats.sample_efficiency(curves, {**finals, "base_good": 4.2}, ["base_good"])
    assert eff.steps["base_good"] == 800.0 and eff.steps["new"] == 200.0
    assert stats.sample_efficiency(curves, finals, []) is None
    assert stats.steps_to_target([1, 2, 3], [0.0, 0.5, 0.9], 0.5) == 2.0


def test_repository_references_hold_paper_004_mpe_numbers() -> None:
    refs = load_references()
    spread = refs.lookup("omar/mpe/simple_spread")
    assert (spread.random, spread.expert) == (159.8, 516.8)
    assert refs.lookup("mpe/simple_tag_n3", "omar/mpe/simple_tag/Expert").expert == 185.6
    assert refs.lookup("unknown", "", "omar-npy/simple_world/medium").random == -6.8
    assert refs.lookup("toy/bandit").expert == 1.0
    measured = refs.lookup("mpe/simple_spread_n3")  # scripts/measure_references.py, mpe2's own reward
    assert measured.random < measured.expert < 0
    assert refs.version == "2"


def test_bad_references_and_reported_files_are_user_errors(tmp_path: Path) -> None:
    bad = tmp_path / "refs.json"
    bad.write_text(json.dumps({"version": 1, "tasks": {"t": {"random": 1, "expert": 1, "source": "x"}}}))
    with pytest.raises(UserError, match="must differ"):
        load_references(bad)
    bad.write_text(json.dumps({"version": 1, "tasks": {"t": {"random": "low", "expert": 1, "source": "x"}}}))
    with pytest.raises(UserError, match="finite number"):
        load_references(bad)
    with pytest.raises(UserError, match="not found"):
        load_references(tmp_path / "none.json")
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "p.csv").write_text("task,algorithm,mean\nt,a,1\n")
    with pytest.raises(UserError, match="missing columns"):
        load_reported(tmp_path / "rep")
    (tmp_path / "rep" / "p.csv").write_text("task,algorithm,mean,std,steps,source\nt,a,1.5,,1e6,Paper (2024) Table 2\n")
    (row,) = load_reported(tmp_path / "rep")
    assert (row.task, row.algorithm, row.mean, row.steps) == ("t", "a", 1.5, "1e6") and math.isnan(row.std)
    assert load_reported(tmp_path / "absent") == []
