"""OMAD's state-coverage metric (Sec. 6.2): the fraction of visited bins of a 2-D grid over
two state dimensions of the replay buffer."""
from __future__ import annotations

import numpy as np


def state_coverage(
    states: np.ndarray, dims: tuple[int, int], low: tuple[float, float], high: tuple[float, float], bin_size: float
) -> float:
    """Fraction of the ``ceil((high - low) / bin_size)`` grid cells holding >= 1 state.

    States outside ``[low, high]`` are ignored. For Ant 2x4 the paper states dims (1, 21),
    range [-19, 18] x [-16, 19] and bin 0.5, which gives 74 x 70 = 5180 cells, not the
    1368 it also states; we follow the stated range and bin (set them through gin).
    """
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    n_bins = np.ceil((hi - lo) / bin_size - 1e-9).astype(np.int64)
    points = states[:, list(dims)].astype(np.float64)
    inside = np.all((points >= lo) & (points < hi), axis=1)
    cells = np.floor((points[inside] - lo) / bin_size).astype(np.int64)
    cells = np.minimum(cells, n_bins - 1)
    visited = np.unique(cells[:, 0] * n_bins[1] + cells[:, 1]).size
    return float(visited / np.prod(n_bins))
