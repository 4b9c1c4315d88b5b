"""The OMSD bandit dataset (paper 004, Sec. 4.1), generated reproducibly from a seed.

Joint actions a = (a1, a2) are drawn from the equal mixture of N((0.8, 0.8), 0.3^2 I) and
N((-0.8, -0.8), 0.3^2 I) (the paper's "variance sigma = 0.3" is read as a standard deviation
of 0.3, as in ../shared/docs/algorithms.md), 1,000,000 of them by default. The paper says
nothing about the action box, so by default the samples are stored **as drawn**
(``boundary = "none"``: about 25 % of the coordinates lie beyond +-1, the behaviour density is
exactly the mixture, whose diffused score has a closed form, see ``mixture_score``).
Options: ``boundary = "resample"`` redraws out-of-box samples (a truncated mixture);
``boundary = "clip"`` clips them to [-1, 1] (what an environment that clips its inputs would
record; this puts a point mass on the box's faces, a density wall that holds a
behaviour-regularised actor below the corner). The reward is r = a1 * a2 on the stored
actions (so up to ~2.6 outside the box; a deterministic tanh actor stays inside it), every
transition is a one-step episode (terminated), observations and state are the constant [1.0].

``make_bandit_dataset`` returns an :class:`OfflineDataset` (with provenance: generator,
mixture parameters, seed, boundary rule, versions); ``write_bandit_dataset`` writes it in the
suite's native format (``dmarl datasets make-bandit --out PATH`` on the command line).
The same seed gives the same bytes of actions and rewards on any machine (numpy PCG64).
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import dmarl
from dmarl.data.offline import EpisodeIndex, OfflineDataset
from dmarl.envs.base import package_versions
from dmarl.errors import UserError

BANDIT_TASK = "toy/bandit"
DEFAULT_SIZE = 1_000_000
MODES = (0.8, -0.8)
STD = 0.3
BOUNDARIES = ("none", "resample", "clip")
DEFAULT_BOUNDARY = "none"


def sample_mixture(
    size: int,
    rng: np.random.Generator,
    *,
    modes: tuple[float, ...] = MODES,
    std: float = STD,
    boundary: str = DEFAULT_BOUNDARY,
) -> np.ndarray:
    """``[size, 2]`` joint actions: a mode m picked uniformly per sample, then N((m, m), std^2 I),
    kept as drawn ('none') or in [-1, 1]^2 by ``boundary`` ('resample' or 'clip')."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    means = np.asarray(modes, dtype=np.float64)
    out = np.empty((size, 2), dtype=np.float64)
    todo = np.arange(size)
    while todo.size:
        centre = means[rng.integers(0, len(means), size=todo.size)]
        draw = centre[:, None] + std * rng.standard_normal((todo.size, 2))
        if boundary != "resample":
            out[todo] = np.clip(draw, -1.0, 1.0) if boundary == "clip" else draw
            break
        inside = np.all(np.abs(draw) <= 1.0, axis=1)
        out[todo[inside]] = draw[inside]
        todo = todo[~inside]
    return out.astype(np.float32)


def make_bandit_dataset(
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    *,
    modes: tuple[float, ...] = MODES,
    std: float = STD,
    boundary: str = DEFAULT_BOUNDARY,
) -> OfflineDataset:
    """The bandit dataset of ``size`` one-step transitions (module docstring)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if boundary not in BOUNDARIES:
        raise UserError(f"bandit dataset: boundary must be one of {BOUNDARIES}, got {boundary!r}")
    actions = sample_mixture(size, np.random.default_rng(seed), modes=modes, std=std, boundary=boundary)
    ones_obs = np.ones((size, 2, 1), np.float32)
    ones_state = np.ones((size, 1), np.float32)
    reward = (actions[:, 0] * actions[:, 1]).astype(np.float32)
    arrays = {
        "obs": ones_obs,
        "state": ones_state,
        "actions": actions[:, :, None],
        "reward": reward,
        "next_obs": ones_obs,
        "next_state": ones_state,
        "terminated": np.ones(size, np.float32),
    }
    provenance = {
        "env": BANDIT_TASK,
        "family": "toy",
        "policy": "omsd-bandit-mixture",
        "generator": "dmarl.envs.toy_data.make_bandit_dataset",
        "paper": "OMSD (paper 004) Sec. 4.1: 1,000,000 joint actions from a 2-Gaussian mixture",
        "mixture": {"means": [[m, m] for m in modes], "std": std, "weights": [1.0 / len(modes)] * len(modes)},
        "boundary": boundary,
        "seed": seed,
        "size": size,
        "versions": {"dmarl": dmarl.__version__, **package_versions("numpy")},
        "python": sys.version.split()[0],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metadata = {
        "format": "collected",
        "task": BANDIT_TASK,
        "reward_convention": "shared",
        "true_dims_known": True,
        "action_range": None if boundary == "none" else [-1.0, 1.0],  # drawn as is: no action box
        "provenance": provenance,
    }
    episodes = EpisodeIndex.from_lengths(np.ones(size, np.int64), reward.astype(np.float64))
    return OfflineDataset(arrays, episodes, obs_dims=(1, 1), action_dims=(1, 1), metadata=metadata)


def write_bandit_dataset(
    path: str | Path, size: int = DEFAULT_SIZE, seed: int = 0, *, boundary: str = DEFAULT_BOUNDARY, force: bool = False
) -> Path:
    """Generate the bandit dataset and write it in the native format at ``path``."""
    from dmarl.envs.datasets import write_dataset

    return write_dataset(make_bandit_dataset(size, seed, boundary=boundary), path, "native", force=force)


def ensure_bandit_dataset(
    path: str | Path, size: int = DEFAULT_SIZE, seed: int = 0, *, boundary: str = DEFAULT_BOUNDARY
) -> Path:
    """``path`` if it already holds a bandit dataset of this size, seed and boundary rule;
    otherwise (re)generate it there (what a benchmark calls before its cells run)."""
    from dmarl.envs.datasets import load_dataset

    path = Path(path)
    if path.exists():
        try:
            prov = load_dataset(path).metadata.get("provenance", {})
        except UserError:  # unreadable or not a dataset: regenerate it below
            prov = {}
        if (prov.get("size"), prov.get("seed"), prov.get("boundary")) == (size, seed, boundary):
            return path
    return write_bandit_dataset(path, size, seed, boundary=boundary, force=True)


def mixture_score(
    x: np.ndarray,
    alpha: float,
    sigma: float,
    *,
    modes: tuple[float, ...] = MODES,
    std: float = STD,
    dims: int = 1,
) -> np.ndarray:
    """grad_x log mu_t(x) in closed form, where mu_t is the law of alpha a + sigma z for a drawn
    from the (unclipped) mixture restricted to ``dims`` coordinates (1: one agent's marginal,
    2: the joint) and z ~ N(0, I): the equal mixture of N(alpha (m, .., m), (alpha^2 std^2 +
    sigma^2) I). ``x``: ``[..., dims]``. (A VP-SDE behaviour model's -eps(x, t) / sigma_t
    should match it; the test of the learned models uses it.)"""
    x = np.asarray(x, dtype=np.float64)
    var = alpha**2 * std**2 + sigma**2
    centres = alpha * np.asarray(modes, dtype=np.float64)  # [K]
    diff = x[..., None, :] - centres[:, None]  # [..., K, dims]
    logw = -0.5 * (diff**2).sum(-1) / var  # equal weights and variances: only the distances matter
    w = np.exp(logw - logw.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return -(w[..., None] * diff).sum(-2) / var
