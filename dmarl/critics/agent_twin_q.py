"""Per-agent twin Q networks Q_ij(c_i, a_i) (i = agent, j = twin) in stacked weights.

Decentralised critics (DDPL's averaged action values Q_i(s, a_i)): agent i's twins see only
its condition c_i (the state, or its own observation) and its own action; all 2N networks run
in one batched matmul per layer (``AgentBatchedMLP`` with 2N members).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dmarl.nn.agent_batched import AgentBatchedMLP, to_stacked


class AgentTwinQ(nn.Module):
    """``forward(cond [..., N, C], action [..., N, A]) -> [n_critics, ..., N]``."""

    def __init__(
        self,
        n_agents: int,
        cond_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256, 256),
        activation: str = "mish",
        n_critics: int = 2,
    ) -> None:
        super().__init__()
        self.n_agents, self.n_critics = n_agents, n_critics
        self.net = AgentBatchedMLP(n_critics * n_agents, cond_dim + action_dim, 1, hidden, activation)

    def forward(self, cond: Tensor, action: Tensor) -> Tensor:
        xs, lead = to_stacked(torch.cat([cond, action], dim=-1))  # [N, M, F]
        out = self.net.forward_stacked(xs.repeat(self.n_critics, 1, 1))  # [n_critics * N, M, 1]
        out = out.reshape(self.n_critics, self.n_agents, -1).transpose(1, 2)  # [n_critics, M, N]
        return out.reshape(self.n_critics, *lead, self.n_agents)

    def min_q(self, cond: Tensor, action: Tensor) -> Tensor:
        """min_j Q_ij(c_i, a_i): ``[..., N]``."""
        return self(cond, action).min(dim=0).values
