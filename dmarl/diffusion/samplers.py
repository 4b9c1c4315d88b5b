"""Samplers: DDPM ancestral, DDIM, and OMAD's Euler-Maruyama OU chain with exact log-densities.

All samplers take a *denoiser* ``model(x, t) -> Tensor`` (conditioning bound in, e.g. by
``ScoreMLP.conditioned(obs)``) and an output ``shape`` with any leading dims (states x
agents x ...). ``t`` is passed as a 0-dim tensor (one time for the whole batch).
Randomness: pass ``noise`` (fixed noise, shapes below) or a ``torch.Generator``; otherwise the
global RNG is used. ``requires_grad=True`` keeps the graph through every step (reparameterised
sampling); ``False`` runs under ``torch.no_grad()``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dmarl.diffusion.schedules import DiscreteSchedule, OUSchedule, Schedule

Denoiser = Callable[[Tensor, Tensor], Tensor]

_LOG_2PI = math.log(2.0 * math.pi)


def randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Standard normal noise on ``device``, drawn with ``generator`` (on its own device) if given."""
    g = generator
    return torch.randn(shape, generator=g, device=g.device if g is not None else device, dtype=dtype).to(device)


class _Noise:
    """Draws the i-th standard normal of a chain: from a fixed tensor, a generator, or global RNG."""

    def __init__(
        self,
        n: int,
        shape: tuple[int, ...],
        device: torch.device,
        dtype: torch.dtype,
        noise: Tensor | None,
        generator: torch.Generator | None,
    ) -> None:
        if noise is not None and tuple(noise.shape) != (n, *shape):
            raise ValueError(f"noise must have shape {(n, *shape)}, got {tuple(noise.shape)}")
        self.shape, self.device, self.dtype = shape, device, dtype
        self.noise, self.generator = noise, generator

    def __getitem__(self, i: int) -> Tensor:
        if self.noise is not None:
            return self.noise[i].to(device=self.device, dtype=self.dtype)
        return randn(self.shape, self.generator, self.device, self.dtype)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor, mask: Tensor | None = None) -> Tensor:
    """log N(x; mean, diag(std^2)) summed over the last dim (``mask`` selects dims)."""
    z = (x - mean) / std
    per_dim = -0.5 * z**2 - torch.log(std) - 0.5 * _LOG_2PI
    if mask is not None:
        per_dim = per_dim * mask
    return per_dim.sum(-1)


def tanh_log_det(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """sum_d log(1 - tanh(x_d)^2) = sum_d 2 (log 2 - x_d - softplus(-2 x_d)), the log-det of
    the Jacobian of a = tanh(x) (SAC App. C; DIME's squashing term)."""
    per_dim = 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))
    if mask is not None:
        per_dim = per_dim * mask
    return per_dim.sum(-1)


# ---------------------------------------------------------------------------------------------
# DDPM / DDIM (discrete VP)


