"""Independent per-agent networks in stacked weights for the offline baselines (OMAR's setting:
agent i acts and is evaluated on its own observation o_i only).

- ``PerAgentActor``: mu_i(o_i) = tanh(MLP_i(o_i)) for N agents in one batched matmul
  (`dmarl.nn.agent_batched.AgentBatchedMLP`), padded entries masked to zero.
- ``PerAgentTwinQ``: twin Q_i^j(o_i, a_i), j = 1, 2, for N agents (2N stacked MLPs).
- ``clip_grad_norm_per_agent_``: ``torch.nn.utils.clip_grad_norm_`` applied to each agent's
  own parameters (OMAR clips each agent's critic / policy gradient norm at 0.5 separately).

Every agent has its own weights (no sharing), so summing the agents' losses gives each agent
exactly its own gradient.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from dmarl.nn.agent_batched import AgentBatchedMLP


def _mask(dims: Sequence[int]) -> Tensor:
    """``[N, max(dims)]`` float mask: 1 on agent i's first dims[i] entries."""
    return (torch.arange(max(dims))[None, :] < torch.as_tensor(list(dims))[:, None]).float()


class PerAgentActor(nn.Module):
    """Deterministic tanh actors: obs ``[..., N, O_max]`` -> actions ``[..., N, A_max]`` in
    [-1, 1], zero on each agent's padded action entries (padded obs entries are ignored)."""

    def __init__(
        self,
        obs_dims: Sequence[int],
        action_dims: Sequence[int],
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        out_init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.n_agents = len(obs_dims)
        self.net = AgentBatchedMLP(
            self.n_agents, max(obs_dims), max(action_dims), hidden, activation, out_init_scale=out_init_scale
        )
        self.register_buffer("obs_mask", _mask(obs_dims))
        self.register_buffer("action_mask", _mask(action_dims))

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(obs * self.obs_mask)) * self.action_mask


class PerAgentTwinQ(nn.Module):
    """``n_critics`` Q functions per agent on (o_i, a_i): returns ``[n_critics, ..., N]``.

    Stacked index k = j * N + i (twin j of agent i)."""

    def __init__(
        self,
        obs_dims: Sequence[int],
        action_dims: Sequence[int],
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        n_critics: int = 2,
    ) -> None:
        super().__init__()
        self.n_agents, self.n_critics = len(obs_dims), n_critics
        self.net = AgentBatchedMLP(n_critics * self.n_agents, max(obs_dims) + max(action_dims), 1, hidden, activation)
        self.register_buffer("obs_mask", _mask(obs_dims))
        self.register_buffer("action_mask", _mask(action_dims))

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        x = torch.cat([obs * self.obs_mask, actions * self.action_mask], dim=-1)
        lead, n, f = x.shape[:-2], x.shape[-2], x.shape[-1]
        flat = x.reshape(-1, n, f).transpose(0, 1)  # [N, M, F]
        m = flat.shape[1]
        stacked = flat.unsqueeze(0).expand(self.n_critics, n, m, f).reshape(self.n_critics * n, m, f)
        out = self.net.forward_stacked(stacked)  # [c N, M, 1]
        return out.reshape(self.n_critics, n, m).transpose(1, 2).reshape(self.n_critics, *lead, n)

    def first(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Q^1 only, ``[..., N]`` (= ``forward(...)[0]`` at half the cost: TD3's and OMAR's actor
        and OMAR's sampling search read the first twin)."""
        x = torch.cat([obs * self.obs_mask, actions * self.action_mask], dim=-1)
        lead, n = x.shape[:-2], x.shape[-2]
        h = x.reshape(-1, n, x.shape[-1]).transpose(0, 1)  # [N, M, F]
        for k, linear in enumerate(self.net.linears):
            h = torch.baddbmm(linear.bias[:n], h, linear.weight[:n])
            if k < len(self.net.linears) - 1:
                h = self.net.act(h)
        return h.squeeze(-1).transpose(0, 1).reshape(*lead, n)


@torch.no_grad()
def clip_grad_norm_per_agent_(params: Iterable[nn.Parameter], n_agents: int, max_norm: float) -> Tensor:
    """Scale each agent's gradients so that their joint L2 norm is at most ``max_norm``
    (torch's ``clip_grad_norm_`` per agent: coefficient max_norm / (norm + 1e-6), capped at 1).

    Every parameter's leading dim is ``r * n_agents`` (r stacked replicas, agent-minor as in
    ``PerAgentTwinQ``). Returns the per-agent norms before clipping ``[N]``."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(n_agents)
    sq = sum(g.reshape(-1, n_agents, g[0].numel()).pow(2).sum(dim=(0, 2)) for g in grads)
    norms = sq.sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.repeat(g.shape[0] // n_agents).view(-1, *([1] * (g.dim() - 1))))
    return norms
