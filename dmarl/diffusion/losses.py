"""Diffusion-policy losses: DSM, ISSM, the entropy-lower-bound objectives, SRPO, Diffusion-QL.

Denoisers are ``model(x, t) -> eps_hat`` callables (see ``samplers``), called here with a
per-sample ``t`` of shape ``a0.shape[:-1]``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from dmarl.diffusion.samplers import Denoiser, randn
from dmarl.diffusion.schedules import VPSDE, Schedule


def denoising_loss(
    model: Denoiser,
    schedule: Schedule,
    a0: Tensor,
    *,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    action_mask: Tensor | None = None,
) -> Tensor:
    """Per-sample denoising score-matching loss ||eps_theta(alpha_t a0 + sigma_t eps, t) - eps||^2
    (DDPM's L_simple; OMSD Eq. 18; DDPL Eq. 2 without the weight), summed over action dims
    (``action_mask`` selects dims). ``t`` defaults to ``schedule.sample_t``; shape ``a0.shape[:-1]``."""
    if t is None:
        t = schedule.sample_t(tuple(a0.shape[:-1]), generator=generator)
    if noise is None:
        noise = randn(tuple(a0.shape), generator, a0.device, a0.dtype)
    err = (model(schedule.perturb(a0, t, noise), t) - noise) ** 2
    if action_mask is not None:
        err = err * action_mask
    return err.sum(-1)


def dsm_loss(model: Denoiser, schedule: Schedule, a0: Tensor, **kwargs: object) -> Tensor:
    """Mean of ``denoising_loss`` over all samples (behaviour cloning / OMSD Eq. 18)."""
    return denoising_loss(model, schedule, a0, **kwargs).mean()


def agent_mean(values: Tensor, agent_mask: Tensor | None) -> Tensor:
    """Mean of per-agent values (e.g. ``[B, N]`` losses) over the present agents, ``agent_mask``
    1 (``Batch.agent_mask``, same shape); the plain mean when ``agent_mask`` is None. Absent
    agents' entries get no gradient; 0 when no agent is present."""
    if agent_mask is None:
        return values.mean()
    return (values * agent_mask).sum() / agent_mask.sum().clamp_min(1.0)


def issm_weights(q_values: Tensor, eta: float, dim: int = -1) -> Tensor:
    """Self-normalised importance weights softmax(eta * Qbar) over the K samples of a state
    (DDPL Sec. 4.1: w = exp(eta Qbar) / Z(s), Z estimated from the same samples); no gradient."""
    return torch.softmax(eta * q_values.detach(), dim=dim)


def issm_weights_kl(q_values: Tensor, eta: float, dim: int = -1) -> Tensor:
    """KL(w || uniform) = log K - H(w) of w = ``issm_weights(q_values, eta, dim)``, per state
    (``dim`` reduced). 0 = flat weights, log K = all weight on one sample. Non-decreasing in
    eta >= 0: d/d eta KL = eta Var_w(Qbar) >= 0."""
    log_w = torch.log_softmax(eta * q_values.detach(), dim=dim)
    return (log_w.exp() * log_w).sum(dim) + math.log(q_values.shape[dim])


def solve_issm_eta(
    q_values: Tensor,
    target_kl: float,
    dim: int = -1,
    eta_bounds: tuple[float, float] = (1e-3, 1e4),
    iterations: int = 40,
    agent_mask: Tensor | None = None,
) -> float:
    """The eta at which the mean over states of ``issm_weights_kl(q_values, eta, dim)`` equals
    ``target_kl`` (0 < target_kl < log K), by bisection in log eta (the mean KL is monotone in
    eta, ``issm_weights_kl``); the nearer bound of ``eta_bounds`` when the target lies outside
    their KL range (e.g. Qbar equal over every state's samples: KL = 0 for every eta).
    ``agent_mask`` (shape of ``q_values`` without ``dim``): the mean over present agents only
    (``agent_mean``). The fixed point of the DPMD reference code's temperature loss
    temp (target_kl + H(w) - log K), temp = 1 / eta, solved per batch instead of followed by
    gradient steps."""
    k = q_values.shape[dim]
    if not 0.0 < target_kl < math.log(k):
        raise ValueError(f"solve_issm_eta: target_kl = {target_kl} must lie in (0, log K = {math.log(k):.3f})")
    lo, hi = math.log(eta_bounds[0]), math.log(eta_bounds[1])
    q = q_values.detach()

    def mean_kl(eta: float) -> float:
        return agent_mean(issm_weights_kl(q, eta, dim), agent_mask).item()

    if mean_kl(eta_bounds[1]) <= target_kl:
        return eta_bounds[1]
    if mean_kl(eta_bounds[0]) >= target_kl:
        return eta_bounds[0]
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if mean_kl(math.exp(mid)) < target_kl:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def issm_loss(
    model: Denoiser,
    schedule: Schedule,
    a0: Tensor,
    q_values: Tensor,
    eta: float,
    *,
    dim: int = -1,
    generator: torch.Generator | None = None,
    action_mask: Tensor | None = None,
    agent_mask: Tensor | None = None,
) -> Tensor:
    """Importance-sampling score matching (DDPL Eq. 2): sum_k w_k ||eps_theta(a_t^k, t) - eps||^2,
    averaged over states, with a0 ~ pi_k (K samples per state along ``dim`` of ``q_values``;
    ``a0.shape == q_values.shape + (A,)``) and w = ``issm_weights``; a0 and w carry no gradient.
    In expectation this is the DSM loss on samples of pi_{k+1} ~ pi_k exp(eta Qbar).
    ``agent_mask`` (shape of ``q_values`` without ``dim``): averaged over present agents only."""
    per_sample = denoising_loss(model, schedule, a0.detach(), generator=generator, action_mask=action_mask)
    return agent_mean((issm_weights(q_values, eta, dim) * per_sample).sum(dim), agent_mask)


def max_entropy_actor_loss(q_values: Tensor, entropy_lb: Tensor, alpha: Tensor | float) -> Tensor:
    """OMAD's synchronised policy loss (Eq. 14, scaled by alpha): E_s[-Q(s, a_0) - alpha sum_i l_i],
    with ``entropy_lb`` = sum_i l_i from ``OUSample.entropy_lower_bound`` (Theorem 1, Eq. 9)."""
    return (-q_values - alpha * entropy_lb).mean()


TEMPERATURE_OBJECTIVES = ("paper", "sac", "dime")


def temperature_loss(
    log_alpha: Tensor,
    entropy: Tensor,
    target_entropy: float,
    *,
    objective: str = "sac",
    log_prior: Tensor | None = None,
) -> Tensor:
    """Temperature loss on alpha = exp(log_alpha); ``entropy`` (an entropy estimate, here
    sum_i l_i) and ``log_prior`` are detached; H = ``target_entropy``. The three objectives:

    - ``"sac"``: alpha (l - H) (SAC, Haarnoja et al. 2018, Eq. 18). d/d alpha = l - H:
      descent raises alpha while l < H and lowers it above; fixed point l = H.
    - ``"paper"``: alpha (H - l), OMAD Eq. 15 as printed. d/d alpha = H - l: descent lowers
      alpha while l < H. With H = 4 dim(A) (Table 1) and a squashed policy (l <= H(a) <=
      dim(A) log 2 < H) alpha decays at the optimiser's rate whatever l is: an annealing
      schedule, not a constraint.
    - ``"dime"``: alpha (H - c) with DIME's running cost c = -(l + log p(a_H)) (DIME code:
      ``-alpha * (run_costs - target)``, target 4 dim(A); its terminal cost log p(a_H) is left
      out). d/d alpha = H + l + log p(a_H): descent raises alpha while l + log p(a_H) < -H;
      fixed point l + log p(a_H) = -H, i.e. l = -H - log p(a_H) (with a_H ~ N(0, eta^2 I),
      E[-log p(a_H)] = dim(A)/2 log(2 pi e eta^2) ~ 1.42 dim(A) for eta = 1). This is Eq. 15
      with its "l" read as DIME's cost c; ``log_prior`` (log p(a_H), summed as ``entropy``)
      is required.

    Both DIME and SAC push alpha up when the policy is less random than the target; Eq. 15 as
    printed pushes it down. (An earlier docstring called OMAD's use, the SAC form on l with
    H = -4 dim(A), DIME's loss. It is not: DIME's statistic is l + log p(a_H), computed on the
    actor-update sample, and Eq. 15's sign is DIME's only with "l" read as DIME's cost c.)
    DIME's sign, from its code: the actor loss is -Q + alpha (c + log p(a_H)) = -Q - alpha l,
    so c = -(l + log p(a_H)); the temperature loss -alpha (c - 4 dim(A)) then drives c to
    4 dim(A), i.e. l + log p(a_H) to -4 dim(A)."""
    alpha = log_alpha.exp()
    l = entropy.detach()
    if objective == "sac":
        return (alpha * (l - target_entropy)).mean()
    if objective == "paper":
        return (alpha * (target_entropy - l)).mean()
    if objective == "dime":
        if log_prior is None:
            raise ValueError("temperature_loss(objective='dime') needs log_prior = log p(a_H)")
        return (alpha * (target_entropy + l + log_prior.detach())).mean()
    raise ValueError(f"unknown temperature objective {objective!r}; valid: {', '.join(TEMPERATURE_OBJECTIVES)}")


def action_gradient(q_fn: Callable[[Tensor], Tensor], action: Tensor) -> Tensor:
    """grad_a Q(s, a) at ``action`` (summed over the batch), detached from any graph."""
    with torch.enable_grad():
        a = action.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(q_fn(a).sum(), a)
    return grad.detach()


SRPO_WEIGHTINGS = ("vds", "score", "stable")


def srpo_time_weight(kind: str, alpha: Tensor, sigma: Tensor) -> Tensor:
    """w(t) of the SRPO surrogate (SRPO code's ``args.WT``; OMSD Eq. 19-20):

    - ``"vds"``: sigma_t^2 (SRPO's default). Dominated by large t, where the diffused
      behaviour density is smooth: pulls towards the bulk of mu, not its nearest mode.
    - ``"score"``: alpha_t / sigma_t, so w eps_mu(a_t, t) = -alpha_t grad log mu_t(a_t): the
      behaviour score itself (OMSD Eq. 6 / 20; with ``t_range = (0.02, 0.02)`` the literal
      Eq. 19 weighting delta(t - 0.02)). Dominated by small t: mode-seeking.
    - ``"stable"``: 1.
    """
    if kind == "vds":
        return sigma**2
    if kind == "score":
        return alpha / sigma
    if kind == "stable":
        return torch.ones_like(sigma)
    raise ValueError(f"unknown SRPO weighting {kind!r}; valid: {', '.join(SRPO_WEIGHTINGS)}")


def srpo_loss(
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
    """SRPO's score-regularisation surrogate as used by OMSD (Eq. 19-20, App. H):
    E_{t ~ U(t_range), z}[ w(t) <sg(eps_mu(alpha_t a + sigma_t z, t)), a> ] - beta <sg(grad_a Q), a>,
    w(t) from ``srpo_time_weight`` (default sigma_t^2). Its gradient in ``action`` is
    E[w(t) eps_mu] - beta grad_a Q, a Monte-Carlo version of -beta (grad_a Q + (1/beta) c grad_a
    log mu) with a positive weight c set by w (small beta = strong behaviour regularisation).
    ``subtract_noise`` uses eps_mu - z (SRPO's lower-variance option).
    ``q_grad``: e.g. ``action_gradient(q_fn, action)``; ``behaviour`` sees the perturbed action."""
    t = sde.sample_t(tuple(action.shape[:-1]), generator=generator, low=t_range[0], high=t_range[1])
    z = randn(tuple(action.shape), generator, action.device, action.dtype)
    alpha, sigma = sde.alpha_sigma(t)
    with torch.no_grad():
        eps = behaviour(alpha.unsqueeze(-1) * action.detach() + sigma.unsqueeze(-1) * z, t)
        if subtract_noise:
            eps = eps - z
    reg = srpo_time_weight(weighting, alpha, sigma) * (eps * action).sum(-1)
    guide = (q_grad.detach() * action).sum(-1)
    return (reg - beta * guide).mean()


def diffusion_ql_loss(bc_loss: Tensor, q_values: Tensor, eta: float, q_scale: Tensor | None = None) -> Tensor:
    """Diffusion-QL actor loss: L_bc + eta * (-mean Q(s, a_theta) / sg(mean |Q|)).

    ``q_values``: Q at actions sampled through the chain with gradients; ``q_scale`` the values
    whose mean magnitude normalises the term (Diffusion-QL uses the other twin; default: the same)."""
    scale = (q_values if q_scale is None else q_scale).abs().mean().detach()
    return bc_loss - eta * q_values.mean() / scale
