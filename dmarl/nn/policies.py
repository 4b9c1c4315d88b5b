"""Gaussian-family policy heads shared by the Gaussian baselines (HASAC, MASAC-style)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dmarl.nn.mlp import MLP

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class TanhGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mu(o), sigma(o)^2); log-prob with the tanh change of variables."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], feature_norm: bool = False) -> None:
        super().__init__()
        self.body = MLP(
            obs_dim, 2 * action_dim, hidden, activation="relu", input_norm="layernorm" if feature_norm else None
        )

    def _dist(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.body(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action ``[B, A]`` and its log-density ``[B]``."""
        mean, log_std = self._dist(obs)
        u = mean + log_std.exp() * torch.randn_like(mean)
        log_normal = (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_det = (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), log_normal - log_det

    def act(self, obs: torch.Tensor, explore: bool) -> torch.Tensor:
        return self.sample(obs)[0] if explore else torch.tanh(self._dist(obs)[0])
