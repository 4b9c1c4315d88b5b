"""SRPO's score-regularisation surrogate with a choice of time weighting w(t).

`dmarl.diffusion.losses.srpo_loss` fixes w(t) = sigma_t^2 (SRPO's "VDS" weighting).
``score_regularization_loss`` generalises it to the weightings of SRPO's code
(Chen et al. 2024, ``args.WT``) and OMSD's equations (paper 004):

- ``"vds"``:    w(t) = sigma_t^2 (SRPO's default; equal to ``srpo_loss``). Dominated by large
  t, where the diffused behaviour density is smooth: it pulls towards the bulk of mu rather
  than towards its nearest mode.
- ``"score"``:  w(t) = alpha_t / sigma_t, so w(t) eps_mu(a_t, t) = -alpha_t grad log mu_t(a_t):
  the behaviour score itself, as in OMSD Eq. 6 / Eq. 20 (grad log mu = -eps / sigma_t at
  t -> 0). Dominated by small t: mode-seeking.
- ``"stable"``: w(t) = 1.

With ``t_range = (t0, t0)`` the time is fixed at t0 (OMSD Eq. 19's w(t) = delta(t - 0.02)).
The gradient in ``action`` of E_{t, z}[w(t) <sg(eps_mu(alpha_t a + sigma_t z, t)), a>] - beta
<sg(grad_a Q), a> is E[w(t) eps_mu] - beta grad_a Q: a Monte-Carlo estimate of
-beta (grad_a Q + (1/beta) c grad_a log mu) with a positive weight c set by w.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dmarl.diffusion.samplers import Denoiser, randn
from dmarl.diffusion.schedules import VPSDE

WEIGHTINGS = ("vds", "score", "stable")


def time_weight(kind: str, alpha: Tensor, sigma: Tensor) -> Tensor:
    """w(t) for a weighting name (module docstring)."""
    if kind == "vds":
        return sigma**2
    if kind == "score":
        return alpha / sigma
    if kind == "stable":
        return torch.ones_like(sigma)
    raise ValueError(f"unknown weighting {kind!r}; valid: {', '.join(WEIGHTINGS)}")


def score_regularization_loss(
    behaviour: Denoiser,
    sde: VPSDE,
    action: Tensor,
    q_grad: Tensor,
    beta: float,
    *,
    weighting: str = "vds",
    t_range: tuple[float, float] = (0.02, 0.98),
    generator: torch.Generator | None = None,
    subtract_noise: bool = False,
) -> Tensor:
    """E_{t ~ U(t_range), z}[ w(t) <sg(eps_mu(alpha_t a + sigma_t z, t)), a> ] - beta <sg(grad_a Q), a>,
    averaged over the batch (``action`` [..., A], ``q_grad`` like it). ``subtract_noise`` uses
    eps_mu - z (SRPO's lower-variance option, zero-mean for a Dirac policy)."""
    time_weight(weighting, torch.ones(()), torch.ones(()))  # validate the name early
    t = sde.sample_t(tuple(action.shape[:-1]), generator=generator, low=t_range[0], high=t_range[1])
    z = randn(tuple(action.shape), generator, action.device, action.dtype)
    alpha, sigma = sde.alpha_sigma(t)
    with torch.no_grad():
        eps = behaviour(alpha.unsqueeze(-1) * action.detach() + sigma.unsqueeze(-1) * z, t)
        if subtract_noise:
            eps = eps - z
    reg = time_weight(weighting, alpha, sigma) * (eps * action).sum(-1)
    guide = (q_grad.detach() * action).sum(-1)
    return (reg - beta * guide).mean()