def ddpm_sample(
    model: Denoiser,
    schedule: DiscreteSchedule,
    shape: tuple[int, ...],
    *,
    clip_denoised: bool = True,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    requires_grad: bool = False,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) with an epsilon-predicting model.

    Each step predicts x0 = (x_k - sqrt(1 - abar_k) eps) / sqrt(abar_k), clips it to [-1, 1]
    when ``clip_denoised`` (Diffusion-QL), and samples the posterior q(x_{k-1} | x_k, x0);
    no noise is added at the last step, so with clipping the output lies in [-1, 1].
    ``noise``: shape ``(K, *shape)``: ``noise[0]`` is x_K, ``noise[j]`` the noise injected
    at the j-th step (j = 1..K-1).
    """
    K = schedule.num_steps
    draw = _Noise(K, shape, schedule.device, schedule.dtype, noise, generator)
    with torch.set_grad_enabled(requires_grad and torch.is_grad_enabled()):
        x = draw[0]
        for j, k in enumerate(range(K - 1, -1, -1), start=1):
            eps = model(x, schedule.step_time(k))
            x0 = (x - (1.0 - schedule.alpha_bar[k]).sqrt() * eps) / schedule.alpha_bar[k].sqrt()
            if clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
            mean = schedule.posterior_mean_coef1[k] * x0 + schedule.posterior_mean_coef2[k] * x
            x = mean + (0.5 * schedule.posterior_log_variance[k]).exp() * draw[j] if k > 0 else mean
    return x


def ddim_sample(
    model: Denoiser,
    schedule: Schedule,
    shape: tuple[int, ...],
    steps: int,
    *,
    clip_denoised: bool = True,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    requires_grad: bool = False,
) -> Tensor:
    """Deterministic DDIM (Song et al. 2021, Eq. 12 with eta = 0) on ``steps`` times of any
    schedule: x_s = alpha_s x0_hat + sigma_s eps_hat, ending with x0_hat at the last time.

    With ``clip_denoised`` x0_hat is clipped to [-1, 1] and eps_hat recomputed from it.
    ``noise``: shape ``(1, *shape)``, the initial x_T.
    """
    times = schedule.sampling_times(steps)
    draw = _Noise(1, shape, schedule.device, schedule.dtype, noise, generator)
    with torch.set_grad_enabled(requires_grad and torch.is_grad_enabled()):
        x = draw[0]
        for i, t in enumerate(times):
            alpha, sigma = schedule.alpha_sigma(t)
            eps = model(x, t)
            x0 = (x - sigma * eps) / alpha
            if clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
                eps = (x - alpha * x0) / sigma
            if i + 1 == len(times):
                return x0
            alpha_next, sigma_next = schedule.alpha_sigma(times[i + 1])
            x = alpha_next * x0 + sigma_next * eps
    return x


# ---------------------------------------------------------------------------------------------
# OMAD's Euler-Maruyama OU chain


def ou_forward_kernel(a_prev: Tensor, rate: Tensor | float, eta: float) -> tuple[Tensor, Tensor]:
    """Mean and std of the forward (noising) kernel q(a_h | a_{h-1}) (OMAD Eq. 5):
    a_h = a_{h-1} - beta_h delta a_{h-1} + eps, eps ~ N(0, 2 eta^2 beta_h delta I).
    ``rate`` is beta_h * delta."""
    rate = torch.as_tensor(rate, dtype=a_prev.dtype, device=a_prev.device)
    return (1.0 - rate) * a_prev, eta * torch.sqrt(2.0 * rate)


def ou_reverse_kernel(a: Tensor, score: Tensor, rate: Tensor | float, eta: float) -> tuple[Tensor, Tensor]:
    """Mean and std of the reverse (denoising) kernel p_theta(a_{h-1} | a_h) (OMAD Eq. 6 / 10):
    a_{h-1} = a_h + (beta_h a_h + 2 eta^2 beta_h f_theta(a_h, s, t_h)) delta + xi,
    xi ~ N(0, 2 eta^2 beta_h delta I)."""
    rate = torch.as_tensor(rate, dtype=a.dtype, device=a.device)
    return a + rate * a + 2.0 * eta**2 * rate * score, eta * torch.sqrt(2.0 * rate)


def _step_log_normal(z_sq: Tensor, log_std: Tensor, mask: Tensor | None) -> Tensor:
    """sum over the last dim of log N(.; mean, std_h^2) from the squared standardised residuals
    ``z_sq`` [H, ..., A] and log std_h [H]: -0.5 sum z^2 - n (log std_h + 0.5 log 2 pi), with
    n the number of unmasked dims (``gaussian_log_prob`` with the per-step constant folded)."""
    if mask is not None:
        z_sq = z_sq * mask
    n = mask.sum(-1) if mask is not None else z_sq.shape[-1]
    const = (log_std + 0.5 * _LOG_2PI).view((-1,) + (1,) * (z_sq.dim() - 2))
    return -0.5 * z_sq.sum(-1) - const * n


def _ou_log_densities(
    chain: list[Tensor], xis: list[Tensor], rates: Tensor, eta: float, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``log_reverse`` and ``log_forward`` [..., H] (step order h = 1..H) of a sampled chain
    ``[a_H, ..., a_0]`` with its reverse-step noises ``xis`` (xi of the step producing a_{h-1}
    at index H - h), each term computed for all H steps at once: the log-densities of
    ``ou_reverse_kernel`` / ``ou_forward_kernel`` (reverse: the standardised residual of a_{h-1}
    is xi itself; forward: z = (a_h - (1 - beta_h delta) a_{h-1}) / std_h)."""
    steps = (-1,) + (1,) * chain[0].dim()  # rates[h-1] broadcast over step h's slice
    var = 2.0 * eta**2 * rates
    log_std = 0.5 * torch.log(var)
    log_reverse = _step_log_normal(torch.stack(xis[::-1]).square(), log_std, mask)  # [H, ...]
    ordered = torch.stack(chain[::-1])  # [a_0, ..., a_H]
    residual = torch.addcmul(ordered[1:], ordered[:-1], (rates - 1.0).view(steps))
    log_forward = _step_log_normal(residual.square() / var.view(steps), log_std, mask)
    return log_reverse.movedim(0, -1).contiguous(), log_forward.movedim(0, -1).contiguous()


