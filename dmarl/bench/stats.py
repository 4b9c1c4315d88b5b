"""Leaderboard statistics over seeds: summaries, normalisation, aggregate IQM, probability of
improvement and sample efficiency.

Intervals are percentile bootstraps from ``scipy.stats.bootstrap`` with a fixed seed, so the
same scores always give the same interval. With several samples (one per task) each sample is
resampled on its own: the stratified bootstrap of Agarwal et al. (2021, rliable).

With fewer than :data:`MIN_RELIABLE_SEEDS` seeds a percentile bootstrap interval is too narrow
(3 seeds have only 10 distinct resample means; 1 seed has no spread at all), so every table
that shows a std, an interval or P(improvement) from such samples prints
:func:`seed_caveat` beside it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

MIN_RELIABLE_SEEDS = 5


def seed_caveat(n: int) -> str:
    """The small-sample warning shown beside a std / interval from ``n`` seeds ("" when n >= 5)."""
    if n >= MIN_RELIABLE_SEEDS:
        return ""
    if n <= 1:
        return f"n={n} seed: no std, no CI"
    return f"n={n} seeds: CI unreliable"


@dataclass(frozen=True)
class Summary:
    """Mean, sample std, IQM and a bootstrap interval of the mean over ``n`` seeds."""

    n: int
    mean: float
    std: float
    iqm: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval (NaN bounds when it cannot be computed);
    ``seeds``: the fewest seeds of any sample it was computed from (0: not recorded)."""

    value: float
    ci_low: float
    ci_high: float
    seeds: int = 0


