"""Proposition 3.1 / Corollary 3.2 of OMSD (paper 004, proof in App. G.1): combinatorial mode shift.

A coordinated joint policy over n agents with K equally likely modes a_k = (k, ..., k),
k = 0..K-1, has marginals Uniform{0..K-1}; their product (the factorised approximation
prod_i pi_i(a_i)) spreads mass over K^n joint actions, and

    TV(pi*, prod_i pi_i) = 1 - K^{1-n}      (Prop. 3.1: K = 2, TV = 1 - 2^{1-n}).

``mode_shift_tv`` is the closed form; ``coordinated_modes``, ``marginals``, ``factorised``
and ``tv_distance`` compute the same quantity by enumeration over discrete joint actions
(what tests/test_omsd.py checks the closed form against).
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping

JointPolicy = dict[tuple[int, ...], float]


def mode_shift_tv(n_agents: int, n_modes: int = 2) -> float:
    """TV distance between a K-mode coordinated joint policy of n agents and the product of its
    marginals: 1 - K^(1 - n) (Prop. 3.1 for K = 2; Corollary 3.2 for K modes)."""
    if n_agents < 1 or n_modes < 1:
        raise ValueError(f"need n_agents >= 1 and n_modes >= 1, got {n_agents}, {n_modes}")
    return 1.0 - float(n_modes) ** (1 - n_agents)


def coordinated_modes(n_agents: int, n_modes: int = 2) -> JointPolicy:
    """pi*: probability 1/K on each joint action (k, ..., k)."""
    return {(k,) * n_agents: 1.0 / n_modes for k in range(n_modes)}


def marginals(joint: Mapping[tuple[int, ...], float]) -> list[dict[int, float]]:
    """Each agent's marginal distribution of a discrete joint policy."""
    n = len(next(iter(joint)))
    out: list[dict[int, float]] = [{} for _ in range(n)]
    for action, p in joint.items():
        for i, a in enumerate(action):
            out[i][a] = out[i].get(a, 0.0) + p
    return out


def factorised(joint: Mapping[tuple[int, ...], float]) -> JointPolicy:
    """prod_i pi_i(a_i) of the marginals, enumerated over every combination of their supports."""
    margs = marginals(joint)
    prod: JointPolicy = {}
    for action in itertools.product(*(sorted(m) for m in margs)):
        p = 1.0
        for m, a in zip(margs, action):
            p *= m[a]
        prod[action] = p
    return prod


def tv_distance(p: Mapping[tuple[int, ...], float], q: Mapping[tuple[int, ...], float]) -> float:
    """(1/2) sum_a |p(a) - q(a)| over the union of the supports."""
    return 0.5 * sum(abs(p.get(a, 0.0) - q.get(a, 0.0)) for a in set(p) | set(q))
