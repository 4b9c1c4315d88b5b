"""Paper claims checked by computation instead of training: each function measures numbers
(a value, the paper's reference value, a standard error) that a ``check(...)`` rule of the
claims page (:mod:`dmarl.bench.claims`) compares.

- ``mode_shift_enumerated``: OMSD (paper 004) Prop. 3.1 / Cor. 3.2: the TV distance between a
  K-mode coordinated joint policy of n agents and the product of its marginals, enumerated over
  the joint actions, against the closed form 1 - K^(1-n) (:mod:`dmarl.analysis.mode_shift`).
- ``mode_shift_sampled``: the same at n = 4, K = 2 from 200k sampled joint actions.
- ``omad_entropy_bound``: OMAD (paper 000) Theorem 1: the Monte Carlo mean of the chain's
  entropy lower bound l (``OUSample.entropy_lower_bound``) of a linear-score OU chain against
  the true entropy of its Gaussian output a_0, both in closed form (:func:`linear_chain_entropy`).
- ``omad_update_time_linearity``: OMAD Fig. 5: update time about linear in H, timed in one
  process (interleaved blocks), as the largest relative residual of a linear fit.

Every function but the timing one is deterministic (fixed seeds) and runs in well under a
second; the timing one takes about 10 s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class CheckNumbers:
    """What a check measured: ``value`` against the paper's ``reference`` (``se``: Monte Carlo
    standard error of ``value``, 0 when exact), with a line on how it was computed."""

    value: float
    reference: float
    se: float = 0.0
    detail: str = ""


def mode_shift_enumerated(max_agents: int = 8, modes: tuple[int, ...] = (2, 3)) -> CheckNumbers:
    """Largest |TV(pi*, prod_i pi_i) - (1 - K^(1-n))| over n = 1..max_agents and K in ``modes``,
    TV enumerated over the K^n joint actions; reference 0."""
    from dmarl.analysis.mode_shift import coordinated_modes, factorised, mode_shift_tv, tv_distance

    worst, tvs = 0.0, []
    for k in modes:
        for n in range(1, max_agents + 1):
            joint = coordinated_modes(n, k)
            tv = tv_distance(joint, factorised(joint))
            worst = max(worst, abs(tv - mode_shift_tv(n, k)))
            if k == 2:
                tvs.append(f"{tv:.4g}")
    return CheckNumbers(
        value=worst,
        reference=0.0,
        detail=f"max |enumerated TV - (1 - K^(1-n))| over n = 1..{max_agents}, K in {list(modes)}; "
        f"K = 2: TV = {', '.join(tvs)} for n = 1..{max_agents}",
    )


def mode_shift_sampled(n_agents: int = 4, samples: int = 200_000, seed: int = 0) -> CheckNumbers:
    """TV between the empirical coordinated policy (K = 2) and the product of its empirical
    marginals from ``samples`` draws; reference 1 - 2^(1-n)."""
    from dmarl.analysis.mode_shift import factorised, mode_shift_tv, tv_distance

    rng = np.random.default_rng(seed)
    joint = rng.integers(0, 2, size=samples)[:, None] * np.ones(n_agents, dtype=np.int64)
    rows, counts = np.unique(joint, axis=0, return_counts=True)
    empirical = {tuple(int(v) for v in row): c / samples for row, c in zip(rows, counts)}
    tv = tv_distance(empirical, factorised(empirical))
    # With p the share of (0, ..., 0): TV = 1 - p^n - (1 - p)^n, flat at p = 1/2, so its error is
    # the first- plus second-order term of that expansion in p's sampling error.
    p, n = counts[0] / samples, n_agents
    var_p = p * (1 - p) / samples
    d1 = n * ((1 - p) ** (n - 1) - p ** (n - 1))
    d2 = n * (n - 1) * (p ** (n - 2) + (1 - p) ** (n - 2))
    se = float(abs(d1) * math.sqrt(var_p) + 0.5 * d2 * var_p)
    return CheckNumbers(
        value=float(tv), reference=mode_shift_tv(n_agents, 2), se=se,
        detail=f"n = {n_agents} agents, {samples:,} sampled joint actions (seed {seed})",
    )


class LinearScore:
    """Score f(a, t) = c(t) a + d(t) with c(t) = c0 + c1 t, d(t) = d1 t: every distribution of
    the OU chain is Gaussian, so its entropy and bound have closed forms."""

    def __init__(self, c0: float, c1: float, d1: float) -> None:
        self.c0, self.c1, self.d1 = c0, c1, d1

    def coef(self, t: float) -> tuple[float, float]:
        return self.c0 + self.c1 * t, self.d1 * t

    def __call__(self, a, t):  # noqa: ANN001, ANN204 (torch tensors; torch imported lazily)
        c, d = self.coef(float(t))
        return c * a + d


def linear_chain_entropy(score: LinearScore, rates: np.ndarray, eta: float) -> tuple[float, float, float, float]:
    """(mean a_0, var a_0, true entropy H(a_0), E[l]) of the 1-D linear-score OU chain with
    per-step rates beta_h delta = ``rates[h-1]``.

    E[l] = H(a_0) - E_{a_0} KL(p_theta(a_{1:H} | a_0) || q(a_{1:H} | a_0)) (the gap in the
    proof of OMAD Theorem 1), both conditionals computed from dense Gaussians."""
    H = len(rates)
    # a_h = mu[h] + L[h] @ zeta, zeta = (z_H, xi_H, ..., xi_1) i.i.d. N(0, 1)
    mu, L = np.zeros(H + 1), np.zeros((H + 1, H + 1))
    L[H, 0] = eta
    for j, h in enumerate(range(H, 0, -1), start=1):
        b = rates[h - 1]
        c, d = score.coef(h / H)
        m = 1 + b + 2 * eta**2 * b * c
        mu[h - 1] = m * mu[h] + 2 * eta**2 * b * d
        L[h - 1] = m * L[h]
        L[h - 1, j] += eta * math.sqrt(2 * b)
    S = L @ L.T
    var0 = S[0, 0]
    entropy = 0.5 * math.log(2 * math.pi * math.e * var0)
    G = S[1:, 0] / var0
    cond_cov = S[1:, 1:] - np.outer(S[1:, 0], S[0, 1:]) / var0
    # forward chain q: a_h = (1 - b_h) a_{h-1} + sqrt(2 eta^2 b_h) eps_h, h = 1..H
    F, Lq = np.zeros(H), np.zeros((H, H))
    f, row = 1.0, np.zeros(H)
    for h in range(1, H + 1):
        b = rates[h - 1]
        f *= 1 - b
        row = (1 - b) * row
        row[h - 1] = eta * math.sqrt(2 * b)
        F[h - 1], Lq[h - 1] = f, row
    Sq = Lq @ Lq.T
    P = np.linalg.inv(Sq)
    u, v = mu[1:] - G * mu[0], G - F
    delta_mean = u + v * mu[0]
    quad = delta_mean @ P @ delta_mean + var0 * (v @ P @ v)
    kl = 0.5 * (np.trace(P @ cond_cov) + quad - H + np.linalg.slogdet(Sq)[1] - np.linalg.slogdet(cond_cov)[1])
    return float(mu[0]), float(var0), float(entropy), float(entropy - kl)


def omad_entropy_bound(
    steps: int = 8, samples: int = 20_000, eta: float = 1.0, seed: int = 4,
    score: tuple[float, float, float] = (-0.6, 0.3, 0.4),
) -> CheckNumbers:
    """Monte Carlo mean of OMAD's entropy lower bound l over ``samples`` chains of a linear-score
    OU sampler (OMAD's default chain: ``OUSchedule`` with its default horizon, ``steps`` steps;
    no squashing) vs the true entropy H(a_0)."""
    import torch

    from dmarl.diffusion import ou_sample
    from dmarl.diffusion.schedules import OUSchedule

    sched = OUSchedule(steps).double()
    fn = LinearScore(*score)
    out = ou_sample(fn, sched, (samples, 1), eta=eta, squash=False, generator=torch.Generator().manual_seed(seed))
    bound = out.entropy_lower_bound().double()
    _, _, entropy, expected = linear_chain_entropy(fn, sched.ou_rates().numpy(), eta)
    return CheckNumbers(
        value=float(bound.mean()),
        reference=entropy,
        se=float(bound.std() / math.sqrt(samples)),
        detail=f"H = {steps} steps of OMAD's OU chain (T = {sched.horizon:g}), linear score {score}, {samples:,} chains (seed {seed}); "
        f"closed-form E[l] = {expected:.4f}",
    )


def omad_update_time_linearity(
    steps: tuple[int, ...] = (2, 4, 8, 16), blocks: int = 5, updates: int = 6, batch: int = 256, seed: int = 0,
) -> CheckNumbers:
    """OMAD (paper 000) Fig. 5: update time about linear in H. Times one OMAD update (CPU-scale
    networks of ``gin/experiments/omad_simple_spread_cpu.gin``, simple_spread N=3 shapes, one
    thread) for each H in ``steps``, in interleaved blocks within this one process (median of the
    blocks, so load on the machine hits every H alike), fits T(H) = a + b H by least squares and
    returns the largest relative residual of that fit; reference 0.15 (within 15 %)."""
    import time

    import torch

    from dmarl.algorithms.omad import OMAD
    from dmarl.data.batch import Batch
    from dmarl.envs.base import EnvSpec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(seed)
        spec = EnvSpec(name="timing", family="timing", agent_ids=("a", "b", "c"), obs_dims=(18,) * 3,
                       action_dims=(5,) * 3, state_dim=54, episode_limit=25, reward_convention="sum")
        data = Batch(
            obs=torch.randn(batch, 3, 18, generator=gen), state=torch.randn(batch, 54, generator=gen),
            actions=torch.rand(batch, 3, 5, generator=gen) * 2 - 1, reward=torch.randn(batch, generator=gen),
            next_obs=torch.randn(batch, 3, 18, generator=gen), next_state=torch.randn(batch, 54, generator=gen),
            terminated=torch.zeros(batch),
        )
        algos = {}
        for h in steps:
            torch.manual_seed(seed)
            algos[h] = OMAD(spec, torch.device("cpu"), diffusion_steps=h, lr=3e-4, bn_warmup=5000,
                            critic_hidden=(256, 256), actor_hidden=(64, 64, 64), time_dim=32)
            for _ in range(3):
                algos[h].update(data)
        times: dict[int, list[float]] = {h: [] for h in steps}
        for _ in range(blocks):
            for h in steps:
                start = time.perf_counter()
                for _ in range(updates):
                    algos[h].update(data)
                times[h].append(1000 * (time.perf_counter() - start) / updates)
    finally:
        torch.set_num_threads(threads)
    h = np.array(steps, dtype=float)
    t = np.array([float(np.median(times[k])) for k in steps])
    slope, intercept = np.polyfit(h, t, 1)
    worst = float(np.max(np.abs(t - (intercept + slope * h)) / t)) if slope > 0 else math.inf  # b > 0 too
    shown = ", ".join(f"H={k}: {v:.1f} ms" for k, v in zip(steps, t))
    return CheckNumbers(
        value=worst, reference=0.15,
        detail=f"median ms per update ({shown}); fit T = {intercept:.1f} + {slope:.2f} H ms; "
        f"T(H={steps[-1]}) / T(H={steps[0]}) = {t[-1] / t[0]:.2f}",
    )


def _board_csv(board: str, name: str) -> list[dict[str, str]]:
    """Rows of a leaderboard CSV (``leaderboards/<board>/<name>``, under the current directory
    or else the repository's); empty when the benchmark has not written it."""
    import csv

    from dmarl import resources

    for root in (Path.cwd(), Path(resources.DATA_ROOT)):
        path = root / "leaderboards" / board / name
        if path.is_file():
            with path.open(newline="") as handle:
                return list(csv.DictReader(handle))
    return []


def _seed_scores(rows: list[dict[str, str]], task: str, algorithm: str) -> np.ndarray:
    found = [r for r in rows if r["task"] == task and r["algorithm"] == algorithm]
    return np.array([float(x) for x in found[0]["scores"].split()]) if found else np.array([])


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.inf


def data_efficiency(board: str, datasets: tuple[str, ...], algorithm: str, fraction_suffix: str,
                    baselines: tuple[str, ...]) -> CheckNumbers:
    """DOM2's 20x claim on a benchmark's leaderboard: min over datasets of mean(``algorithm`` on
    ``<dataset><fraction_suffix>``) - max over ``baselines`` of their mean on ``<dataset>`` (100 %);
    reference 0; se: the seed standard error of that difference on the worst dataset."""
    rows = _board_csv(board, "leaderboard.csv")
    gaps, lines = [], []
    for data in datasets:
        small = _seed_scores(rows, data + fraction_suffix, algorithm)
        full = {b: _seed_scores(rows, data, b) for b in baselines}
        full = {b: v for b, v in full.items() if len(v)}
        if not len(small) or not full:
            lines.append(f"{data}: not run")
            continue
        best = max(full, key=lambda b: full[b].mean())
        gap = float(small.mean() - full[best].mean())
        gaps.append((gap, math.hypot(_se(small), _se(full[best]))))
        lines.append(f"{data}: {algorithm} at {fraction_suffix.strip('-_') or 'subset'} {small.mean():.4g} vs best baseline "
                     f"{best} at 100 % {full[best].mean():.4g} (gap {gap:+.3g})")
    if not gaps:
        return CheckNumbers(math.nan, 0.0, 0.0, f"leaderboards/{board}/leaderboard.csv has no such rows; " + "; ".join(lines))
    gap, se = min(gaps)
    return CheckNumbers(gap, 0.0, se, "; ".join(lines))


def _beats(means: dict[str, float], algorithm: str, rivals: tuple[str, ...]) -> tuple[bool, str]:
    """Whether ``algorithm``'s mean is at least every present rival's, and the best rival."""
    present = [a for a in rivals if a in means]
    best = max(present, key=lambda a: means[a], default="")
    return (not best or means[algorithm] >= means[best]), best


def shift_best_fraction(board: str, algorithm: str, rivals: tuple[str, ...], reference: float) -> CheckNumbers:
    """DOM2's shift claim on a benchmark's ``shifts.csv``: the fraction of (dataset, shift)
    settings run by ``algorithm`` and a rival where its seed mean is at least every rival's
    (the paper: 28 of 30)."""
    rows = _board_csv(board, "shifts.csv")
    settings = sorted({(r["task"], r["shift"]) for r in rows if r["algorithm"] == algorithm}
                      & {(r["task"], r["shift"]) for r in rows if r["algorithm"] in rivals})  # compared settings only
    if not settings:
        return CheckNumbers(math.nan, reference, 0.0, f"leaderboards/{board}/shifts.csv has no {algorithm} rows")
    lost = []
    for task, shift in settings:
        means = {r["algorithm"]: float(r["mean"]) for r in rows if (r["task"], r["shift"]) == (task, shift)}
        won, best = _beats(means, algorithm, rivals)
        if not won:
            lost.append(f"{task}/{shift} ({best} {means[best]:.4g} > {means[algorithm]:.4g})")
    wins = len(settings) - len(lost)
    return CheckNumbers(wins / len(settings), reference, 0.0,
                        f"{algorithm} best in {wins} of {len(settings)} settings" + (f"; not best: {', '.join(lost)}" if lost else ""))


def best_at_full_data(board: str, datasets: tuple[str, ...], algorithm: str, rivals: tuple[str, ...]) -> CheckNumbers:
    """Fraction of ``datasets`` (100 % of the data) where ``algorithm``'s seed mean is at least
    every rival's (the paper: all of them); reference 1."""
    rows = _board_csv(board, "leaderboard.csv")
    wins, lines = 0, []
    for data in datasets:
        means = {r["algorithm"]: float(r["mean"]) for r in rows if r["task"] == data}
        if algorithm not in means:
            lines.append(f"{data}: not run")
            continue
        won, best = _beats(means, algorithm, rivals)
        wins += won
        lines.append(f"{data}: {algorithm} {means[algorithm]:.4g} vs best baseline {best} {means.get(best, math.nan):.4g}")
    return CheckNumbers(wins / len(datasets), 1.0, 0.0, "; ".join(lines))


DOM2_SPREAD_BOARD = "dom2_simple_spread"
DOM2_SPREAD_DATASETS = ("expert", "medium", "medium-replay", "random")
OFFLINE_BASELINES = ("bc", "matd3_bc", "macql", "omar", "iql", "omsd")


def dom2_spread_data_efficiency() -> CheckNumbers:
    """DOM2 (003) abstract, on gin/benchmarks/dom2_simple_spread.gin: DOM2 at 5 % >= the best
    baseline at 100 %, on every collected dataset."""
    return data_efficiency(DOM2_SPREAD_BOARD, DOM2_SPREAD_DATASETS, "dom2", "-5pct", OFFLINE_BASELINES)


def dom2_spread_shift_best() -> CheckNumbers:
    """DOM2 (003) abstract: best in 28 of 30 shifted settings; here the share of (dataset, shift)."""
    return shift_best_fraction(DOM2_SPREAD_BOARD, "dom2", OFFLINE_BASELINES, 28 / 30)


def dom2_spread_best_at_full() -> CheckNumbers:
    """DOM2 (003) abstract: better than the baselines in every setting; here at 100 % per dataset."""
    return best_at_full_data(DOM2_SPREAD_BOARD, DOM2_SPREAD_DATASETS, "dom2", OFFLINE_BASELINES)


CHECKS: dict[str, Callable[[], CheckNumbers]] = {
    "mode_shift_enumerated": mode_shift_enumerated,
    "mode_shift_sampled": mode_shift_sampled,
    "omad_entropy_bound": omad_entropy_bound,
    "omad_update_time_linearity": omad_update_time_linearity,
    "dom2_spread_data_efficiency": dom2_spread_data_efficiency,
    "dom2_spread_shift_best": dom2_spread_shift_best,
    "dom2_spread_best_at_full": dom2_spread_best_at_full,
}
