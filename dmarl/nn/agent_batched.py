"""Agent-batched layers: N agents' weights in stacked tensors, one batched matmul for all.

Internal layout is *stacked*: ``[N, M, F]`` (agent, flattened batch, feature). Public
``forward`` methods take the usual ``[..., N, F]`` layout; ``to_stacked`` / ``from_stacked``
convert. Every layer equals N separate ``torch.nn`` layers (``from_modules`` builds one from
them, ``agent_module(i)`` extracts agent i's copy), in outputs and in gradients.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmarl.nn.batch_renorm import BatchNorm
from dmarl.nn.mlp import MLP, make_activation, uniform_init_


def to_stacked(x: Tensor) -> tuple[Tensor, torch.Size]:
    """``[..., N, F] -> [N, M, F]`` with M = prod(...); also returns the leading shape."""
    lead = x.shape[:-2]
    return x.reshape(-1, x.shape[-2], x.shape[-1]).transpose(0, 1), lead


def from_stacked(y: Tensor, lead: torch.Size) -> Tensor:
    """``[N, M, F] -> [..., N, F]`` (inverse of ``to_stacked``)."""
    return y.transpose(0, 1).reshape(*lead, y.shape[0], y.shape[-1])


class AgentBatchedLinear(nn.Module):
    """N independent linear maps ``y_i = x_i W_i + b_i`` computed by one ``torch.baddbmm``.

    ``weight``: [N, in, out], ``bias``: [N, 1, out]; maps stacked ``[N, M, in]`` to
    ``[N, M, out]`` (a stride-0 expanded input, e.g. one input shared by N critics, is fine).
    """

    def __init__(self, n_agents: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.n_agents, self.in_features, self.out_features = n_agents, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n_agents, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_agents, 1, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, fan_in: int | None = None, scale: float = 1.0) -> None:
        """Per-agent ``nn.Linear`` default init (optionally with an explicit fan-in / scale)."""
        uniform_init_(self.weight, self.bias, fan_in or self.in_features, scale)

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)

    def forward_agent(self, x: Tensor, i: int) -> Tensor:
        """Agent i's map alone: ``[M, in] -> [M, out]`` with views of the stacked weights."""
        if self.bias is None:
            return torch.mm(x, self.weight[i])
        return torch.addmm(self.bias[i], x, self.weight[i])

    @classmethod
    def from_modules(cls, linears: Sequence[nn.Linear]) -> "AgentBatchedLinear":
        """Stack N ``nn.Linear`` layers (copies their parameters)."""
        first = linears[0]
        layer = cls(len(linears), first.in_features, first.out_features, bias=first.bias is not None)
        layer.to(device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(torch.stack([lin.weight.t() for lin in linears]))
            if layer.bias is not None:
                layer.bias.copy_(torch.stack([lin.bias for lin in linears]).unsqueeze(1))
        return layer

    def agent_module(self, i: int) -> nn.Linear:
        """A standalone ``nn.Linear`` copy of agent i's map."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        lin.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight[i].t())
            if self.bias is not None:
                lin.bias.copy_(self.bias[i, 0])
        return lin

    def extra_repr(self) -> str:
        return f"n_agents={self.n_agents}, in_features={self.in_features}, out_features={self.out_features}"


class AgentBatchedBatchNorm(nn.Module):
    """Per-agent BatchNorm over stacked ``[N, M, F]`` input (statistics over M per agent)."""

    def __init__(self, n_agents: int, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.n_agents, self.num_features, self.momentum, self.eps = n_agents, num_features, momentum, eps
        self.weight = nn.Parameter(torch.ones(n_agents, num_features))
        self.bias = nn.Parameter(torch.zeros(n_agents, num_features))
        self.register_buffer("running_mean", torch.zeros(n_agents, num_features))
        self.register_buffer("running_var", torch.ones(n_agents, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        n, m, f = x.shape
        if self.training:
            self.num_batches_tracked += 1
        flat = x.transpose(0, 1).reshape(m, n * f)
        out = F.batch_norm(
            flat,
            self.running_mean.view(-1),
            self.running_var.view(-1),
            self.weight.reshape(-1),
            self.bias.reshape(-1),
            self.training,
            self.momentum,
            self.eps,
        )
        return out.reshape(m, n, f).transpose(0, 1)

    @classmethod
    def from_modules(cls, norms: Sequence[nn.BatchNorm1d]) -> "AgentBatchedBatchNorm":
        """Stack N ``nn.BatchNorm1d`` (or ``BatchNorm``) layers, parameters and statistics."""
        first = norms[0]
        bn = cls(len(norms), first.num_features, first.momentum, first.eps)
        bn.to(device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(torch.stack([getattr(m, name) for m in norms]))
            bn.num_batches_tracked.copy_(first.num_batches_tracked)
        return bn

    def agent_module(self, i: int) -> BatchNorm:
        """A standalone ``BatchNorm`` copy of agent i's layer."""
        bn = BatchNorm(self.num_features, eps=self.eps, momentum=self.momentum)
        bn.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(getattr(self, name)[i])
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


class AgentBatchedMLP(nn.Module):
    """N agents' ``MLP``s (same sizes, separate weights) evaluated together.

    Mirrors ``MLP(in_dim, out_dim, hidden, activation, input_norm, out_init_scale)`` with
    ``input_norm`` in {None, 'batchnorm'} and no hidden norms. ``forward`` maps
    ``[..., N, in] -> [..., N, out]``; ``forward_stacked`` works on ``[N, M, in]``.
    """

    def __init__(
        self,
        n_agents: int,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        input_norm: str | None = None,
        out_init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if input_norm not in (None, "batchnorm"):
            raise ValueError(f"AgentBatchedMLP supports input_norm None or 'batchnorm', got {input_norm!r}")
        dims = [in_dim, *hidden, out_dim]
        self.n_agents, self.in_dim, self.out_dim, self.hidden = n_agents, in_dim, out_dim, tuple(hidden)
        self.activation = activation
        self.input_norm = AgentBatchedBatchNorm(n_agents, in_dim) if input_norm else None
        self.linears = nn.ModuleList(AgentBatchedLinear(n_agents, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = make_activation(activation)
        self.linears[-1].reset_parameters(scale=out_init_scale)

    def forward_stacked(self, x: Tensor) -> Tensor:
        if self.input_norm is not None:
            x = self.input_norm(x)
        *hidden, last = self.linears  # not linears[:-1]: slicing a ModuleList builds a new module per call
        for linear in hidden:
            x = self.act(linear(x))
        return last(x)

    def forward(self, x: Tensor) -> Tensor:
        xs, lead = to_stacked(x)
        return from_stacked(self.forward_stacked(xs), lead)

    @classmethod
    def from_modules(cls, mlps: Sequence[MLP]) -> "AgentBatchedMLP":
        """Stack N ``MLP``s with identical sizes, activation and (plain BN or no) input norm."""
        first = mlps[0]
        if any(not isinstance(norm, nn.Identity) for m in mlps for norm in m.norms):
            raise ValueError("AgentBatchedMLP.from_modules: hidden norms are not supported")
        has_bn = isinstance(first.input_norm, nn.BatchNorm1d)
        if not has_bn and not isinstance(first.input_norm, nn.Identity):
            raise ValueError("AgentBatchedMLP.from_modules: only BatchNorm input norms are supported")
        norm = "batchnorm" if has_bn else None
        out = cls(len(mlps), first.in_dim, first.out_dim, first.hidden, first.activation, norm)
        out.linears = nn.ModuleList(
            AgentBatchedLinear.from_modules([m.linears[k] for m in mlps]) for k in range(len(first.linears))
        )
        if has_bn:
            out.input_norm = AgentBatchedBatchNorm.from_modules([m.input_norm for m in mlps])
        return out.to(device=first.linears[0].weight.device)

    def agent_module(self, i: int) -> MLP:
        """A standalone ``MLP`` copy of agent i's network."""
        mlp = MLP(self.in_dim, self.out_dim, self.hidden, self.activation, "batchnorm" if self.input_norm else None)
        mlp.linears = nn.ModuleList(lin.agent_module(i) for lin in self.linears)
        if self.input_norm is not None:
            mlp.input_norm = self.input_norm.agent_module(i)
        return mlp.to(device=self.linears[0].weight.device)
