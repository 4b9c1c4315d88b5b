"""Samplers against the math: kernel densities, OU marginals, the entropy lower bound (OMAD
Theorem 1) in closed form for a linear score, DDPM / DDIM with an oracle denoiser."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Normal, TanhTransform

from dmarl.bench.claim_checks import LinearScore, linear_chain_entropy
from dmarl.diffusion import (
    AgentBatchedScoreMLP,
    DiscreteSchedule,
    ddim_sample,
    ddpm_sample,
    gaussian_log_prob,
    ou_forward_kernel,
    ou_reverse_kernel,
    ou_sample,
    tanh_log_det,
)

ETA = 1.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_kernel_log_densities_equal_torch_distributions():
    g = _gen(0)
    a, a_prev, score = (torch.randn(64, 3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    rate, eta = 0.137, 1.7
    mean, std = ou_forward_kernel(a_prev, rate, eta)  # OMAD Eq. 5
    torch.testing.assert_close(mean, a_prev - rate * a_prev)
    assert std.item() == pytest.approx(math.sqrt(2 * eta**2 * rate))
    ref = Normal(a_prev * (1 - rate), math.sqrt(2 * eta**2 * rate)).log_prob(a).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(a, mean, std), ref)
    mean, std = ou_reverse_kernel(a, score, rate, eta)  # OMAD Eq. 6 / 10
    torch.testing.assert_close(mean, a + (rate * a + 2 * eta**2 * rate * score))
    ref = Normal(a + rate * a + 2 * eta**2 * rate * score, math.sqrt(2 * eta**2 * rate)).log_prob(a_prev).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(a_prev, mean, std), ref)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    ref_masked = Normal(mean, std).log_prob(a_prev)[..., [0, 1, 3]].sum(-1)
    torch.testing.assert_close(gaussian_log_prob(a_prev, mean, std, mask), ref_masked)
    x = 3 * torch.randn(100, 2, generator=g, dtype=torch.float64)
    ref = TanhTransform().log_abs_det_jacobian(x, torch.tanh(x)).sum(-1)
    torch.testing.assert_close(tanh_log_det(x), ref)
    small = x.clamp(-3, 3)
    torch.testing.assert_close(tanh_log_det(small), torch.log1p(-torch.tanh(small) ** 2).sum(-1))


def test_ou_sample_terms_match_kernels_on_the_chain():
    """Every returned term is the torch.distributions log-density of the returned chain, for
    a nonlinear agent-batched score network over leading dims [B, N] with a padded action dim."""
    torch.manual_seed(1)
    sched = DiscreteSchedule.cosine(8).double()
    net = AgentBatchedScoreMLP(3, 4, 5, hidden=(32, 32), time_dim=16, out_init_scale=1.0).double()
    obs = torch.randn(16, 3, 5, dtype=torch.float64)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    model = net.conditioned(obs)
    out = ou_sample(model, sched, (16, 3, 4), eta=ETA, action_mask=mask, generator=_gen(2), return_chain=True)
    chain, rates = out.chain, sched.ou_rates()
    assert out.action.shape == (16, 3, 4) and out.log_reverse.shape == (16, 3, 8)
    prior = Normal(0.0, ETA).log_prob(chain[8])[..., :3].sum(-1)
    torch.testing.assert_close(out.log_prior, prior)
    for h in range(1, 9):
        rate, std = rates[h - 1], ETA * torch.sqrt(2 * rates[h - 1])
        score = net(chain[h], torch.tensor(h / 8.0, dtype=torch.float64), obs)
        rev = Normal(chain[h] + rate * chain[h] + 2 * ETA**2 * rate * score, std).log_prob(chain[h - 1])
        fwd = Normal(chain[h - 1] - rate * chain[h - 1], std).log_prob(chain[h])
        torch.testing.assert_close(out.log_reverse[..., h - 1], rev[..., :3].sum(-1))
        torch.testing.assert_close(out.log_forward[..., h - 1], fwd[..., :3].sum(-1))
    torch.testing.assert_close(out.action, torch.tanh(chain[0]))
    log_det = TanhTransform().log_abs_det_jacobian(chain[0], out.action)
    torch.testing.assert_close(out.log_det_tanh, log_det[..., :3].sum(-1))
    expected = out.log_forward.sum(-1) - out.log_prior - out.log_reverse.sum(-1) + out.log_det_tanh
    torch.testing.assert_close(out.entropy_lower_bound(), expected)


# The linear-score chain and its closed-form entropy / bound live in the core, where the claims
# page's Theorem 1 check uses them too.
_closed_form_bound = linear_chain_entropy


def _mc(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), values.std().item() / math.sqrt(values.numel())


def test_zero_score_ou_marginal_and_bound_below_true_entropy():
    sched = DiscreteSchedule.cosine(8).double()
    M = 20_000
    out = ou_sample(lambda a, t: torch.zeros_like(a), sched, (M, 1), eta=ETA, squash=False, generator=_gen(3))
    mean0, var0, entropy, expected_l = _closed_form_bound(LinearScore(0, 0, 0), sched.ou_rates().numpy(), ETA)
    x = out.action[:, 0]
    assert abs(x.mean().item() - mean0) < 4 * math.sqrt(var0 / M)
    assert abs(x.var().item() / var0 - 1) < 4 * math.sqrt(2 / M)
    assert stats.kstest(((x - mean0) / math.sqrt(var0)).numpy(), "norm").pvalue > 1e-3
    l_mean, l_se = _mc(out.entropy_lower_bound())
    assert l_mean <= entropy + 3 * l_se  # the bound never exceeds the true entropy
    assert abs(l_mean - expected_l) < 4 * l_se
    assert entropy - expected_l > 10 * l_se  # the gap is real: the bound is not the entropy


def test_linear_score_bound_equals_closed_form_and_wrong_terms_fail():
    sched = DiscreteSchedule.cosine(8).double()
    score = LinearScore(-0.6, 0.3, 0.4)
    M = 20_000
    out = ou_sample(score, sched, (M, 1), eta=ETA, squash=False, generator=_gen(4), return_chain=True)
    _, var0, entropy, expected_l = _closed_form_bound(score, sched.ou_rates().numpy(), ETA)
    assert expected_l < entropy
    l_mean, l_se = _mc(out.entropy_lower_bound())
    assert abs(l_mean - expected_l) < 4 * l_se

    fwd, prior, rev = out.log_forward.sum(-1), out.log_prior, out.log_reverse.sum(-1)
    rates, chain = sched.ou_rates(), out.chain
    bad_forward = sum(  # forward kernel with the reverse drift's sign: (1 + b) instead of (1 - b)
        gaussian_log_prob(chain[h], (1 + rates[h - 1]) * chain[h - 1], ETA * torch.sqrt(2 * rates[h - 1]).expand(M, 1))
        for h in range(1, 9)
    )
    wrong = {
        "prior sign": fwd + prior - rev,
        "reverse sign": fwd - prior + rev,
        "missing prior": fwd - rev,
        "missing forward": -prior - rev,
        "wrong forward drift": bad_forward - prior - rev,
    }
    for name, values in wrong.items():
        w_mean, w_se = _mc(values)
        assert abs(w_mean - expected_l) > 10 * max(w_se, l_se), name


def test_tanh_bound_is_entropy_bound_of_the_squashed_action():
    """With squashing, E[l] = E[l_pre] + E[log|tanh'|] <= H(a_0) + E[log|tanh'|] = H(tanh(a_0))."""
    sched = DiscreteSchedule.cosine(8).double()
    score = LinearScore(-1.0, 0.0, 0.0)
    out = ou_sample(score, sched, (20_000, 1), eta=ETA, generator=_gen(5))
    mean0, var0, entropy, _ = _closed_form_bound(score, sched.ou_rates().numpy(), ETA)
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64) * math.sqrt(var0) + mean0
    dens = torch.exp(Normal(mean0, math.sqrt(var0)).log_prob(grid))
    squashed_entropy = entropy + torch.trapezoid(dens * tanh_log_det(grid.unsqueeze(-1)), grid).item()
    l_mean, l_se = _mc(out.entropy_lower_bound())
    assert l_mean <= squashed_entropy + 3 * l_se
    assert out.action.abs().max() < 1


def test_fixed_noise_generator_and_gradient_modes():
    sched = DiscreteSchedule.cosine(8)
    net = AgentBatchedScoreMLP(2, 3, 4, hidden=(16, 16), time_dim=8, out_init_scale=1.0)
    obs = torch.randn(5, 2, 4)
    model = net.conditioned(obs)
    noise = torch.randn(9, 5, 2, 3)
    a = ou_sample(model, sched, (5, 2, 3), noise=noise)
    b = ou_sample(model, sched, (5, 2, 3), noise=noise)
    torch.testing.assert_close(a.action, b.action)
    torch.testing.assert_close(a.entropy_lower_bound(), b.entropy_lower_bound())
    c = ou_sample(model, sched, (5, 2, 3), generator=_gen(0))
    d = ou_sample(model, sched, (5, 2, 3), generator=_gen(0))
    torch.testing.assert_close(c.action, d.action)
    assert not torch.allclose(a.action, c.action)
    assert not a.action.requires_grad
    with pytest.raises(ValueError):
        ou_sample(model, sched, (5, 2, 3), noise=torch.randn(8, 5, 2, 3))
    g = ou_sample(net.conditioned(obs), sched, (5, 2, 3), noise=noise, requires_grad=True)
    loss = -(g.action.sum() + g.entropy_lower_bound().sum())
    loss.backward()
    assert net.in_x.weight.grad.abs().sum() > 0 and net.body[0].weight.grad.abs().sum() > 0
    torch.testing.assert_close(g.action.detach(), a.action)
    vp = DiscreteSchedule.vp(5)
    torch.testing.assert_close(
        ddpm_sample(model, vp, (5, 2, 3), noise=noise[:5]), ddpm_sample(model, vp, (5, 2, 3), noise=noise[:5])
    )
    x = ddim_sample(net.conditioned(obs), vp, (5, 2, 3), 3, generator=_gen(1), requires_grad=True)
    y = ddpm_sample(net.conditioned(obs), vp, (5, 2, 3), generator=_gen(1), requires_grad=True)
    assert x.requires_grad and y.requires_grad
    assert not ddpm_sample(model, vp, (5, 2, 3), generator=_gen(1)).requires_grad


class OracleEps:
    """Exact E[eps | x_k] for 1-D data N(m, s^2) under a discrete schedule."""

    def __init__(self, sched: DiscreteSchedule, m: float, s: float) -> None:
        self.sched, self.m, self.s = sched, m, s

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.sched.alpha_bar[self.sched.step_index(t)]
        return (1 - ab).sqrt() * (x - ab.sqrt() * self.m) / (ab * self.s**2 + 1 - ab)


def _oracle_output_law(sched: DiscreteSchedule, m: float, s: float, sampler: str, steps: int) -> tuple[float, float]:
    """Exact mean / std of the sampler's output with the oracle: every step is affine in x."""
    mean, var = 0.0, 1.0
    if sampler == "ddpm":  # Ho et al. Alg. 2 with the fixed posterior variance
        for k in range(sched.num_steps - 1, -1, -1):
            ab = sched.alpha_bar[k].item()
            e_a = math.sqrt(1 - ab) / (ab * s**2 + 1 - ab)  # eps_hat = e_a x + e_b
            e_b = -e_a * math.sqrt(ab) * m
            x0_a, x0_b = (1 - math.sqrt(1 - ab) * e_a) / math.sqrt(ab), -math.sqrt(1 - ab) * e_b / math.sqrt(ab)
            c1, c2 = sched.posterior_mean_coef1[k].item(), sched.posterior_mean_coef2[k].item()
            gain = c1 * x0_a + c2
            mean, var = gain * mean + c1 * x0_b, gain**2 * var
            if k > 0:
                var += math.exp(sched.posterior_log_variance[k].item())
        return mean, math.sqrt(var)
    times = sched.sampling_times(steps)  # DDIM, eta = 0
    for i, t in enumerate(times):
        ab = sched.alpha_bar[sched.step_index(t)].item()
        al, sg = math.sqrt(ab), math.sqrt(1 - ab)
        e_a = sg / (ab * s**2 + 1 - ab)
        e_b = -e_a * al * m
        x0_a, x0_b = (1 - sg * e_a) / al, -sg * e_b / al
        if i + 1 == len(times):
            return x0_a * mean + x0_b, abs(x0_a) * math.sqrt(var)
        ab_n = sched.alpha_bar[sched.step_index(times[i + 1])].item()
        gain = math.sqrt(ab_n) * x0_a + math.sqrt(1 - ab_n) * e_a
        mean, var = gain * mean + math.sqrt(ab_n) * x0_b + math.sqrt(1 - ab_n) * e_b, gain**2 * var
    raise AssertionError("unreachable")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_oracle_denoiser_gives_the_exact_output_law(sampler):
    """With the exact E[eps | x_k] of Gaussian data the output is Gaussian with a law computed
    step by step (this checks the algorithm exactly). DDIM's law is close to the data's; the
    small gaps (x_T ~ N(0, 1) although alpha_bar_K > 0, 25 steps, DDPM's fixed posterior
    variance) are what the recursion predicts, not sampler errors."""
    sched = DiscreteSchedule.vp(50).double()
    m, s = 0.3, 0.5
    model = OracleEps(sched, m, s)
    M = 20_000
    if sampler == "ddpm":
        x = ddpm_sample(model, sched, (M, 1), clip_denoised=False, generator=_gen(6))
    else:
        x = ddim_sample(model, sched, (M, 1), 25, clip_denoised=False, generator=_gen(6))
    mean, std = _oracle_output_law(sched, m, s, sampler, 25)
    assert abs(x.mean().item() - mean) < 4 * std / math.sqrt(M)
    assert abs(x.std().item() / std - 1) < 4 * math.sqrt(0.5 / M)
    if sampler == "ddim":
        assert abs(mean - m) < 0.02 and abs(std / s - 1) < 0.1


