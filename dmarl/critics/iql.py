"""Implicit Q-learning losses (Kostrikov et al. 2022), as OMSD's centralised critic (App. H.2)."""
from __future__ import annotations

from torch import Tensor


def expectile_loss(u: Tensor, tau: float) -> Tensor:
    """Mean of L_2^tau(u) = |tau - 1(u < 0)| u^2 (IQL Eq. 5, OMSD App. H.2)."""
    weight = (tau - (u < 0).to(u.dtype)).abs()
    return (weight * u**2).mean()


def iql_value_loss(q_target: Tensor, v: Tensor, tau: float) -> Tensor:
    """L_V = E[L_2^tau(Qhat(s, a) - V(s))] with Qhat = min over target twins, given as
    ``q_target`` [B] or [n, B] (reduced by min over the first dim); Qhat carries no gradient."""
    q = q_target.min(0).values if q_target.dim() == v.dim() + 1 else q_target
    return expectile_loss(q.detach() - v, tau)


def iql_q_loss(q_pred: Tensor, reward: Tensor, terminated: Tensor, next_v: Tensor, gamma: float) -> Tensor:
    """L_Q = E[(r + gamma (1 - term) V(s') - Q_j(s, a))^2] averaged over twins j (IQL Eq. 6);
    ``q_pred`` [n, B] or [B], the target carries no gradient."""
    target = (reward + gamma * (1.0 - terminated.to(reward.dtype)) * next_v).detach()
    return ((q_pred - target) ** 2).mean()
