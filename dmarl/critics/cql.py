"""Conservative Q-learning penalty (Kumar et al. 2020), for DOM2-style conservative critics."""
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