@dataclass
class OUSample:
    """Output of ``ou_sample``; log-density terms are per sample (summed over action dims).

    ``action`` = tanh(pre_tanh) when squashed (else pre_tanh); ``log_prior`` = log p(a_H);
    ``log_reverse[..., h-1]`` = log p_theta(a_{h-1} | a_h) and ``log_forward[..., h-1]`` =
    log q(a_h | a_{h-1}) for h = 1..H; ``log_det_tanh`` = sum log(1 - tanh(a_0)^2) (0 without
    squashing); ``chain`` = [a_0, ..., a_H] when requested.
    """

    action: Tensor
    pre_tanh: Tensor
    log_prior: Tensor
    log_reverse: Tensor
    log_forward: Tensor
    log_det_tanh: Tensor
    chain: list[Tensor] | None = None

    def entropy_lower_bound(self) -> Tensor:
        """Pointwise estimate of l (OMAD Theorem 1, Eq. 9, App. B Eq. 18):
        sum_h log q(a_h | a_{h-1}) - log p(a_H) - sum_h log p_theta(a_{h-1} | a_h)
        + sum log|d tanh / d a_0|; its expectation lower-bounds the entropy of ``action``."""
        return self.log_forward.sum(-1) - self.log_prior - self.log_reverse.sum(-1) + self.log_det_tanh


def ou_sample(
    model: Denoiser,
    schedule: OUSchedule | DiscreteSchedule,
    shape: tuple[int, ...],
    *,
    eta: float = 1.0,
    squash: bool = True,
    action_mask: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    requires_grad: bool = False,
    return_chain: bool = False,
    residual: bool = False,
) -> OUSample:
    """Sample OMAD's H-step Euler-Maruyama OU chain (Eq. 5-6, 10) with its log-densities.

    a_H ~ N(0, eta^2 I), then for h = H..1 the reverse kernel with score ``model(a_h, t_h)``,
    network time t_h / T = h / H, and beta_h delta = ``schedule.ou_rates()[h-1]`` (H =
    schedule.num_steps). ``OUSchedule`` (OMAD's default) fixes the horizon T with delta = T / H
    and beta_h delta the exact integral of beta(t) over step h, so H only refines the chain;
    ``DiscreteSchedule`` gives the legacy betas / 2 (total rate grows with H).
    The forward kernel of the pair (a_{h-1}, a_h) uses the same beta_h delta (DIME's
    convention; the bound of Theorem 1 holds for any forward kernel). ``action_mask``
    ([..., A], 0/1) drops padded action dims from every log-density. ``noise``: shape
    ``(H + 1, *shape)``: ``noise[0]`` for a_H, ``noise[j]`` for the step producing a_{H-j}.
    ``residual=True``: the score is ``model(a, t) - a / eta^2`` (the network learns the
    residual from the prior's score; OMAD's parametrisation), folded into the step's mean.

    Each step is ``ou_reverse_kernel``'s mean plus std * xi in two fused multiply-adds (per-step
    coefficients computed once per chain); a model with ``time_table`` / ``at``
    (`dmarl.diffusion.score_networks.ConditionedScore`) gets the time features of all H steps in
    one pass. Same maths as the step-by-step kernels, equal up to float rounding.
    """
    rates = schedule.ou_rates()[: schedule.num_steps]
    H = schedule.num_steps
    draw = _Noise(H + 1, shape, schedule.device, schedule.dtype, noise, generator)
    # reverse mean a + rate a + 2 eta^2 rate f, f = out (- a / eta^2 with ``residual``)
    keep = ((1.0 - rates) if residual else (1.0 + rates)).unbind()
    gain = (2.0 * eta**2 * rates).unbind()
    std = (eta * torch.sqrt(2.0 * rates)).unbind()
    times = torch.stack([schedule.step_time(h - 1) for h in range(H, 0, -1)])  # chain order
    with torch.set_grad_enabled(requires_grad and torch.is_grad_enabled()):
        a = eta * draw[0]
        chain, xis = [a], []
        log_prior = gaussian_log_prob(a, torch.zeros_like(a), torch.full_like(a, eta), action_mask)
        table = model.time_table(times) if hasattr(model, "time_table") else None
        # the chain only; the log-density terms of all H steps follow in one pass each
        for j, h in enumerate(range(H, 0, -1)):
            out = model(a, times[j]) if table is None else model.at(a, table[j])
            xis.append(draw[j + 1])
            a = torch.addcmul(torch.addcmul(a * keep[h - 1], out, gain[h - 1]), xis[-1], std[h - 1])
            chain.append(a)
        log_reverse, log_forward = _ou_log_densities(chain, xis, rates, eta, action_mask)
        action = torch.tanh(a) if squash else a
        log_det = tanh_log_det(a, action_mask) if squash else torch.zeros_like(log_prior)
    return OUSample(
        action=action,
        pre_tanh=a,
        log_prior=log_prior,
        log_reverse=log_reverse,
        log_forward=log_forward,
        log_det_tanh=log_det,
        chain=chain[::-1] if return_chain else None,
    )
