"""Time embeddings for score networks (diffusion time t in [0, 1])."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class FourierTimeEmbedding(nn.Module):
    """[sin(w t), cos(w t)] with fixed frequencies w = linspace(w_min, w_max, dim / 2).

    The DIME / OMAD actor's Fourier time embedding (OMAD App. D.2: 256-d; DIME uses
    w = linspace(0.1, 100, .)). Output shape ``t.shape + (dim,)``.
    """

    def __init__(self, dim: int = 256, w_min: float = 0.1, w_max: float = 100.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.dim = dim
        self.register_buffer("freqs", torch.linspace(w_min, w_max, dim // 2))

    def forward(self, t: Tensor) -> Tensor:
        arg = t.unsqueeze(-1) * self.freqs.to(t.dtype)
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style embedding of ``scale * t`` with geometric frequencies.

    The embedding of Diffusion-QL / DDPM, which embed the integer step; ``scale`` (default
    1000) maps t in [0, 1] back to that range. Output shape ``t.shape + (dim,)``.
    """

    def __init__(self, dim: int = 64, max_period: float = 10_000.0, scale: float = 1000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.dim = dim
        self.scale = scale
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half))

    def forward(self, t: Tensor) -> Tensor:
        arg = (self.scale * t).unsqueeze(-1) * self.freqs.to(t.dtype)
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


TIME_EMBEDDINGS = {"fourier": FourierTimeEmbedding, "sinusoidal": SinusoidalTimeEmbedding}


def time_embedding(kind: str, dim: int) -> nn.Module:
    """Build a time embedding by name ('fourier' or 'sinusoidal')."""
    if kind not in TIME_EMBEDDINGS:
        raise ValueError(f"unknown time embedding {kind!r}; valid: {sorted(TIME_EMBEDDINGS)}")
    return TIME_EMBEDDINGS[kind](dim)
