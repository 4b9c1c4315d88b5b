"""Losses against the math: DSM learns a two-mode mixture, ISSM reaches exp(eta Q)-tilted
targets and equals DSM on target samples in expectation, SRPO / temperature / Diffusion-QL."""
from __future__ import annotations

import math

import pytest
import torch

from dmarl.diffusion import (
    VPSDE,
    DiscreteSchedule,
    ScoreMLP,
    action_gradient,
    ddpm_sample,
    denoising_loss,
    diffusion_ql_loss,
    dsm_loss,
    issm_loss,
    issm_weights,
    max_entropy_actor_loss,
    srpo_loss,
    temperature_loss,
)


def _train(net: ScoreMLP, loss_fn, steps: int, lr: float = 3e-3, decay: int = 400) -> None:
    """Adam at ``lr``, linearly decayed to 0 over the last ``decay`` steps."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (steps - i) / decay))
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _mixture_stats(x: torch.Tensor) -> tuple[float, float, float, float]:
    """(mass right of 0, mass in |x| < 0.3, mean of the right mode, mean of the left mode)."""
    return (
        (x > 0).float().mean().item(),
        (x.abs() < 0.3).float().mean().item(),
        x[x > 0].mean().item(),
        x[x < 0].mean().item(),
    )


def test_dsm_learns_both_modes_of_a_mixture_with_their_weights():
    """Data: 0.7 N(0.6, 0.08^2) + 0.3 N(-0.6, 0.08^2). Tolerances: mode weight +-0.05, mode
    means +-0.1, at most 10 % of the mass in the gap |x| < 0.3 (the data has ~0 there; the
    moment-matched Gaussian has ~38 %)."""
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    sched = DiscreteSchedule.cosine(20)
    net = ScoreMLP(1, 0, hidden=(64, 64), time_dim=16, activation="mish")

    def data(n: int) -> torch.Tensor:
        right = (torch.rand(n, 1, generator=g) < 0.7).float()
        return right * 0.6 - (1 - right) * 0.6 + 0.08 * torch.randn(n, 1, generator=g)

    obs = torch.zeros(256, 0)
    _train(net, lambda: dsm_loss(lambda x, t: net(x, t, obs), sched, data(256), generator=g), steps=1400)
    x = ddpm_sample(net.conditioned(torch.zeros(4000, 0)), sched, (4000, 1), generator=g)
    right, gap, m_right, m_left = _mixture_stats(x)
    assert abs(right - 0.7) < 0.05
    assert gap < 0.1
    assert abs(m_right - 0.6) < 0.1 and abs(m_left + 0.6) < 0.1
    ref = data(100_000)
    gauss = ref.mean() + ref.std() * torch.randn(4000, 1, generator=g)
    assert _mixture_stats(gauss)[1] > 0.3  # a Gaussian fit fails the gap criterion


def test_issm_moves_a_standard_normal_policy_to_the_tilted_target():
    """pi_k = N(0, 1), Qbar(a) = c a: pi_{k+1} ~ pi_k exp(eta Qbar) = N(eta c, 1). A model
    trained by ISSM on samples of pi_k only samples mean eta c (+-0.1) and std 0.88 (+-0.08):
    0.88 is the output std of 20-step DDPM with the *exact* denoiser of N(eta c, 1) (its fixed
    posterior variance under-disperses; the recursion of test_samplers._oracle_output_law)."""
    torch.manual_seed(2)
    g = torch.Generator().manual_seed(2)
    eta, c = 0.5, 1.0
    sched = DiscreteSchedule.vp(20)
    net = ScoreMLP(1, 0, hidden=(64, 64), time_dim=16, activation="mish")
    obs = torch.zeros(4, 128, 0)  # 4 states x K = 128 samples per state

    def loss() -> torch.Tensor:
        a0 = torch.randn(4, 128, 1, generator=g)
        return issm_loss(lambda x, t: net(x, t, obs), sched, a0, c * a0[..., 0], eta, generator=g)

    _train(net, loss, steps=1400)
    x = ddpm_sample(net.conditioned(torch.zeros(4000, 0)), sched, (4000, 1), clip_denoised=False, generator=g)
    assert abs(x.mean().item() - eta * c) < 0.1
    assert abs(x.std().item() - 0.88) < 0.08


def _identity_expected_loss(sched: DiscreteSchedule, second_moment: float) -> float:
    """E_{t, eps}||model(alpha a0 + sigma eps) - eps||^2 for model(x, t) = x:
    mean over steps of alpha_bar E[a0^2] + (sigma - 1)^2."""
    ab = sched.alpha_bar.double()
    return (ab * second_moment + ((1 - ab).sqrt() - 1) ** 2).mean().item()


def test_issm_equals_dsm_on_target_samples_in_expectation():
    """DDPL App. B.1: E_{a~pi_k}[w(a) l(a)] = E_{a~pi_{k+1}}[l(a)], w = exp(eta Qbar)/Z, checked
    against a closed form: model(x, t) = x, pi_k = N(0, 1), Qbar = c a, pi_{k+1} = N(eta c, 1)."""
    g = torch.Generator().manual_seed(3)
    sched = DiscreteSchedule.linear(10).double()
    eta, c = 1.0, 1.0
    target = _identity_expected_loss(sched, 1.0 + (eta * c) ** 2)
    wrong = _identity_expected_loss(sched, 1.0)  # plain DSM on pi_k samples
    model = lambda x, t: x  # noqa: E731
    B, K = 256, 1024
    a0 = torch.randn(B, K, 1, generator=g, dtype=torch.float64)
    q = c * a0[..., 0]
    per_state = (issm_weights(q, eta) * denoising_loss(model, sched, a0, generator=g)).sum(-1)
    mean, se = per_state.mean().item(), per_state.std().item() / math.sqrt(B)
    assert abs(mean - target) < 4 * se + 0.02  # 0.02: self-normalisation bias O(1/K)
    assert abs(mean - wrong) > 10 * se
    g2 = torch.Generator().manual_seed(4)
    a_target = eta * c + torch.randn(B * K, 1, generator=g2, dtype=torch.float64)
    dsm = denoising_loss(model, sched, a_target, generator=g2)
    assert abs(dsm.mean().item() - target) < 4 * dsm.std().item() / math.sqrt(B * K)
    g3, g4 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    full = issm_loss(model, sched, a0, q, eta, generator=g3)
    manual = (issm_weights(q, eta) * denoising_loss(model, sched, a0, generator=g4)).sum(-1).mean()
    torch.testing.assert_close(full, manual)


def test_issm_weights_are_self_normalised_and_carry_no_gradient():
    q = torch.randn(3, 5, 2, requires_grad=True)
    w = issm_weights(q, eta=2.0, dim=1)
    torch.testing.assert_close(w.sum(1), torch.ones(3, 2))
    torch.testing.assert_close(w, torch.softmax(2.0 * q.detach(), dim=1))
    assert not w.requires_grad


def test_denoising_loss_formula_discrete_and_vp_sde():
    a0, eps = torch.randn(6, 3), torch.randn(6, 3)
    model = lambda x, t: 0.5 * x + t.unsqueeze(-1)  # noqa: E731
    for sched in (DiscreteSchedule.vp(5), VPSDE()):
        t = torch.full((6,), 0.6)
        alpha, sigma = sched.alpha_sigma(t)
        x_t = alpha[:, None] * a0 + sigma[:, None] * eps
        expected = ((model(x_t, t) - eps) ** 2).sum(-1)
        torch.testing.assert_close(denoising_loss(model, sched, a0, t=t, noise=eps), expected)
    mask = torch.tensor([1.0, 0.0, 1.0])
    masked = denoising_loss(model, VPSDE(), a0, t=t, noise=eps, action_mask=mask)
    torch.testing.assert_close(masked, (((model(x_t, t) - eps) ** 2) * mask).sum(-1))


def test_srpo_loss_gradient_is_weighted_score_minus_q_guidance():
    """d/da of the surrogate = (sigma_t^2 eps_mu(a_t, t) - beta grad_a Q) / B (OMSD Eq. 19-20)."""
    sde = VPSDE().double()
    B, beta = 32, 0.3
    a = torch.randn(B, 2, dtype=torch.float64, requires_grad=True)
    q_fn = lambda x: -((x - 0.5) ** 2).sum(-1)  # noqa: E731
    q_grad = action_gradient(q_fn, a)
    torch.testing.assert_close(q_grad, -2 * (a.detach() - 0.5))
    behaviour = lambda x, t: 2.0 * x  # noqa: E731
    loss = srpo_loss(behaviour, sde, a, q_grad, beta, generator=torch.Generator().manual_seed(0))
    loss.backward()
    g = torch.Generator().manual_seed(0)
    t = sde.sample_t((B,), generator=g, low=0.02, high=0.98)
    z = torch.randn(B, 2, generator=g, dtype=torch.float64)
    assert t.min() >= 0.02 and t.max() <= 0.98
    alpha, sigma = sde.alpha_sigma(t)
    eps = behaviour(alpha[:, None] * a.detach() + sigma[:, None] * z, t)
    torch.testing.assert_close(a.grad, (sigma[:, None] ** 2 * eps - beta * q_grad) / B)


def test_entropy_objectives_and_temperature_direction():
    q, lb = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    assert max_entropy_actor_loss(q, lb, 0.5).item() == pytest.approx((-1 + 1 - 3 - 0) / 2)
    log_alpha = torch.zeros((), requires_grad=True)
    temperature_loss(log_alpha, torch.tensor([-5.0]), target_entropy=-2.0).backward()
    assert log_alpha.grad.item() < 0  # entropy below target: descent raises alpha
    log_alpha.grad = None
    temperature_loss(log_alpha, torch.tensor([1.0]), target_entropy=-2.0).backward()
    assert log_alpha.grad.item() == pytest.approx(3.0)


@pytest.mark.parametrize(
    "objective, expected_grad",
    [
        # d loss / d log_alpha = alpha * d loss / d alpha, alpha = 2, l = -3, H = 4, log p(a_H) = -1.5
        ("sac", 2.0 * (-3.0 - 4.0)),  # alpha (l - H)
        ("paper", 2.0 * (4.0 - -3.0)),  # alpha (H - l): Eq. 15 as printed
        ("dime", 2.0 * (4.0 + -3.0 + -1.5)),  # alpha (H - c), c = -(l + log p(a_H))
    ],
)
def test_temperature_objectives_hand_computed_gradients(objective: str, expected_grad: float) -> None:
    log_alpha = torch.tensor(math.log(2.0), requires_grad=True)
    entropy = torch.tensor([-3.0], requires_grad=True)
    loss = temperature_loss(log_alpha, entropy, 4.0, objective=objective, log_prior=torch.tensor([-1.5]))
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(expected_grad)
    assert loss.item() == pytest.approx(expected_grad)  # loss = alpha * (...), grad wrt log alpha alike
    assert entropy.grad is None  # the entropy estimate is detached


def test_temperature_objective_signs_and_fixed_points() -> None:
    """sac and dime raise alpha below their fixed point and lower it above; Eq. 15 as printed
    lowers alpha for every l < H (always, for H = 4 dim(A) and a squashed policy)."""

    def grad(objective: str, l: float, log_prior: float = 0.0) -> float:
        log_alpha = torch.zeros((), requires_grad=True)
        temperature_loss(log_alpha, torch.tensor([l]), 8.0, objective=objective, log_prior=torch.tensor([log_prior])).backward()
        return log_alpha.grad.item()

    assert grad("sac", 7.0) < 0 < grad("sac", 9.0) and grad("sac", 8.0) == 0.0
    assert grad("paper", 7.0) > 0 > grad("paper", 9.0)  # descent lowers alpha below H
    assert grad("paper", -1e3) > 0
    # dime: fixed point l + log p(a_H) = -H
    assert grad("dime", -5.0, -3.0) == 0.0
    assert grad("dime", -6.0, -3.0) < 0 < grad("dime", -4.0, -3.0)
    with pytest.raises(ValueError, match="log_prior"):
        temperature_loss(torch.zeros(()), torch.zeros(1), 1.0, objective="dime")
    with pytest.raises(ValueError, match="valid"):
        temperature_loss(torch.zeros(()), torch.zeros(1), 1.0, objective="other")


def test_diffusion_ql_loss_normalises_q_by_its_magnitude():
    q = torch.tensor([2.0, -4.0], requires_grad=True)
    loss = diffusion_ql_loss(torch.tensor(0.5), q, eta=2.0)
    assert loss.item() == pytest.approx(0.5 - 2.0 * (-1.0) / 3.0)
    loss.backward()
    torch.testing.assert_close(q.grad, torch.full((2,), -2.0 / 2 / 3.0))  # scale is detached
    other = torch.tensor([10.0, 10.0])
    assert diffusion_ql_loss(torch.tensor(0.0), q, 1.0, q_scale=other).item() == pytest.approx(0.1)
