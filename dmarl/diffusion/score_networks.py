"""Score / noise-prediction networks f_theta(x, t | obs, prefix) for diffusion policies.

One network per agent (``ScoreMLP``), N agents in stacked weights (``AgentBatchedScoreMLP``,
the default for per-agent policies: all agents denoise in one batched matmul per layer), and
N separate networks behind the same interface (``AgentLoopScoreMLP``, for algorithms that
update agents sequentially with separate optimisers). All three share constructor arguments
(the two multi-agent ones add ``n_agents`` first) and calling conventions.

Architecture (OMAD App. D.2; DIME; OMSD App. H): input [obs, prefix actions, noisy action,
time features] -> MLP (GELU or mish) -> action-sized output whose layer starts near zero.
Time features are act(Linear(embedding(t))) (DIME's Dense-act-Dense, the second Dense folded
into the first MLP layer). The first layer is stored in three parts (condition, action, time)
so that ``encode(obs)`` is computed once per chain and a 0-dim ``t`` costs one row: this is
the same function as one Linear on the concatenation. ``AgentBatchedScoreMLP.conditioned``
returns a ``ConditionedScore`` whose ``time_table`` gives a sampler the time features of all
its steps in one pass (``ou_sample`` uses it). Optional input BatchNorm normalises
[obs, prefix] and the noisy action (per feature, so splitting it is exact); time features are
not normalised, since inside a sampling step every sample shares t (BN would zero them).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dmarl.nn.agent_batched import (
    AgentBatchedBatchNorm,
    AgentBatchedLinear,
    from_stacked,
    to_stacked,
)
from dmarl.nn.batch_renorm import BatchNorm
from dmarl.nn.embeddings import time_embedding
from dmarl.nn.mlp import Linear, make_activation


class ScoreMLP(nn.Module):
    """f_theta(x, t | obs, prefix) for one agent: x [..., A], t 0-dim or [...], obs [..., O],
    prefix [..., P] (OMSD's preceding agents' actions; ``prefix_dim=0`` for none) -> [..., A].

    ``hidden``: hidden layer widths (OMAD: 3 x 256 GELU; DDPL: 3 x 256 mish);
    ``time_dim``: embedding size (OMAD 256-d Fourier); ``input_norm``: BatchNorm on the inputs;
    ``out_init_scale``: scale of the output layer's default init (near-zero score at init).
    The sampler gives the output its meaning: the noise eps for ``ddpm_sample`` /
    ``ddim_sample`` and the DSM / ISSM losses, the score f_theta for ``ou_sample`` (OMAD Eq. 6).
    """

    def __init__(
        self,
        action_dim: int,
        obs_dim: int,
        prefix_dim: int = 0,
        hidden: Sequence[int] = (256, 256, 256),
        activation: str = "gelu",
        time_dim: int = 256,
        time_embedding_kind: str = "fourier",
        input_norm: bool = False,
        out_init_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        self.action_dim, self.obs_dim, self.prefix_dim = action_dim, obs_dim, prefix_dim
        self.config = dict(
            action_dim=action_dim,
            obs_dim=obs_dim,
            prefix_dim=prefix_dim,
            hidden=tuple(hidden),
            activation=activation,
            time_dim=time_dim,
            time_embedding_kind=time_embedding_kind,
            input_norm=input_norm,
        )
        cond_dim = obs_dim + prefix_dim
        h0 = hidden[0]
        self.embed = time_embedding(time_embedding_kind, time_dim)
        self.time_in = nn.Linear(time_dim, time_dim)
        self.norm_cond = BatchNorm(cond_dim) if input_norm and cond_dim else nn.Identity()
        self.norm_x = BatchNorm(action_dim) if input_norm else nn.Identity()
        fan_in = cond_dim + action_dim + time_dim
        self.in_cond = Linear(cond_dim, h0, fan_in=fan_in)
        self.in_x = Linear(action_dim, h0, bias=False, fan_in=fan_in)
        self.in_t = Linear(time_dim, h0, bias=False, fan_in=fan_in)
        dims = list(hidden) + [action_dim]
        scales = [1.0] * (len(dims) - 2) + [out_init_scale]
        self.body = nn.ModuleList(Linear(a, b, scale=c) for a, b, c in zip(dims[:-1], dims[1:], scales))
        self.act = make_activation(activation)

    def encode(self, obs: Tensor, prefix: Tensor | None = None) -> Tensor:
        """Condition features (first-layer contribution of [obs, prefix]), reusable over steps."""
        cond = obs if prefix is None else torch.cat([obs, prefix], dim=-1)
        return self.in_cond(self.norm_cond(cond))

    def time_features(self, t: Tensor) -> Tensor:
        """First-layer contribution of t: in_t(act(time_in(embedding(t))))."""
        return self.in_t(self.act(self.time_in(self.embed(t))))

    def denoise(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Network output given ``encode``'s features."""
        h = self.act(cond + self.in_x(self.norm_x(x)) + self.time_features(t.to(x.dtype)))
        for layer in self.body[:-1]:
            h = self.act(layer(h))
        return self.body[-1](h)

    def forward(self, x: Tensor, t: Tensor, obs: Tensor, prefix: Tensor | None = None) -> Tensor:
        return self.denoise(x, t, self.encode(obs, prefix))

    def conditioned(self, obs: Tensor, prefix: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """The denoiser ``(x, t) -> output`` for fixed conditioning (what samplers take)."""
        cond = self.encode(obs, prefix)
        return lambda x, t: self.denoise(x, t, cond)


class AgentBatchedScoreMLP(nn.Module):
    """N agents' ``ScoreMLP``s in stacked weights: x [..., N, A], t 0-dim or [..., N],
    obs [..., N, O], prefix [..., N, P] -> [..., N, A]. Equal to N separate networks
    (``from_modules`` / ``agent_module``); arguments as ``ScoreMLP`` after ``n_agents``.

    ``denoise`` runs its layers agent by agent on views of the stacked weights (same maths,
    float rounding apart) where that is faster: ``per_agent_path``. Measured on one CPU
    thread (3 x 256 GELU, H = 8 OU chain, N = 2 and 6; scripts/bench_core_speed.py (a)): the
    stacked path beats a loop over agents 1.5-2.9x at 16-64 rows per agent, but from 128 rows
    it is 0.6-1.0x of the loop while the per-agent path is 1.03-1.14x. Cause: glibc serves the
    large stacked activations with fresh mmaps, so every step page-faults them in (1e6 minor
    faults in 20 chains at N = 6, 1024 rows; with MALLOC_MMAP_THRESHOLD_ / TRIM_THRESHOLD_ at
    1 GB the stacked path is 1.09x of the loop there), and batched matmuls gain nothing at
    these sizes. Rule: per agent from ``per_agent_min_elements`` = 2^15 elements (128 KiB of
    float32) per agent's hidden activation, rows x max(hidden), i.e. from 128 rows at width
    256; set it on an instance (0: always per agent, a huge value: never). With gradients
    recorded the stacked path is kept (backward speed of the per-agent path not measured).
    """

    per_agent_min_elements: int = 2**15

    def __init__(
        self,
        n_agents: int,
        action_dim: int,
        obs_dim: int,
        prefix_dim: int = 0,
        hidden: Sequence[int] = (256, 256, 256),
        activation: str = "gelu",
        time_dim: int = 256,
        time_embedding_kind: str = "fourier",
        input_norm: bool = False,
        out_init_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        self.n_agents, self.action_dim, self.obs_dim, self.prefix_dim = n_agents, action_dim, obs_dim, prefix_dim
        self.config = dict(
            action_dim=action_dim,
            obs_dim=obs_dim,
            prefix_dim=prefix_dim,
            hidden=tuple(hidden),
            activation=activation,
            time_dim=time_dim,
            time_embedding_kind=time_embedding_kind,
            input_norm=input_norm,
        )
        cond_dim = obs_dim + prefix_dim
        h0 = hidden[0]
        self.embed = time_embedding(time_embedding_kind, time_dim)
        self.time_in = AgentBatchedLinear(n_agents, time_dim, time_dim)
        self.norm_cond = AgentBatchedBatchNorm(n_agents, cond_dim) if input_norm and cond_dim else None
        self.norm_x = AgentBatchedBatchNorm(n_agents, action_dim) if input_norm else None
        self.in_cond = AgentBatchedLinear(n_agents, cond_dim, h0)
        self.in_x = AgentBatchedLinear(n_agents, action_dim, h0, bias=False)
        self.in_t = AgentBatchedLinear(n_agents, time_dim, h0, bias=False)
        fan_in = cond_dim + action_dim + time_dim
        for part in (self.in_cond, self.in_x, self.in_t):
            part.reset_parameters(fan_in=fan_in)
        dims = list(hidden) + [action_dim]
        self.body = nn.ModuleList(AgentBatchedLinear(n_agents, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.body[-1].reset_parameters(scale=out_init_scale)
        self.act = make_activation(activation)

    def encode(self, obs: Tensor, prefix: Tensor | None = None) -> Tensor:
        """Stacked condition features [N, M, hidden[0]] (M = prod of leading dims)."""
        cond = obs if prefix is None else torch.cat([obs, prefix], dim=-1)
        cond, _ = to_stacked(cond)
        if self.norm_cond is not None:
            cond = self.norm_cond(cond)
        return self.in_cond(cond)

    def time_features(self, t: Tensor, lead: torch.Size) -> Tensor:
        """Stacked first-layer contribution of t: [N, 1, h0] for 0-dim t, else [N, M, h0]."""
        if t.dim() == 0:
            emb = self.embed(t).expand(self.n_agents, 1, -1)
        else:
            emb, _ = to_stacked(self.embed(t.expand(*lead, self.n_agents)))
        return self.in_t(self.act(self.time_in(emb)))

    def time_table(self, times: Tensor) -> Tensor:
        """``time_features`` of K 0-dim times ``times`` [K] in one pass: [K, N, 1, h0]
        (``table[k]`` is what ``time_features(times[k], .)`` returns)."""
        emb = self.embed(times).unsqueeze(0).expand(self.n_agents, -1, -1)
        return self.in_t(self.act(self.time_in(emb))).transpose(0, 1).unsqueeze(2)

    def denoise(self, x: Tensor, t: Tensor | None, cond: Tensor, time_features: Tensor | None = None) -> Tensor:
        """Network output [..., N, A] given ``encode``'s stacked features; ``time_features``
        (a ``time_table`` row) replaces ``t`` when given."""
        xs, lead = to_stacked(x)
        if self.norm_x is not None:
            xs = self.norm_x(xs)
        if time_features is None:
            time_features = self.time_features(t.to(x.dtype), lead)
        if self.per_agent_path(xs):
            out = torch.stack([self._denoise_agent(i, xs[i], cond[i], time_features[i]) for i in range(self.n_agents)])
            return from_stacked(out, lead)
        # first layer: cond + time + x W_x in one baddbmm (in_x has no bias)
        h = self.act(torch.baddbmm(cond + time_features, xs, self.in_x.weight))
        for layer in self.body[:-1]:
            h = self.act(layer(h))
        return from_stacked(self.body[-1](h), lead)

    def per_agent_path(self, xs: Tensor) -> bool:
        """The speed rule of ``denoise``: loop over agents (views of the stacked weights) when
        the input is on the CPU, no gradient is recorded and one agent's hidden activation
        [M, max(hidden)] has at least ``per_agent_min_elements`` elements."""
        return (
            xs.device.type == "cpu"
            and not torch.is_grad_enabled()
            and xs.shape[1] * max(self.config["hidden"]) >= self.per_agent_min_elements
        )

    def _denoise_agent(self, i: int, x: Tensor, cond: Tensor, time_features: Tensor) -> Tensor:
        """Agent i's output [M, A] from its rows of the stacked inputs (the per-agent path)."""
        h = self.act(torch.addmm(cond + time_features, x, self.in_x.weight[i]))
        for layer in self.body[:-1]:
            h = self.act(layer.forward_agent(h, i))
        return self.body[-1].forward_agent(h, i)

    def forward(self, x: Tensor, t: Tensor, obs: Tensor, prefix: Tensor | None = None) -> Tensor:
        return self.denoise(x, t, self.encode(obs, prefix))

    def conditioned(self, obs: Tensor, prefix: Tensor | None = None) -> "ConditionedScore":
        """The denoiser ``(x, t) -> output`` for fixed conditioning (what samplers take)."""
        return ConditionedScore(self, self.encode(obs, prefix))

    @classmethod
    def from_modules(cls, nets: Sequence[ScoreMLP]) -> "AgentBatchedScoreMLP":
        """Stack N ``ScoreMLP``s built with the same arguments (copies parameters and stats)."""
        first = nets[0]
        if any(n.config != first.config for n in nets):
            raise ValueError("AgentBatchedScoreMLP.from_modules: networks were built with different arguments")
        out = cls(len(nets), **first.config)
        out.embed.load_state_dict(first.embed.state_dict())
        for name in ("time_in", "in_cond", "in_x", "in_t"):
            setattr(out, name, AgentBatchedLinear.from_modules([getattr(n, name) for n in nets]))
        out.body = nn.ModuleList(
            AgentBatchedLinear.from_modules([n.body[k] for n in nets]) for k in range(len(first.body))
        )
        for name in ("norm_cond", "norm_x"):
            if getattr(out, name) is not None:
                setattr(out, name, AgentBatchedBatchNorm.from_modules([getattr(n, name) for n in nets]))
        return out.to(device=first.in_x.weight.device, dtype=first.in_x.weight.dtype)

    def agent_module(self, i: int) -> ScoreMLP:
        """A standalone ``ScoreMLP`` copy of agent i's network."""
        net = ScoreMLP(**self.config)
        net.embed.load_state_dict(self.embed.state_dict())
        for name in ("time_in", "in_cond", "in_x", "in_t"):
            setattr(net, name, getattr(self, name).agent_module(i))
        net.body = nn.ModuleList(layer.agent_module(i) for layer in self.body)
        for name in ("norm_cond", "norm_x"):
            if getattr(self, name) is not None:
                setattr(net, name, getattr(self, name).agent_module(i))
        return net.to(device=self.in_x.weight.device, dtype=self.in_x.weight.dtype)


class ConditionedScore:
    """``AgentBatchedScoreMLP``'s denoiser for fixed conditioning: ``(x, t) -> output``, plus
    ``time_table`` / ``at`` so that a sampler with known step times (``ou_sample``) computes
    the time features of all its steps in one pass instead of one per step."""

    def __init__(self, net: AgentBatchedScoreMLP, cond: Tensor) -> None:
        self.net, self.cond = net, cond

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net.denoise(x, t, self.cond)

    def time_table(self, times: Tensor) -> Tensor:
        """Time features of the 0-dim times ``times`` [K]: [K, N, 1, h0]."""
        return self.net.time_table(times)

    def at(self, x: Tensor, time_features: Tensor) -> Tensor:
        """Output at the time whose ``time_table`` row is ``time_features``."""
        return self.net.denoise(x, None, self.cond, time_features)


class AgentLoopScoreMLP(nn.Module):
    """N separate ``ScoreMLP``s (``agents[i]``) behind ``AgentBatchedScoreMLP``'s interface:
    a Python loop over agents. Use it when agents have their own optimisers / update order."""

    def __init__(self, n_agents: int, *args: object, **kwargs: object) -> None:
        super().__init__()
        self.n_agents = n_agents
        self.agents = nn.ModuleList(ScoreMLP(*args, **kwargs) for _ in range(n_agents))

    def encode(self, obs: Tensor, prefix: Tensor | None = None) -> list[Tensor]:
        """Per-agent condition features."""
        return [
            net.encode(obs[..., i, :], None if prefix is None else prefix[..., i, :])
            for i, net in enumerate(self.agents)
        ]

    def denoise(self, x: Tensor, t: Tensor, cond: list[Tensor]) -> Tensor:
        """Network output [..., N, A] given ``encode``'s features."""
        outs = [
            net.denoise(x[..., i, :], t if t.dim() == 0 else t[..., i], cond[i]) for i, net in enumerate(self.agents)
        ]
        return torch.stack(outs, dim=-2)

    def forward(self, x: Tensor, t: Tensor, obs: Tensor, prefix: Tensor | None = None) -> Tensor:
        return self.denoise(x, t, self.encode(obs, prefix))

    def conditioned(self, obs: Tensor, prefix: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """The denoiser ``(x, t) -> output`` for fixed conditioning (what samplers take)."""
        cond = self.encode(obs, prefix)
        return lambda x, t: self.denoise(x, t, cond)

