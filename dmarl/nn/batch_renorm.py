"""Batch normalisation layers that accept any leading dims (features last).

``BatchRenorm`` is the layer CrossQ (and OMAD's critic, Sec. 5.2 / App. D.2) puts on the
input and after every hidden activation; ``BatchNorm`` is plain batch normalisation with the
same calling convention.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class BatchNorm(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over the last dim of an input with any leading dims."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class BatchRenorm(nn.Module):
    """Batch Renormalization (Ioffe 2017) as used by CrossQ.

    Training: ``y = gamma * ((x - mu_B) / sigma_B * r + d) + beta`` with the stop-gradient
    corrections ``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and
    ``d = clip((mu_B - mu) / sigma, -d_max, d_max)`` computed from the running statistics
    *before* this call's update; during the first ``warmup_steps`` training calls r = 1 and
    d = 0 (plain BatchNorm). Running statistics follow ``s <- momentum * s + (1 - momentum) *
    s_B`` (momentum 0.99 as in CrossQ; batch variance is the biased one). Evaluation uses the
    running statistics. The training-call counter is the buffer ``steps`` (checkpointed).
    """

    def __init__(
        self,
        num_features: int,
        momentum: float = 0.99,
        eps: float = 1e-3,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 100_000,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.momentum = momentum
        self.eps = eps
        self.r_max = r_max
        self.d_max = d_max
        self.warmup_steps = warmup_steps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            # one fused pass over x: x * scale + shift, the per-feature affine folded first
            scale = self.weight * torch.rsqrt(self.running_var + self.eps)
            return torch.addcmul(self.bias - self.running_mean * scale, x, scale)
        flat = x.reshape(-1, self.num_features)
        # two passes (mean, then the mean square of the centred rows, reused for x_hat): on CPU
        # ~10x faster than torch.var_mean over dim 0 (Welford), equally accurate
        mean = flat.mean(dim=0)
        centred = flat - mean
        var = centred.square().mean(dim=0)
        std = torch.sqrt(var + self.eps)
        running_std = torch.sqrt(self.running_var + self.eps)
        warm = self.steps >= self.warmup_steps
        r = (std.detach() / running_std).clamp(1.0 / self.r_max, self.r_max)
        d = ((mean.detach() - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
        r = torch.where(warm, r, torch.ones_like(r))
        d = torch.where(warm, d, torch.zeros_like(d))
        # gamma ((x - mu_B) / sigma_B r + d) + beta as one fused pass over the rows:
        # centred * (gamma r / sigma_B) + (gamma d + beta), the [F] factors folded first
        out = torch.addcmul(self.weight * d + self.bias, centred, self.weight * r / std).reshape(x.shape)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), 1.0 - self.momentum)
            self.running_var.lerp_(var.detach(), 1.0 - self.momentum)
            self.steps += 1
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, momentum={self.momentum}, eps={self.eps}, r_max={self.r_max}, "
            f"d_max={self.d_max}, warmup_steps={self.warmup_steps}"
        )


def make_norm(kind: str | None, dim: int, **kwargs: float) -> nn.Module:
    """A normalisation layer by name: None (identity), 'batchnorm', 'batchrenorm', 'layernorm'.

    ``kwargs`` go to the layer (e.g. ``momentum``, ``warmup_steps`` for 'batchrenorm').
    """
    if kind is None:
        return nn.Identity()
    if kind == "batchnorm":
        return BatchNorm(dim, **kwargs)
    if kind == "batchrenorm":
        return BatchRenorm(dim, **kwargs)
    if kind == "layernorm":
        return nn.LayerNorm(dim, **kwargs)
    raise ValueError(f"unknown norm {kind!r}; valid: None, 'batchnorm', 'batchrenorm', 'layernorm'")
