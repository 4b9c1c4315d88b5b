"""Implicit Q-learning (Kostrikov et al. 2022): losses, the twin-Q + V critic and its update
step, shared by OMSD's centralised critic (App. H.2), its BRPO ablations and the independent
IQL baseline (``algorithms/baselines/iql.py``)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dmarl.critics.twin_q import TwinQ, make_target, polyak_update
from dmarl.nn.mlp import MLP


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


def awr_weights(q: Tensor, v: Tensor, temperature: float, max_weight: float = 100.0) -> Tensor:
    """IQL Eq. 7's advantage weights exp(beta (Q - V)), clipped at ``max_weight`` (the IQL
    reference code's EXP_ADV_MAX = 100); no gradient flows through them."""
    return torch.exp(temperature * (q - v).detach()).clamp(max=max_weight)


class IQLCritic(nn.Module):
    """Twin Q(x, a) with Polyak target twins and a value V(x) (IQL, Kostrikov et al. 2022).

    ``x`` is the critic's conditioning (global state for a central critic, o_i for BRPO-IND
    and the independent IQL baseline).
    """

    def __init__(
        self, cond_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "relu"
    ) -> None:
        super().__init__()
        self.cond_dim, self.action_dim = cond_dim, action_dim
        self.q = TwinQ(cond_dim + action_dim, hidden, activation)
        self.q_target = make_target(self.q)
        self.v = MLP(cond_dim, 1, hidden, activation)

    def value(self, x: Tensor) -> Tensor:
        return self.v(x).squeeze(-1)


def iql_step(
    critic: IQLCritic,
    v_optim: torch.optim.Optimizer,
    q_optim: torch.optim.Optimizer,
    x: Tensor,
    action: Tensor,
    reward: Tensor,
    terminated: Tensor,
    next_x: Tensor,
    *,
    tau: float,
    gamma: float,
    polyak: float,
) -> dict[str, float]:
    """One IQL step: V by expectile regression on min target twins, then Q by TD on V(s'),
    then the Polyak target update (the order of the IQL reference implementation)."""
    with torch.no_grad():
        q_hat = critic.q_target(x, action)
    v_loss = iql_value_loss(q_hat, critic.value(x), tau)
    v_optim.zero_grad(set_to_none=True)
    v_loss.backward()
    v_optim.step()
    with torch.no_grad():
        next_v = critic.value(next_x)
    q_pred = critic.q(x, action)
    q_loss = iql_q_loss(q_pred, reward, terminated, next_v, gamma)
    q_optim.zero_grad(set_to_none=True)
    q_loss.backward()
    q_optim.step()
    polyak_update(critic.q_target, critic.q, polyak)
    return {"v_loss": v_loss.item(), "q_loss": q_loss.item(), "q_mean": q_pred.detach().mean().item()}
