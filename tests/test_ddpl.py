"""DDPL (paper 002): ISSM wiring, per-agent independence, the Gaussian projection (Theorem 3.1)
on a closed form, the DecSPG toy game, the success-rate metric, and a slow learning check."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dmarl.algorithms.ddpl import DDPL, reverse_kl_projection_loss
from dmarl.envs import decspg_game as game
from dmarl.envs.factory import make_env
from torch import Tensor, nn

from dmarl.data.batch import Batch
from dmarl.diffusion.losses import issm_weights_kl, solve_issm_eta
from dmarl.errors import UserError
from dmarl.runners.evaluation import evaluation_metrics

from conftest import run_online_in_process

CPU = torch.device("cpu")


def _ddpl(n_agents: int = 2, **kwargs: object) -> DDPL:
    spec = make_env("toy/decspg_game", 1, n_agents=n_agents).spec
    defaults = {"hidden": (32, 32), "time_dim": 8, "diffusion_steps": 10, "issm_samples": 8}
    return DDPL(spec, CPU, **{**defaults, **kwargs})


class LinearQ(nn.Module):
    """A closed-form critic with DDPL's interface: min_q(cond, a) = c_i a_i per agent."""

    def __init__(self, c: Tensor) -> None:
        super().__init__()
        self.c = nn.Parameter(c)

    def min_q(self, cond: Tensor, action: Tensor) -> Tensor:
        return self.c * action[..., 0]


def _start_batch(n_agents: int, size: int) -> Batch:
    obs = torch.zeros(size, n_agents, 3)
    obs[..., 0] = 1.0
    state = obs[:, 0]
    return Batch(obs=obs, state=state, actions=torch.zeros(size, n_agents, 1), reward=torch.zeros(size),
                 next_obs=obs, next_state=state, terminated=torch.ones(size))


def test_issm_weights_sum_to_one_per_state_and_carry_no_gradient():
    torch.manual_seed(0)
    algo = _ddpl(n_agents=2)
    batch = _start_batch(2, 16)
    loss, w = algo._issm_loss(algo.policy_cond(batch.obs), algo.critic_cond(batch.obs, batch.state))
    assert w.shape == (16, 8, 2)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(16, 2))
    assert not w.requires_grad and loss.requires_grad
    algo._policy_update(batch)  # the critic gets no gradient from the policy step
    assert all(p.grad is None for p in algo.critic.parameters())


def test_issm_weights_tilt_a_standard_normal_to_eta_c_and_updates_move_the_policy():
    """pi_k = N(0, 1), Q = c a: the weighted mean of the K samples of a state is the mean of
    pi_k exp(eta Q) = N(eta c, 1), i.e. eta c (+- 4 MC s.e.). Policy updates through the
    algorithm's own path (K samples of its policy, Q = c a) move the sampled mean toward the
    sign of c, against the same 20 updates (same draws) with Q = 0 (one Adam step alone moves
    it by < 0.02, below what the sampled mean resolves)."""
    torch.manual_seed(1)
    eta, c = 0.5, torch.tensor([1.0, -2.0])
    algo = _ddpl(n_agents=2, eta=eta, issm_samples=4096)
    algo.critic = LinearQ(c)
    batch = _start_batch(2, 4)
    a0 = torch.randn(4, 4096, 2, 1)
    _, w = algo._issm_loss(algo.policy_cond(batch.obs), algo.critic_cond(batch.obs, batch.state), a0=a0)
    tilted = (w * a0[..., 0]).sum(dim=1)  # [4 states, 2 agents]
    se = math.sqrt(math.exp((eta * c.abs().max().item()) ** 2) / 4096)  # weighted-mean s.e. bound
    assert torch.all((tilted - eta * c).abs() < 4 * se + 0.05)

    shifts = {}
    for slope in (1.0, 0.0, -1.0):  # the same draws in every run; only Q differs
        torch.manual_seed(2)
        algo = _ddpl(n_agents=2, eta=5.0, issm_samples=64, lr=3e-3, lr_end=3e-3)
        algo.critic = LinearQ(torch.tensor([slope, slope]))
        cond = algo.policy_cond(_start_batch(2, 4000).obs)
        before = algo.sample(cond, torch.Generator().manual_seed(7)).mean().item()
        for step in range(20):
            torch.manual_seed(100 + step)
            algo._policy_update(_start_batch(2, 64))
        shifts[slope] = algo.sample(cond, torch.Generator().manual_seed(7)).mean().item() - before
    assert shifts[1.0] - shifts[0.0] > 0.2 and shifts[-1.0] - shifts[0.0] < -0.2


