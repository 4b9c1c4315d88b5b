"""Noise schedules: discrete (linear, cosine, Diffusion-QL VP), the continuous VP SDE, and
OMAD's OU-chain schedule on a fixed horizon (``OUSchedule``).

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
        """beta_h * delta of OMAD Eq. 5-6 for h = 1..K: betas / 2 (the legacy OMAD chain; see
        ``OUSchedule`` for the fixed-horizon one, whose total rate does not depend on K).

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


OU_SHAPES = ("cosine", "constant")


class OUSchedule(nn.Module):
    """OMAD's OU chain (Eq. 3-6) on a fixed horizon [0, T] with H Euler-Maruyama steps.

    Continuous rate: beta(t) = beta_min + (beta_max - beta_min) (1 - cos(pi t / T)) / 2 for
    ``shape='cosine'`` (a cosine ramp from beta_min at t = 0 to beta_max at t = T; App. D.2's
    "cosine schedule with beta_min 1e-3, beta_max 0.9999" read as a continuous-time rate), or
    beta(t) = beta_max for ``shape='constant'``. Step size delta = T / H, step h covers
    [(h - 1) delta, h delta] and t_h = h T / H (Eq. 6, 10). The per-step rate is the exact cell
    integral, ``ou_rates()[h-1]`` = beta_h delta = int_{(h-1) delta}^{h delta} beta(t) dt, so
    sum_h beta_h delta = B(T) = int_0^T beta for every H: changing H refines the same process
    instead of changing its total diffusion time (with betas / 2 of a K-step DDPM schedule,
    the total was 0.75 at H = 2, 1.64 at H = 8, 2.22 at H = 16).

    Continuous-time marginal of the forward SDE da = -beta a dt + eta sqrt(2 beta) dB:
    a_t = e^{-B(t)} a_0 + N(0, eta^2 (1 - e^{-2 B(t)})) (``marginal_mean_var``), which the
    Euler-Maruyama chain approaches as H grows. Network time is t_h / T = h / H in (0, 1]
    (``step_time``), the same convention as ``DiscreteSchedule``.
    """

    def __init__(
        self,
        num_steps: int,
        horizon: float = 3.3,
        beta_min: float = 1e-3,
        beta_max: float = 0.9999,
        shape: str = "cosine",
    ) -> None:
        super().__init__()
        if num_steps < 1 or horizon <= 0 or not 0 < beta_min <= beta_max:
            raise ValueError(
                f"OUSchedule needs num_steps >= 1, horizon > 0 and 0 < beta_min <= beta_max; got "
                f"num_steps={num_steps}, horizon={horizon}, beta_min={beta_min}, beta_max={beta_max}"
            )
        if shape not in OU_SHAPES:
            raise ValueError(f"unknown OU schedule shape {shape!r}; valid: {', '.join(OU_SHAPES)}")
        self.horizon, self.beta_min, self.beta_max, self.shape = float(horizon), beta_min, beta_max, shape
        edges = torch.linspace(0.0, self.horizon, num_steps + 1, dtype=torch.float64)
        rates = self._cumulative(edges).diff()
        self.register_buffer("rates", rates.to(torch.get_default_dtype()))

    def _cumulative(self, t: Tensor) -> Tensor:
        """B(t) = int_0^t beta(s) ds in closed form (float64 inside)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.shape == "constant":
            return self.beta_max * t
        T, span = self.horizon, self.beta_max - self.beta_min
        return self.beta_min * t + span * (t / 2 - T / (2 * math.pi) * torch.sin(math.pi * t / T))

    def beta(self, t: Tensor) -> Tensor:
        """Instantaneous rate beta(t), t in [0, T] (diffusion time, not network time)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.shape == "constant":
            return torch.full_like(t, self.beta_max)
        return self.beta_min + (self.beta_max - self.beta_min) * (1 - torch.cos(math.pi * t / self.horizon)) / 2

    def cumulative_rate(self, t: Tensor) -> Tensor:
        """B(t) = int_0^t beta; ``cumulative_rate(T)`` = ``ou_rates().sum()`` for every H."""
        return self._cumulative(t)

    def marginal_mean_var(self, t: Tensor, eta: float, var0: float = 0.0) -> tuple[Tensor, Tensor]:
        """(mean factor e^{-B(t)}, variance eta^2 (1 - e^{-2B}) + e^{-2B} var0) of the forward
        OU SDE at diffusion time t for a_0 with variance ``var0``."""
        b = self._cumulative(t)
        decay = torch.exp(-2.0 * b)
        return torch.exp(-b), eta**2 * (1.0 - decay) + decay * var0

    @property
    def num_steps(self) -> int:
        return int(self.rates.shape[0])

    @property
    def delta(self) -> float:
        """Step size delta = T / H."""
        return self.horizon / self.num_steps

    @property
    def device(self) -> torch.device:
        return self.rates.device

    @property
    def dtype(self) -> torch.dtype:
        return self.rates.dtype

    def step_time(self, k: int | Tensor) -> Tensor:
        """Network time t_{k+1} / T = (k + 1) / H of step k = h - 1."""
        return torch.as_tensor((k + 1) / self.num_steps, dtype=self.dtype, device=self.device)

    def ou_rates(self) -> Tensor:
        """beta_h delta for h = 1..H (cell integrals of beta; sum = B(T) for every H)."""
        return self.rates

    def extra_repr(self) -> str:
        return (
            f"H={self.num_steps}, T={self.horizon}, delta={self.delta:.4g}, shape={self.shape}, "
            f"beta=[{self.beta_min}, {self.beta_max}]"
        )


Schedule = DiscreteSchedule | VPSDE
