"""Conservative Q-learning penalty (Kumar et al. 2020) and the action proposals OMAR's MA-CQL
estimates it with (uniform random actions; Gaussian noise around the policy action)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def cql_penalty(
    q_sampled: Tensor, q_data: Tensor, log_density: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """CQL(H) regulariser (CQL Eq. 4): E_s[T log sum_a exp(Q(s, a) / T)] - E_(s,a)~D[Q(s, a)].

    ``q_sampled`` [B, M]: Q at M actions per state. Without ``log_density`` the sum runs over
    those M actions (exact for a finite action set). With ``log_density`` [B, M] (log mu(a_j|s)
    of the proposal that drew them) the integral over a continuous action space is estimated
    by importance sampling: T log( (1/M) sum_j exp(Q_j / T) / mu(a_j) ) (CQL App. F, with the
    constant -log M kept). ``q_data`` [B]: Q at the dataset actions."""
    logits = q_sampled / temperature
    if log_density is not None:
        logits = logits - log_density - math.log(q_sampled.shape[-1])
    return (temperature * torch.logsumexp(logits, dim=-1)).mean() - q_data.mean()


def uniform_proposal(
    lead: tuple[int, ...], action_mask: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """CQL's uniform proposal on [-1, 1]^{A_i} per agent (OMAR's random actions): actions
    ``[*lead, N, A_max]`` (zero on padded entries, ``action_mask`` [N, A_max]) and their log
    density ``-A_i log 2``, ``[*lead, N]``."""
    mask = action_mask.to(torch.float32)
    u = torch.rand((*lead, *mask.shape), generator=generator, device=mask.device)
    log_density = -mask.sum(-1) * math.log(2.0)
    return (2.0 * u - 1.0) * mask, log_density.expand(*lead, mask.shape[0])


def gaussian_proposal(
    center: Tensor, n_samples: int, std: float, action_mask: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """OMAR's policy-action proposal: ``n_samples`` draws a = clip(center + N(0, std^2 I), -1, 1)
    around ``center`` [B, N, A_max] -> ``[B, n_samples, N, A_max]`` and the log density of the
    Gaussian noise on the agent's true dims, ``[B, n_samples, N]`` (the clip is ignored, as in
    OMAR's code, which uses the noise density; it passes the density itself where a log
    density belongs, which this reading corrects)."""
    mask = action_mask.to(center.dtype)
    shape = (center.shape[0], n_samples, *center.shape[1:])
    noise = torch.randn(shape, generator=generator, device=center.device, dtype=center.dtype) * std * mask
    log_normal = -0.5 * (noise / std) ** 2 - math.log(std) - 0.5 * math.log(2.0 * math.pi)
    actions = (center.unsqueeze(1) + noise).clamp(-1.0, 1.0) * mask
    return actions, (log_normal * mask).sum(-1)