def _agent_grads(algo: DDPL, q_scale: Tensor, a0: Tensor) -> list[Tensor]:
    """Per-agent gradient of the ISSM loss (agent-stacked parameters, agent i = slice i)."""
    algo.critic = LinearQ(q_scale)
    batch = _start_batch(3, 8)
    algo.policy.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # same t and noise draws in every call
    loss, _ = algo._issm_loss(algo.policy_cond(batch.obs), algo.critic_cond(batch.obs, batch.state), a0=a0)
    loss.backward()
    stacked = [p for p in algo.policy.parameters() if p.dim() >= 2 and p.shape[0] == 3]
    assert sum(p.numel() for p in stacked) == sum(p.numel() for p in algo.policy.parameters() if p.requires_grad)
    return [torch.cat([p.grad[i].flatten() for p in stacked]) for i in range(3)]


def test_each_agent_loss_uses_only_its_own_q_and_its_own_samples():
    torch.manual_seed(3)
    algo = _ddpl(n_agents=3, issm_samples=16)
    a0 = torch.rand(8, 16, 3, 1) * 2 - 1
    base = _agent_grads(algo, torch.tensor([1.0, 2.0, -1.0]), a0)
    other_q = _agent_grads(algo, torch.tensor([1.0, 2.0, 5.0]), a0)  # agent 2's Q changes
    a0_changed = a0.clone()
    a0_changed[..., 2, :] = torch.rand(8, 16, 1)  # agent 2's samples change
    other_samples = _agent_grads(algo, torch.tensor([1.0, 2.0, -1.0]), a0_changed)
    for changed in (other_q, other_samples):
        for i in (0, 1):
            torch.testing.assert_close(changed[i], base[i], rtol=0, atol=1e-7)
        assert (changed[2] - base[2]).abs().max() > 1e-4


