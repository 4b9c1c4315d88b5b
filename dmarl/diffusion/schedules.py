"""Noise schedules: discrete (linear, cosine, Diffusion-QL VP) and the continuous VP SDE.

Every schedule speaks one time convention: network time ``t`` in (0, 1]. A discrete schedule
with K steps uses t = (k + 1) / K for its step k = 0..K-1 (k = 0 is the least noisy step).
Both classes provide ``alpha_sigma(t)`` (a_t = alpha_t a_0 + sigma_t eps), ``perturb``,
``sample_t`` (training times) and ``sampling_times`` (descending times for DDIM), and are
``nn.Module``s whose tensors are buffers, so ``.to(device / dtype)`` moves them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _rand_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


class DiscreteSchedule(nn.Module):
    """A K-step DDPM variance schedule ``betas[k]`` and the quantities derived from it.

    Buffers: ``betas``, ``alphas = 1 - betas``, ``alpha_bar`` (cumulative product),
    ``alpha_bar_prev``, and the DDPM posterior q(x_{k-1} | x_k, x_0) (Ho et al. 2020, Eq. 6-7):
    ``posterior_variance``, ``posterior_log_variance`` (clipped at k = 0 as in DDPM /
    Diffusion-QL), ``posterior_mean_coef1`` (on x_0) and ``posterior_mean_coef2`` (on x_k).
    """

    def __init__(self, betas: Tensor) -> None:
        super().__init__()
        betas = betas.to(torch.float64)
        if betas.dim() != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        alphas = 1.0 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        post_var = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if len(betas) > 1 else torch.log(betas)
        buffers = {
            "betas": betas,
            "alphas": alphas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "posterior_variance": post_var,
            "posterior_log_variance": post_log_var,
            "posterior_mean_coef1": betas * alpha_bar_prev.sqrt() / (1.0 - alpha_bar),
            "posterior_mean_coef2": (1.0 - alpha_bar_prev) * alphas.sqrt() / (1.0 - alpha_bar),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.to(torch.get_default_dtype()))

    @classmethod
    def linear(cls, num_steps: int, beta_start: float = 1e-3, beta_end: float = 0.999) -> "DiscreteSchedule":
        """Linearly spaced betas (DDPL Table 3: 0.001 -> 0.999)."""
        return cls(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))

    @classmethod
    def cosine(
        cls, num_steps: int, beta_min: float = 1e-3, beta_max: float = 0.9999, s: float = 0.008
    ) -> "DiscreteSchedule":
        """Cosine schedule (Nichol & Dhariwal 2021): alpha_bar(u) = cos^2((u + s)/(1 + s) pi/2),
        betas = 1 - alpha_bar(k/K)/alpha_bar((k-1)/K) clipped to [beta_min, beta_max]
        (OMAD App. D.2: beta_min 1e-3, beta_max 0.9999)."""
        u = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
        f = torch.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2
        betas = 1.0 - f[1:] / f[:-1]
        return cls(betas.clamp(beta_min, beta_max))

    @classmethod
    def vp(cls, num_steps: int, b_min: float = 0.1, b_max: float = 10.0) -> "DiscreteSchedule":
        """Discretised VP schedule of Diffusion-QL: alpha_k = exp(-b_min/K - (b_max - b_min)(2k - 1)/(2K^2)),
        k = 1..K, betas = 1 - alpha_k."""
        k = torch.arange(1, num_steps + 1, dtype=torch.float64)
        alpha = torch.exp(-b_min / num_steps - 0.5 * (b_max - b_min) * (2 * k - 1) / num_steps**2)
        return cls(1.0 - alpha)

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def dtype(self) -> torch.dtype:
        return self.betas.dtype

    def step_index(self, t: Tensor) -> Tensor:
        """Step k for network time t = (k + 1) / K (rounded, clamped to 0..K-1)."""
        return (torch.round(t * self.num_steps) - 1).long().clamp(0, self.num_steps - 1)

    def step_time(self, k: int | Tensor) -> Tensor:
        """Network time (k + 1) / K of step k."""
        return torch.as_tensor((k + 1) / self.num_steps, dtype=self.dtype, device=self.device)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(sqrt(alpha_bar_k), sqrt(1 - alpha_bar_k)) at network time t (DDPM Eq. 4)."""
        ab = self.alpha_bar[self.step_index(t)]
        return ab.sqrt(), (1.0 - ab).sqrt()

    def perturb(self, a0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """a_t = alpha_t a_0 + sigma_t eps; ``t`` has shape ``a0.shape[:-1]`` (or broadcasts)."""
        alpha, sigma = self.alpha_sigma(t)
        return alpha.unsqueeze(-1) * a0 + sigma.unsqueeze(-1) * noise

    def sample_t(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """Training times: k ~ U{0..K-1}, returned as t = (k + 1) / K."""
        k = torch.randint(0, self.num_steps, shape, generator=generator, device=_rand_device(generator, self.device))
        return ((k + 1).to(self.dtype) / self.num_steps).to(self.device)

    def sampling_times(self, steps: int) -> Tensor:
        """``steps`` descending network times on the grid (DDIM sub-sequence, includes t = 1/K)."""
        k = torch.linspace(self.num_steps - 1, 0, steps, dtype=torch.float64).round().long().unique_consecutive()
        return ((k + 1).to(self.dtype) / self.num_steps).to(self.device)

    def ou_rates(self) -> Tensor:
        """beta_h * delta of OMAD Eq. 5-6 for h = 1..K: betas / 2.

        With this choice the per-step Gaussian noise variance 2 eta^2 beta_h delta equals
        eta^2 beta_h (DDPM's), and the forward mean factor 1 - beta_h delta = 1 - beta_h / 2 is
        DDPM's sqrt(1 - beta_h) to first order, so a K-step discrete schedule drives the
        K-step Euler-Maruyama OU chain.
        """
        return self.betas / 2.0


class VPSDE(nn.Module):
    """Continuous VP SDE (Song et al. 2021; SRPO / OMSD): beta(t) = b0 + t (b1 - b0),
    log alpha_t = -t^2 (b1 - b0) / 4 - t b0 / 2, sigma_t = sqrt(1 - alpha_t^2).

    ``sample_t`` draws t ~ U(t_min, t_max) (training; SRPO's behaviour model uses t_min 1e-3),
    ``sampling_times`` spans t_max -> t_min.
    """

    def __init__(self, b0: float = 0.1, b1: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("b0", torch.tensor(b0))
        self.register_buffer("b1", torch.tensor(b1))
        self.t_min, self.t_max = t_min, t_max

    @property
    def device(self) -> torch.device:
        return self.b0.device

    @property
    def dtype(self) -> torch.dtype:
        return self.b0.dtype

    def beta(self, t: Tensor) -> Tensor:
        """beta(t) = b0 + t (b1 - b0)."""
        return self.b0 + t * (self.b1 - self.b0)

    def log_alpha(self, t: Tensor) -> Tensor:
        """log alpha_t = -t^2 (b1 - b0) / 4 - t b0 / 2 (OMSD App. H, SRPO)."""
        return -0.25 * t**2 * (self.b1 - self.b0) - 0.5 * t * self.b0

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) with sigma_t = sqrt(1 - alpha_t^2)."""
        log_alpha = self.log_alpha(t)
        return log_alpha.exp(), torch.sqrt(-torch.expm1(2.0 * log_alpha))

    def perturb(self, a0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """a_t = alpha_t a_0 + sigma_t eps (OMSD Eq. 18)."""
        alpha, sigma = self.alpha_sigma(t)
        return alpha.unsqueeze(-1) * a0 + sigma.unsqueeze(-1) * noise

    def sample_t(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        low: float | None = None,
        high: float | None = None,
    ) -> Tensor:
        """t ~ U(low, high), defaults (t_min, t_max)."""
        low = self.t_min if low is None else low
        high = self.t_max if high is None else high
        u = torch.rand(shape, generator=generator, device=_rand_device(generator, self.device), dtype=self.dtype)
        return (low + (high - low) * u).to(self.device)

    def sampling_times(self, steps: int) -> Tensor:
        """``steps`` times from t_max down to t_min."""
        return torch.linspace(self.t_max, self.t_min, steps, dtype=self.dtype, device=self.device)


Schedule = DiscreteSchedule | VPSDE
