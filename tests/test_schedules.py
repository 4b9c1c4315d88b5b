"""Noise schedules against their defining formulas."""
from __future__ import annotations

import math

import pytest
import torch

from dmarl.diffusion import VPSDE, DiscreteSchedule


def test_linear_schedule_endpoints():
    s = DiscreteSchedule.linear(20)
    assert s.num_steps == 20
    assert s.betas[0].item() == pytest.approx(1e-3)
    assert s.betas[-1].item() == pytest.approx(0.999)
    torch.testing.assert_close(s.alpha_bar, torch.cumprod(1 - s.betas, 0))


def test_cosine_schedule_matches_formula_and_clips():
    K, s_off = 8, 0.008
    s = DiscreteSchedule.cosine(K)
    f = [math.cos((k / K + s_off) / (1 + s_off) * math.pi / 2) ** 2 for k in range(K + 1)]
    raw = [1 - f[k + 1] / f[k] for k in range(K)]
    expected = [min(max(b, 1e-3), 0.9999) for b in raw]
    torch.testing.assert_close(s.betas, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert s.betas[-1].item() == pytest.approx(0.9999)  # raw beta_K = 1 is clipped to beta_max
    assert (s.betas >= 1e-3).all()


def test_vp_discrete_schedule_matches_diffusion_ql():
    K = 5
    s = DiscreteSchedule.vp(K)
    k = torch.arange(1, K + 1, dtype=torch.float64)
    alpha = torch.exp(-0.1 / K - 0.5 * (10.0 - 0.1) * (2 * k - 1) / K**2)
    torch.testing.assert_close(s.betas, (1 - alpha).float())


def test_posterior_is_the_gaussian_conditional():
    """q(x_{k-1} | x_k, x0) from Bayes on the forward process, for one step k."""
    s = DiscreteSchedule.vp(10).double()
    k = 6
    ab_prev, beta = s.alpha_bar_prev[k], s.betas[k]
    # x_{k-1} ~ N(sqrt(ab_prev) x0, 1 - ab_prev); x_k | x_{k-1} ~ N(sqrt(1 - beta) x_{k-1}, beta)
    prior_var = 1 - ab_prev
    post_var = 1 / (1 / prior_var + (1 - beta) / beta)
    x0, xk = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.7, dtype=torch.float64)
    post_mean = post_var * (ab_prev.sqrt() * x0 / prior_var + (1 - beta).sqrt() * xk / beta)
    torch.testing.assert_close(s.posterior_variance[k], post_var)
    torch.testing.assert_close(s.posterior_mean_coef1[k] * x0 + s.posterior_mean_coef2[k] * xk, post_mean)
    assert s.posterior_log_variance[0] == s.posterior_log_variance[1]  # DDPM's clipped log-variance


def test_discrete_time_grid_and_sampling():
    s = DiscreteSchedule.cosine(8)
    k = torch.arange(8)
    torch.testing.assert_close(s.step_index((k + 1) / 8.0), k)
    assert s.step_time(7).item() == 1.0
    g = torch.Generator().manual_seed(0)
    t = s.sample_t((1000,), generator=g)
    assert set((t * 8).round().long().tolist()) == set(range(1, 9))
    times = s.sampling_times(3)
    torch.testing.assert_close(times, torch.tensor([8 / 8, 5 / 8, 1 / 8]))  # steps k = 7, 4, 0
    alpha, sigma = s.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))
    torch.testing.assert_close(s.ou_rates(), s.betas / 2)


def test_vp_sde_alpha_sigma_and_beta():
    sde = VPSDE()
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64).requires_grad_(True)
    sde = sde.double()
    log_alpha = sde.log_alpha(t)
    torch.testing.assert_close(log_alpha, -(t**2) * (20 - 0.1) / 4 - t * 0.1 / 2)
    (dlog,) = torch.autograd.grad(log_alpha.sum(), t)
    torch.testing.assert_close(dlog, -sde.beta(t).detach() / 2)  # d log alpha / dt = -beta(t) / 2
    alpha, sigma = sde.alpha_sigma(t.detach())
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))
    assert alpha[0].item() == 1.0 and sigma[0].item() == 0.0
    u = sde.sample_t((2000,), low=0.02, high=0.98)
    assert u.min() >= 0.02 and u.max() <= 0.98 and u.dtype == torch.float64
    assert sde.sampling_times(4)[0].item() == 1.0 and sde.sampling_times(4)[-1].item() == pytest.approx(1e-3)


def test_schedules_move_with_to():
    s = DiscreteSchedule.linear(4).to(torch.float64)
    assert s.dtype == torch.float64 and s.alpha_bar.dtype == torch.float64
    zeros, ones = torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64)
    x = s.perturb(zeros, s.step_time(0).expand(3), ones)
    torch.testing.assert_close(x, torch.full((3, 2), math.sqrt(1e-3), dtype=torch.float64), rtol=1e-5, atol=0)
    with pytest.raises(ValueError):
        DiscreteSchedule(torch.tensor([0.5, 1.0]))


def test_ou_schedule_total_rate_is_independent_of_h() -> None:
    """OMAD's chain on a fixed horizon: sum_h beta_h delta = B(T) = int_0^T beta for every H,
    each beta_h delta is beta's integral over its cell, delta = T / H. The legacy betas / 2 of
    an H-step DDPM schedule fails this (0.75 at H = 2, 2.22 at H = 16)."""
    from dmarl.diffusion.schedules import OUSchedule

    T, bmin, bmax = 3.3, 1e-3, 0.9999
    closed = bmin * T + (bmax - bmin) * T / 2  # int_0^T of the cosine ramp
    for H in (1, 2, 3, 8, 16, 100):
        s = OUSchedule(H, T, bmin, bmax).double()
        assert s.delta == pytest.approx(T / H)
        assert s.ou_rates().sum().item() == pytest.approx(closed, rel=1e-6)  # float32 buffers
        assert s.cumulative_rate(torch.tensor(T)).item() == pytest.approx(closed, rel=1e-6)
        for h in (1, H):  # first and last cell against the trapezoid integral of beta(t)
            cell = torch.linspace((h - 1) * T / H, h * T / H, 10_001, dtype=torch.float64)
            assert s.ou_rates()[h - 1].item() == pytest.approx(torch.trapezoid(s.beta(cell), cell).item(), rel=1e-5, abs=1e-9)
        assert s.step_time(H - 1).item() == 1.0 and s.step_time(0).item() == pytest.approx(1 / H)
    assert s.beta(torch.tensor(0.0)).item() == pytest.approx(bmin) and s.beta(torch.tensor(T)).item() == pytest.approx(bmax)
    const = OUSchedule(5, 2.0, 0.5, 0.5, shape="constant")
    torch.testing.assert_close(const.ou_rates(), torch.full((5,), 0.5 * 2.0 / 5))
    legacy = [DiscreteSchedule.cosine(H).ou_rates().sum().item() for H in (2, 16)]
    assert legacy[1] - legacy[0] > 1.0
    with pytest.raises(ValueError, match="horizon"):
        OUSchedule(8, horizon=0.0)
    with pytest.raises(ValueError, match="shape"):
        OUSchedule(8, shape="linear")
