"""DOM2's claim checks (dmarl/bench/claim_checks.py) on hand-built leaderboard CSVs."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from dmarl.bench import claim_checks as cc


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _row(task: str, algorithm: str, scores: list[float]) -> dict[str, object]:
    return {"task": task, "algorithm": algorithm, "mean": float(np.mean(scores)), "scores": " ".join(map(str, scores))}


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "leaderboards" / "b"
    _write(folder / "leaderboard.csv", [
        _row("expert", "dom2", [-50, -52]), _row("expert", "bc", [-55, -57]), _row("expert", "omar", [-54, -54]),
        _row("expert-5pct", "dom2", [-53, -55]),
        _row("random", "dom2", [-70, -72]), _row("random", "iql", [-60, -62]), _row("random-5pct", "dom2", [-80, -80]),
    ])
    _write(folder / "shifts.csv", [
        {"task": t, "algorithm": a, "shift": s, "mean": m}
        for t, a, s, m in [("expert", "dom2", "fast", -60), ("expert", "bc", "fast", -61), ("expert", "dom2+cql", "fast", -50),
                           ("expert", "dom2", "slow", -70), ("expert", "bc", "slow", -65),
                           ("random", "dom2", "fast", -75), ("random", "iql", "fast", -76),
                           ("random-5pct", "dom2", "fast", -40)]  # no rival ran it: not a setting
    ])
    return folder


def test_data_efficiency_is_the_worst_gap_to_the_best_full_data_baseline(board: Path) -> None:
    got = cc.data_efficiency("b", ("expert",), "dom2", "-5pct", ("bc", "omar"))
    assert got.value == pytest.approx(-54.0 - (-54.0))  # best baseline at 100 %: omar, mean -54
    assert got.se == pytest.approx(math.hypot(np.std([-53, -55], ddof=1) / math.sqrt(2), 0.0))
    both = cc.data_efficiency("b", ("expert", "random"), "dom2", "-5pct", ("bc", "omar", "iql"))
    assert both.value == pytest.approx(-80.0 - (-61.0))  # random is the worst dataset
    assert "random: dom2 at 5pct -80" in both.detail
    assert math.isnan(cc.data_efficiency("b", ("medium",), "dom2", "-5pct", ("bc",)).value)


def test_shift_count_ignores_other_dom2_variants(board: Path) -> None:
    got = cc.shift_best_fraction("b", "dom2", ("bc", "iql"), 28 / 30)
    assert got.value == pytest.approx(2 / 3) and got.reference == pytest.approx(28 / 30)
    assert "expert/slow (bc -65 > -70)" in got.detail


def test_best_at_full_data_counts_datasets(board: Path) -> None:
    got = cc.best_at_full_data("b", ("expert", "random"), "dom2", ("bc", "omar", "iql"))
    assert got.value == pytest.approx(0.5) and got.reference == 1.0