@dataclass(frozen=True)
class Efficiency:
    """Env steps each algorithm needs to reach ``target`` and its speed-up over ``reference``
    (online runs only: an offline run's x-axis counts updates, not samples).

    ``target`` is the final score of ``reference`` (by default the best baseline).
    ``steps[a]`` is None when ``a``'s mean learning curve never reaches the target.
    """

    target: float
    reference: str
    steps: dict[str, float | None]
    speedup: dict[str, float | None]


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50 % (``trim_mean`` cutting 25 % each side)."""
    return sps.trim_mean(x, 0.25, axis=axis)


@dataclass(frozen=True)
class Bootstrap:
    """Settings of the percentile bootstrap; the fixed seed makes intervals reproducible."""

    confidence: float = 0.95
    n_resamples: int = 2000
    seed: int = 0

    def arrays(self, arrays: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Interval bounds of a statistic vectorised along the last axis (any leading shape)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate (constant) samples: zero-width interval
            result = sps.bootstrap(
                arrays,
                statistic,
                confidence_level=self.confidence,
                n_resamples=self.n_resamples,
                method="percentile",
                vectorized=True,
                axis=-1,
                rng=np.random.default_rng(self.seed),
            )
        return result.confidence_interval.low, result.confidence_interval.high

    def ci(self, samples: Sequence[Sequence[float]], statistic: Callable[..., np.ndarray]) -> tuple[float, float]:
        """Interval of ``statistic(*samples, axis=-1)``, each sample resampled independently;
        NaNs when a sample has fewer than two values."""
        arrays = tuple(np.asarray(s, dtype=float) for s in samples)
        if not arrays or any(a.shape[-1] < 2 for a in arrays):
            return math.nan, math.nan
        low, high = self.arrays(arrays, statistic)
        return float(low), float(high)


DEFAULT_BOOTSTRAP = Bootstrap()


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def summarize(scores: Sequence[float], boot: Bootstrap = DEFAULT_BOOTSTRAP) -> Summary:
    """Summary of one (algorithm, task): mean, std (ddof=1), IQM, interval of the mean."""
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        raise ValueError("no scores to summarise")
    low, high = boot.ci([x], _mean)
    return Summary(
        n=int(x.size),
        mean=float(x.mean()),
        std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
        iqm=float(iqm(x)),
        ci_low=low,
        ci_high=high,
    )


def normalise(score: float | np.ndarray, random: float, expert: float) -> float | np.ndarray:
    """``100 (score - random) / (expert - random)``: 0 = random policy, 100 = expert."""
    if expert == random:
        raise ValueError("expert and random references must differ")
    return 100.0 * (np.asarray(score, dtype=float) - random) / (expert - random)


def aggregate_iqm(per_task: Sequence[Sequence[float]], boot: Bootstrap = DEFAULT_BOOTSTRAP) -> Estimate:
    """IQM of normalised scores pooled over tasks, with a stratified bootstrap interval."""
    arrays = [np.asarray(s, dtype=float) for s in per_task if len(s)]
    if not arrays:
        raise ValueError("no scores to aggregate")

    def pooled_iqm(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        return iqm(np.concatenate(xs, axis=axis), axis=axis)

    low, high = boot.ci(arrays, pooled_iqm)
    return Estimate(float(pooled_iqm(*arrays)), low, high, min(a.size for a in arrays))


def probability_of_improvement(
    x_per_task: Sequence[Sequence[float]],
    y_per_task: Sequence[Sequence[float]],
    boot: Bootstrap = DEFAULT_BOOTSTRAP,
) -> Estimate:
    """P(X > Y): the chance that a run of X beats a run of Y on a random task (ties count
    half), averaged over tasks, with a stratified bootstrap interval."""
    if len(x_per_task) != len(y_per_task) or not x_per_task:
        raise ValueError("X and Y need scores on the same, non-empty list of tasks")
    arrays = [np.asarray(s, dtype=float) for pair in zip(x_per_task, y_per_task) for s in pair]

    def average_p(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        ps = []
        for x, y in zip(xs[0::2], xs[1::2]):
            diff = x[..., :, None] - y[..., None, :]
            ps.append(np.mean((diff > 0) + 0.5 * (diff == 0), axis=(-2, -1)))
        return np.mean(ps, axis=0)

    low, high = boot.ci(arrays, average_p)
    return Estimate(float(average_p(*arrays)), low, high, min(a.size for a in arrays))


def learning_curve(
    histories: Sequence[Mapping[int, float]], boot: Bootstrap = DEFAULT_BOOTSTRAP
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and bootstrap interval of the mean over seeds, at the env steps every seed
    evaluated. ``histories``: one ``{env_step: value}`` per seed. Returns
    ``steps, mean, low, high`` (NaN bounds with fewer than two seeds)."""
    common = set(histories[0]) if histories else set()
    for h in histories[1:]:
        common &= set(h)
    steps = np.array(sorted(common), dtype=float)
    values = np.array([[h[s] for h in histories] for s in sorted(common)], dtype=float)
    values = values.reshape(len(steps), len(histories))
    mean = values.mean(axis=1) if len(histories) else np.zeros(len(steps))
    if len(histories) < 2 or not len(steps):
        nan = np.full(len(steps), np.nan)
        return steps, mean, nan, nan
    low, high = boot.arrays((values,), _mean)
    return steps, mean, np.asarray(low, dtype=float), np.asarray(high, dtype=float)


def steps_to_target(steps: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """The first env step at which ``values`` reaches ``target`` (None if it never does)."""
    for step, value in zip(steps, values):
        if value >= target:
            return float(step)
    return None


def sample_efficiency(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    finals: Mapping[str, float],
    baselines: Sequence[str],
    target: float | None = None,
) -> Efficiency | None:
    """Steps to reach the target score, and speed-ups relative to the reference baseline.

    The reference is the baseline with the best final score; the target is that score unless
    given. The reference's own steps are where its mean curve first reaches the target, or
    its last evaluation when the curve never does (it reached that score by the end).
    Returns None when no baseline has a final score and a learning curve.
    """
    candidates = [b for b in baselines if b in finals and b in curves and len(curves[b][0])]
    if not candidates:
        return None
    reference = max(candidates, key=lambda b: finals[b])
    goal = finals[reference] if target is None else target
    ref_steps, ref_values = curves[reference]
    ref_reach = steps_to_target(ref_steps, ref_values, goal)
    if ref_reach is None:
        ref_reach = float(ref_steps[-1])
    steps: dict[str, float | None] = {}
    speedup: dict[str, float | None] = {}
    for name, (xs, ys) in curves.items():
        reach = ref_reach if name == reference else steps_to_target(xs, ys, goal)
        steps[name] = reach
        speedup[name] = ref_reach / reach if reach else None  # reach 0: no ratio
    return Efficiency(target=float(goal), reference=reference, steps=steps, speedup=speedup)
