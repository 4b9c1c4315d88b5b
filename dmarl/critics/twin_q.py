"""Twin (ensemble) Q networks in stacked weights, and target-network helpers."""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dmarl.nn.agent_batched import AgentBatchedMLP


class TwinQ(nn.Module):
    """``n_critics`` independent MLP Q functions (TD3 / SAC clipped double Q; IQL, CQL) evaluated
    in one batched matmul per layer. ``forward(*inputs)`` concatenates inputs along the last
    dim and returns [n_critics, ...]."""

    def __init__(
        self, in_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "relu", n_critics: int = 2
    ) -> None:
        super().__init__()
        self.n_critics = n_critics
        self.net = AgentBatchedMLP(n_critics, in_dim, 1, hidden, activation)

    def forward(self, *inputs: Tensor) -> Tensor:
        x = torch.cat(inputs, dim=-1)
        lead = x.shape[:-1]
        flat = x.reshape(1, -1, x.shape[-1]).expand(self.n_critics, -1, -1)
        return self.net.forward_stacked(flat).reshape(self.n_critics, *lead)


def make_target(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` to serve as its target network."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """theta' <- (1 - tau) theta' + tau theta for parameters and floating buffers (e.g. BN
    statistics); integer buffers are copied. tau = 1 copies (OMAD's rho = 0 target policy)."""
    t_params, s_params = list(target.parameters()), list(source.parameters())
    torch._foreach_lerp_(t_params, s_params, tau)
    for tb, sb in zip(target.buffers(), source.buffers()):
        if tb.dtype.is_floating_point:
            tb.lerp_(sb, tau)
        else:
            tb.copy_(sb)


def td_loss(q: Tensor, target: Tensor, huber_delta: float | None = None) -> Tensor:
    """Mean squared TD error, or the Huber loss with ``huber_delta`` (HARL's option)."""
    if huber_delta is None:
        return torch.nn.functional.mse_loss(q, target)
    return torch.nn.functional.huber_loss(q, target, delta=huber_delta)


def twin_td_step(
    critic: TwinQ, optim: torch.optim.Optimizer, inputs: Tensor, target: Tensor, huber_delta: float | None = None
) -> dict[str, float]:
    """One gradient step regressing every twin Q_j(inputs) on the same ``target`` [B]
    (sum of the twins' losses); returns ``train/critic_loss`` and ``train/q_mean`` (first twin)."""
    q = critic(inputs)
    loss = sum(td_loss(q_j, target, huber_delta) for q_j in q)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()
    return {"train/critic_loss": loss.item(), "train/q_mean": q[0].mean().item()}