def _gaussian_kl(m1: Tensor, s1: Tensor, m2: float, s2: float) -> Tensor:
    """KL(N(m1, s1^2) || N(m2, s2^2))."""
    return math.log(s2) - torch.log(s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def test_gaussian_projection_decreases_the_reverse_kl_to_its_closed_form_target():
    """pi_k = N(0, 1), Q(a) = -(a - m)^2 / (2 s^2): pi_k exp(eta Q) / Z = N(mu*, v*) with
    1/v* = 1 + eta / s^2, mu* = v* eta m / s^2. Gradient steps on the projection loss drive
    KL(pi_theta || target) from its start to ~0 (the target is Gaussian)."""
    torch.manual_seed(4)
    eta, m, s = 1.0, 0.6, 0.5
    var = 1.0 / (1.0 + eta / s**2)
    mu = var * eta * m / s**2
    mean = torch.tensor([0.3], requires_grad=True)
    log_std = torch.tensor([math.log(0.8)], requires_grad=True)
    anchor = (torch.zeros(1), torch.zeros(1))
    opt = torch.optim.Adam([mean, log_std], lr=0.02)
    kls = []
    for _ in range(600):
        kls.append(_gaussian_kl(mean, log_std.exp(), mu, math.sqrt(var)).item())
        loss = reverse_kl_projection_loss(
            mean.expand(256, 1), log_std.expand(256, 1), lambda a: -((a[..., 0] - m) ** 2) / (2 * s**2), eta, anchor
        ).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert kls[0] > 0.3 and kls[-1] < 0.01
    assert np.mean(kls[-50:]) < np.mean(kls[:50]) / 20


def _start_q(a: Tensor) -> Tensor:
    """The toy game's start-state reward r0 (exact Q before the goal is ever reached), in torch."""
    x = a[..., 0]
    return game.START_REWARD * torch.exp(-0.5 * (x / game.START_WIDTH) ** 2) + game.SIDE_REWARD * torch.exp(
        -0.5 * ((x.abs() - game.A_STAR) / game.SIDE_WIDTH) ** 2
    )


def test_gaussian_projection_keeps_zero_mean_and_shrinks_the_variance_on_a_bump_at_zero():
    """Theorem 3.1's failure mode with the algorithm's own step (anchor = the current policy):
    Q symmetric with its peak at 0 keeps a zero-mean Gaussian at mean ~0 and shrinks its std."""
    torch.manual_seed(6)
    mean = torch.zeros(1, requires_grad=True)
    log_std = torch.tensor([math.log(0.3)], requires_grad=True)
    opt = torch.optim.SGD([mean, log_std], lr=0.05)
    stds = []
    for _ in range(300):
        loss = reverse_kl_projection_loss(
            mean.expand(512, 1), log_std.expand(512, 1),
            _start_q, 1.0, (mean.detach(), log_std.detach()),
        ).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        stds.append(log_std.exp().item())
    assert abs(mean.item()) < 0.05
    assert stds[-1] < 0.5 * 0.3


def test_decspg_game_dynamics_success_absorbing_and_goal():
    n, e = 2, 4000
    env = make_env("toy/decspg_game", e, n_agents=n)
    obs, state = env.reset(seed=0)
    assert obs.shape == (e, n, 3) and np.all(state[:, game.START] == 1)
    # all at 0: the strong bump, never success, absorbing fail (terminal, zero value)
    _, state, reward, term, trunc, info = env.step(np.zeros((e, n, 1), np.float32))
    np.testing.assert_allclose(reward, game.start_reward(np.zeros(1))[0], rtol=1e-6)
    assert term.all() and not trunc.any() and not info["success"].any()
    assert np.all(info["final_state"][:, game.FAIL] == 1) and np.all(state[:, game.START] == 1)
    # all at +-a*: each agent succeeds w.p. SUCCESS_PROB, the goal needs all of them
    signs = np.where(np.arange(e * n) % 2 == 0, 1.0, -1.0).reshape(e, n, 1)
    _, state, reward, term, _, info = env.step((game.A_STAR * signs).astype(np.float32))
    reached = ~term
    assert abs(reached.mean() - game.SUCCESS_PROB**n) < 4 * math.sqrt(0.25 / e)
    assert not info["success"].any() and np.all(state[reached, game.GOAL] == 1)
    # from the goal: its own optimal action pays GOAL_REWARD and ends the episode with success
    actions = np.full((e, n, 1), game.GOAL_ACTION, np.float32)
    actions[~reached] = 0.0
    _, state, reward, term, _, info = env.step(actions)
    np.testing.assert_allclose(reward[reached], game.GOAL_REWARD, rtol=1e-6)
    assert term.all() and np.array_equal(info["success"], reached)
    np.testing.assert_allclose(info["episode_return"][reached], game.start_reward(np.array([game.A_STAR]))[0]
                               + game.GOAL_REWARD, rtol=1e-5)
    # just outside the window: never
    env.reset(seed=1)
    _, _, _, term, _, _ = env.step(np.full((e, n, 1), game.A_STAR - game.SUCCESS_WINDOW - 0.01, np.float32))
    assert term.all()


class _Scripted:
    """Plays a fixed action in the start state and the goal's optimal action in the goal."""

    def __init__(self, action: float) -> None:
        self.action = action

    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        at_goal = obs[:, :, game.GOAL:game.GOAL + 1] > 0.5
        return np.where(at_goal, game.GOAL_ACTION, self.action).astype(np.float32)


def test_evaluation_reports_the_success_rate_from_info():
    env = make_env("toy/decspg_game", 50, n_agents=2)
    metrics = evaluation_metrics(_Scripted(game.A_STAR), env, 2000, 0, "eval")
    p = game.SUCCESS_PROB**2
    assert abs(metrics["eval/success_rate"] - p) < 4 * math.sqrt(p * (1 - p) / 2000)
    assert evaluation_metrics(_Scripted(0.0), env, 100, 0, "eval")["eval/success_rate"] == 0.0
    bandit = _Scripted(0.0)
    bandit.act = lambda obs, explore: np.zeros((obs.shape[0], 2, 1), np.float32)  # no success flag in its info
    assert "eval/success_rate" not in evaluation_metrics(bandit, make_env("toy/bandit", 5), 5, 0, "eval")


def test_bad_config_names_the_field():
    with pytest.raises(UserError, match="policy_class"):
        _ddpl(policy_class="flow")
    with pytest.raises(UserError, match="obs_input"):
        _ddpl(obs_input="global")
    with pytest.raises(UserError, match="eta_target_kl"):
        _ddpl(eta_target_kl=math.log(8))  # K = 8: KL(w || uniform) < log K
    with pytest.raises(UserError, match="sampling_policy_interval"):
        _ddpl(sampling_policy_interval=0)
    with pytest.raises(UserError, match="critic_lr"):
        _ddpl(critic_lr=0.0)


def test_checkpoint_round_trip_and_local_inputs():
    torch.manual_seed(8)
    for obs_input in ("state", "local"):
        for policy_class in ("diffusion", "gaussian"):
            algo = _ddpl(obs_input=obs_input, policy_class=policy_class, policy_delay=1)
            metrics = algo.update(_start_batch(2, 32))
            assert all(math.isfinite(v) for v in metrics.values())
            clone = _ddpl(obs_input=obs_input, policy_class=policy_class)
            clone.load_state_dict(algo.state_dict())
            for a, b in zip(algo.policy.parameters(), clone.policy.parameters()):
                torch.testing.assert_close(a, b)
            assert clone.updates == 1


def test_issm_weights_kl_matches_the_two_sample_closed_form():
    """K = 2, Qbar = (0, d): w = (1, e^{eta d}) / (1 + e^{eta d}), KL(w || uniform) = log 2 + sum w log w."""
    d, eta = 0.7, 3.0
    p = 1.0 / (1.0 + math.exp(-eta * d))
    expected = math.log(2) + p * math.log(p) + (1 - p) * math.log(1 - p)
    kl = issm_weights_kl(torch.tensor([[0.0, d]]), eta, dim=-1)
    assert abs(kl.item() - expected) < 1e-6


def test_solved_eta_hits_the_target_kl_and_matches_brute_force():
    """Qbar = c_s a on a fixed grid of K = 8 actions, one slope c_s per state: the solved eta gives
    mean KL(w || uniform) = target, and equals the best eta of a dense log grid (brute force)."""
    a = torch.linspace(-1, 1, 8)
    q = torch.tensor([0.05, 0.2, 1.0])[:, None] * a  # [3 states, K]
    grid = torch.logspace(-2, 4, 6001).tolist()
    for target in (0.1, 0.5, 1.0, 1.5):
        eta = solve_issm_eta(q, target, dim=-1)
        assert abs(issm_weights_kl(q, eta, dim=-1).mean().item() - target) < 1e-5
        brute = min(grid, key=lambda e: abs(issm_weights_kl(q, e, dim=-1).mean().item() - target))
        assert abs(math.log(eta) - math.log(brute)) < 3e-3
    assert solve_issm_eta(torch.zeros(3, 8), 0.5, eta_bounds=(0.1, 50.0)) == 50.0  # flat Q: KL 0 for every eta
    with pytest.raises(ValueError, match="target_kl"):
        solve_issm_eta(q, math.log(8))


def test_fixed_eta_is_kept_and_target_kl_sets_eta_from_the_particles():
    torch.manual_seed(9)
    fixed = _ddpl(n_agents=2, eta=3.0)
    fixed.critic = LinearQ(torch.tensor([1.0, -1.0]))
    assert fixed._policy_update(_start_batch(2, 16))["policy/eta"] == 3.0
    for policy_class in ("diffusion", "gaussian"):  # the same eta rule for both classes
        algo = _ddpl(n_agents=2, policy_class=policy_class, eta_target_kl=0.5, sampling_policy_interval=4)
        algo.critic = LinearQ(torch.tensor([1.0, -1.0]))
        batch = _start_batch(2, 16)
        cond, critic_cond = algo.policy_cond(batch.obs), algo.critic_cond(batch.obs, batch.state)
        k = algo.issm_samples
        cond_k = cond.unsqueeze(1).expand(16, k, *cond.shape[1:])
        torch.manual_seed(10)
        particles = algo.sample(cond_k, policy=algo.policy)  # pi_k = the policy at the first update
        torch.manual_seed(10)
        eta = algo._policy_update(batch)["policy/eta"]
        assert eta == algo.eta != 1.0
        q = algo.critic.min_q(critic_cond.unsqueeze(1).expand(16, k, *critic_cond.shape[1:]), particles)
        assert abs(issm_weights_kl(q, eta, dim=1).mean().item() - 0.5) < 1e-4


def test_sampling_policy_is_frozen_and_refreshed_exactly_every_m_policy_updates():
    torch.manual_seed(11)
    m = 3
    algo = _ddpl(n_agents=2, sampling_policy_interval=m, lr=1e-2, lr_end=1e-2)
    algo.critic = LinearQ(torch.tensor([1.0, -1.0]))

    def flat(net: nn.Module) -> Tensor:
        return torch.cat([p.detach().flatten().clone() for p in net.parameters()])

    assert algo.sampling_policy is not algo.policy
    for step in range(8):
        before_policy, before_sampling = flat(algo.policy), flat(algo.sampling_policy)
        algo._policy_update(_start_batch(2, 16))
        if step % m == 0:  # refreshed from the policy as it was before this update
            torch.testing.assert_close(flat(algo.sampling_policy), before_policy, rtol=0, atol=0)
        else:
            torch.testing.assert_close(flat(algo.sampling_policy), before_sampling, rtol=0, atol=0)
        assert not torch.equal(flat(algo.policy), before_policy)  # the trained policy moves every update
    # particles come from the frozen copy, not from the trained policy
    cond = algo.policy_cond(_start_batch(2, 64).obs).unsqueeze(1).expand(64, 8, 2, 6)
    critic_k = torch.zeros(64, 8, 2, 3)
    torch.manual_seed(12)
    a0, q = algo._particles(cond, critic_k)
    torch.manual_seed(12)
    torch.testing.assert_close(a0, algo.sample(cond, policy=algo.sampling_policy))
    torch.manual_seed(12)
    assert not torch.allclose(a0, algo.sample(cond, policy=algo.policy))
    torch.testing.assert_close(q, a0[..., 0] * torch.tensor([1.0, -1.0]))


def test_particle_noise_is_added_to_the_samples_before_weighting_and_clipped_to_the_box():
    """Same draws with and without noise: the difference is N(0, sigma^2) where no clipping
    happened, every particle stays in [-1, 1], and Qbar is evaluated at the noisy particle."""
    sigma = 0.2
    noisy, clean = (_ddpl(n_agents=2, particle_noise=s) for s in (sigma, 0.0))
    clean.policy.load_state_dict(noisy.policy.state_dict())
    for algo in (noisy, clean):
        algo.critic = LinearQ(torch.tensor([1.0, 2.0]))
    cond = noisy.policy_cond(_start_batch(2, 500).obs).unsqueeze(1).expand(500, 8, 2, 6)
    critic_k = torch.zeros(500, 8, 2, 3)
    torch.manual_seed(13)
    a_noisy, q_noisy = noisy._particles(cond, critic_k)
    torch.manual_seed(13)
    a_clean, _ = clean._particles(cond, critic_k)
    assert a_noisy.abs().max() <= 1.0
    inside = (a_noisy.abs() < 1.0) & (a_clean.abs() < 1.0)
    diff = (a_noisy - a_clean)[inside]
    assert abs(diff.std().item() - sigma) < 0.01 and abs(diff.mean().item()) < 0.01
    torch.testing.assert_close(q_noisy, a_noisy[..., 0] * torch.tensor([1.0, 2.0]))


def test_checkpoint_keeps_the_sampling_policy_and_eta_and_refuses_old_checkpoints():
    torch.manual_seed(14)
    kwargs = {"sampling_policy_interval": 5, "eta_target_kl": 0.5, "policy_delay": 1}
    algo = _ddpl(**kwargs)
    for _ in range(3):
        algo.update(_start_batch(2, 32))
    clone = _ddpl(**kwargs)
    clone.load_state_dict(algo.state_dict())
    for a, b in zip(algo.sampling_policy.parameters(), clone.sampling_policy.parameters()):
        torch.testing.assert_close(a, b)
    assert (clone.policy_updates, clone.eta) == (algo.policy_updates, algo.eta) == (3, algo.eta)
    old = {k: v for k, v in algo.state_dict().items() if k not in ("sampling_policy", "policy_updates", "eta")}
    with pytest.raises(UserError, match="sampling_policy"):
        clone.load_state_dict(old)


def _toy_run(policy_class: str, n_agents: int, seed: int) -> float:
    """One run of gin/experiments/ddpl_toy_decspg_cpu.gin with the online runner; returns the
    final evaluation's success rate."""
    final, _ = run_online_in_process(
        ["gin/experiments/ddpl_toy_decspg_cpu.gin", f"gin/tasks/toy_decspg_game_n{n_agents}.gin"],
        [f"DDPL.policy_class = '{policy_class}'"], seed,
    )
    return final["final/success_rate"]


@pytest.mark.slow
def test_ddpl_reaches_the_goal_of_the_one_agent_game_and_ddpl_gaussian_does_not():
    """Sec. 3.2.1 / Theorem 3.1 extended to DDPL at N = 1 (best policy: 0.9), seeds 0 and 1
    (deterministic on CPU; toy gin of 2026-12-02: seeds 0-4 DDPL 0.835 / 0.745 / 0.79 / 0.655 /
    0.775, DDPL-Gaussian 0 on each). The untrained policy reaches ~0.18; the settings before
    2026-12-02 reached 0.83 / 0.705 on these seeds, the ones before that 0.095 on seed 0."""
    for seed in (0, 1):
        diffusion = _toy_run("diffusion", 1, seed=seed)
        gaussian = _toy_run("gaussian", 1, seed=seed)
        assert diffusion > 0.5, (seed, diffusion)
        assert gaussian < 0.1, (seed, gaussian)


@pytest.mark.slow
def test_ddpl_reaches_the_goal_of_the_two_agent_game_and_ddpl_gaussian_does_not():
    """Sec. 3.2 / Prop. 3.2 extended to DDPL at N = 2 (best policy: 0.81), a regression guard on
    seeds 1 and 2 (0.47 and 0.68 measured): DDPL's seeds 0-4 give 0.02 / 0.47 / 0.68 / 0 / 0.57
    (the claims benchmark is the measurement: two of five seeds still settle on the bump at 0),
    DDPL-Gaussian 0 on each. The earlier settings (target KL 0.3, policy lr 1e-3, 2,000 steps)
    gave 0 on every seed; a broken ISSM (flat or inverted weights) stays near 0."""
    diffusion = [_toy_run("diffusion", 2, seed=seed) for seed in (1, 2)]
    assert min(diffusion) > 0.3 and sum(diffusion) / 2 > 0.45, diffusion
    gaussian = _toy_run("gaussian", 2, seed=1)
    assert gaussian < 0.05, gaussian
