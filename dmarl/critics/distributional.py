"""Categorical distributional critic (C51) with CrossQ BatchRenorm, as in OMAD Sec. 5.2.

``CategoricalCritic`` outputs logits over atoms z_j = linspace(v_min, v_max, n_atoms);
``categorical_td_target`` builds the projected target of Eq. 12; ``categorical_loss`` is
Eq. 13's cross-entropy with the entropy regulariser; ``crossq_forward`` is CrossQ's joint
forward of (s, a) and (s', a') in one batch.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dmarl.nn.mlp import MLP


class CategoricalCritic(nn.Module):
    """Z_phi(s, a): logits [..., n_atoms] over ``support`` = linspace(v_min, v_max, n_atoms).

    Inputs are concatenated along the last dim (e.g. state and joint action). Defaults follow
    OMAD App. D.2 / Table 1: 2 x 2048 ReLU, 101 atoms, v_min = -v_max, BatchRenorm on the input
    and after every hidden activation (momentum 0.99, ``warmup_steps`` of plain BN).
    ``batch_renorm=False`` gives a plain MLP.
    """

    def __init__(
        self,
        in_dim: int,
        v_max: float,
        v_min: float | None = None,
        n_atoms: int = 101,
        hidden: Sequence[int] = (2048, 2048),
        activation: str = "relu",
        batch_renorm: bool = True,
        momentum: float = 0.99,
        warmup_steps: int = 100_000,
    ) -> None:
        super().__init__()
        v_min = -v_max if v_min is None else v_min
        norm = "batchrenorm" if batch_renorm else None
        self.net = MLP(
            in_dim,
            n_atoms,
            hidden,
            activation,
            input_norm=norm,
            hidden_norm=norm,
            norm_kwargs={"momentum": momentum, "warmup_steps": warmup_steps} if batch_renorm else None,
        )
        self.register_buffer("support", torch.linspace(v_min, v_max, n_atoms))

    @property
    def v_min(self) -> float:
        return float(self.support[0])

    @property
    def v_max(self) -> float:
        return float(self.support[-1])

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.net(torch.cat(inputs, dim=-1))

    def q_value(self, logits: Tensor) -> Tensor:
        """Q = E[Z] = sum_j softmax(logits)_j z_j."""
        return (torch.softmax(logits, dim=-1) * self.support).sum(-1)


def crossq_forward(critic: nn.Module, inputs: Sequence[Tensor], next_inputs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """CrossQ's joint forward: one pass on the batch-concatenation of (s, a) and (s', a'), so
    BatchRenorm sees both halves' statistics; returns (out, sg(next_out)). Run the critic in
    train mode; no target critic is used (OMAD Sec. 5.2)."""
    joint = critic(*(torch.cat([x, y], dim=0) for x, y in zip(inputs, next_inputs)))
    n = inputs[0].shape[0]
    return joint[:n], joint[n:].detach()


def c51_project(probs: Tensor, target_atoms: Tensor, support: Tensor) -> Tensor:
    """Project a categorical distribution with masses ``probs`` [..., K] at locations
    ``target_atoms`` [..., K] onto the fixed ``support`` [K] (Bellemare et al. 2017, Alg. 1):
    clip to [v_min, v_max], split each mass between the two neighbouring atoms in proportion
    to proximity; a target exactly on an atom gives that atom the whole mass."""
    k = support.shape[0]
    v_min, v_max = support[0], support[-1]
    dz = (v_max - v_min) / (k - 1)
    b = (target_atoms.clamp(v_min, v_max) - v_min) / dz
    lower = b.floor().clamp(0, k - 1)
    upper = b.ceil().clamp(0, k - 1)
    on_atom = (upper == lower).to(probs.dtype)
    m_lower = probs * (upper - b + on_atom)
    m_upper = probs * (b - lower)
    out = torch.zeros_like(probs)
    out.scatter_add_(-1, lower.long(), m_lower)
    out.scatter_add_(-1, upper.long(), m_upper)
    return out


def categorical_td_target(
    next_probs: Tensor,
    reward: Tensor,
    terminated: Tensor,
    gamma: float,
    support: Tensor,
    bonus: Tensor | None = None,
) -> Tensor:
    """Projected distributional Bellman target (OMAD Eq. 12):
    T Z = r + gamma (1 - term) (Z(s', a') + bonus), bonus = alpha sum_i l_i(a'^i | s')
    (None: 0), projected with ``c51_project``. Shapes: next_probs [B, K], reward / terminated /
    bonus [B]. Returned without gradient."""
    with torch.no_grad():
        disc = (gamma * (1.0 - terminated.to(next_probs.dtype))).unsqueeze(-1)
        shifted = support if bonus is None else support + bonus.unsqueeze(-1)
        atoms = reward.unsqueeze(-1) + disc * shifted
        return c51_project(next_probs, atoms, support)


def categorical_entropy(logits: Tensor) -> Tensor:
    """H(p) = -sum_j p_j log p_j of softmax(logits), per sample."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def categorical_loss(logits: Tensor, target_probs: Tensor, entropy_coef: float = 0.005) -> Tensor:
    """OMAD Eq. 13: mean over the batch of CE(sg(target), predicted) - xi H(predicted).

    CE differs from Eq. 13's KL by the target's entropy, a constant in phi. Eq. 13 prints
    "+ xi H"; we follow DIME's reference code and algorithms.md, which *subtract* xi H so the
    regulariser keeps the predicted distribution from collapsing (xi = 0.005)."""
    ce = -(target_probs.detach() * torch.log_softmax(logits, dim=-1)).sum(-1)
    return (ce - entropy_coef * categorical_entropy(logits)).mean()