def test_ddpm_clips_to_the_action_box():
    sched = DiscreteSchedule.linear(10)
    x = ddpm_sample(lambda x, t: -10 * x, sched, (256, 2, 3), generator=_gen(7))
    assert x.shape == (256, 2, 3) and x.abs().max() <= 1
    y = ddim_sample(lambda x, t: -10 * x, sched, (256, 3), 4, generator=_gen(7))
    assert y.abs().max() <= 1


def test_ou_chain_matches_closed_form_ou_marginals() -> None:
    """The fixed-horizon chain approximates the OU SDE da = -beta a dt + eta sqrt(2 beta) dB:
    (1) the forward Euler-Maruyama variance recursion v_h = (1 - r_h)^2 v_{h-1} + 2 eta^2 r_h
    converges to eta^2 (1 - e^{-2B(t)}) + e^{-2B(t)} v_0 whatever H, with the same T;
    (2) the reverse chain with the exact Gaussian score -a / v(t) maps a_H ~ N(0, eta^2) back
    to the data variance v_0, and passes through v(t_h) on the way."""
    from dmarl.diffusion.schedules import OUSchedule

    eta, v0, T = 1.5, 0.25, 6.0
    for H in (64, 4096):
        sched = OUSchedule(H, T).double()
        v = v0
        for r in sched.ou_rates().tolist():
            v = (1 - r) ** 2 * v + 2 * eta**2 * r
        _, closed = sched.marginal_mean_var(torch.tensor(T), eta, v0)
        assert v == pytest.approx(closed.item(), rel=0.05 if H == 64 else 1e-3)
    sched = OUSchedule(400, T).double()

    def exact_score(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, var = sched.marginal_mean_var(t * T, eta, v0)  # network time t = t_h / T
        return -a / var

    M = 40_000
    out = ou_sample(exact_score, sched, (M, 1), eta=eta, squash=False, generator=_gen(7), return_chain=True)
    assert abs(out.action.var().item() / v0 - 1) < 0.05
    mid = sched.num_steps // 4  # a_h at t_h = h T / H
    _, v_mid = sched.marginal_mean_var(torch.tensor(mid * T / sched.num_steps), eta, v0)
    assert abs(out.chain[mid].var().item() / v_mid.item() - 1) < 0.05
