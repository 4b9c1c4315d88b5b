"""OMAD unit tests on small shapes: critic target, policy gradients through every agent and
every denoising step, temperature direction, target-policy averaging, checkpoint round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dmarl.algorithms.omad import OMAD
from dmarl.data.batch import Batch
from dmarl.diffusion.samplers import ou_sample
from dmarl.diffusion.score_networks import AgentBatchedScoreMLP
from dmarl.errors import UserError
from dmarl.envs.base import EnvSpec

SPEC = EnvSpec(
    name="test", family="test", agent_ids=("a", "b", "c"), obs_dims=(4, 3, 4), action_dims=(2, 1, 2),
    state_dim=5, episode_limit=10, reward_convention="sum",
)


def make(**kwargs: object) -> OMAD:
    torch.manual_seed(0)
    defaults = dict(critic_hidden=(32, 32), actor_hidden=(16, 16), time_dim=8, diffusion_steps=4, bn_warmup=10, lr=1e-3)
    return OMAD(SPEC, torch.device("cpu"), **{**defaults, **kwargs})


def batch(b: int = 16, terminated: float = 0.0, reward: float = 1.0) -> Batch:
    g = torch.Generator().manual_seed(1)
    actions = torch.rand(b, 3, 2, generator=g) * 2 - 1
    actions *= torch.as_tensor(SPEC.action_mask(), dtype=torch.float32)
    return Batch(
        obs=torch.randn(b, 3, 4, generator=g), state=torch.randn(b, 5, generator=g), actions=actions,
        reward=torch.full((b,), reward), next_obs=torch.randn(b, 3, 4, generator=g),
        next_state=torch.randn(b, 5, generator=g), terminated=torch.full((b,), terminated),
    )


def target_mean(algo: OMAD, data: Batch) -> torch.Tensor:
    _, target, _ = algo._critic_forward(data)
    return (target * algo.critics[0].support).sum(-1)


def test_critic_target_includes_entropy_bonus_and_done_mask() -> None:
    algo = make(v_max=1000.0)
    last = algo.critics[0].net.linears[-1]
    with torch.no_grad():  # Z(s', a') = point mass on the atom 0: target = r + gamma (1 - d) alpha sum_i l_i
        last.weight.zero_()
        last.bias.fill_(-1e4)
        last.bias[50] = 0.0
    data = batch(reward=1.0)
    torch.manual_seed(3)
    _, _, (next_lb, _) = algo._critic_forward(data)
    torch.manual_seed(3)
    low = target_mean(algo, data)
    with torch.no_grad():
        algo.log_alpha.fill_(np.log(2.0))
    torch.manual_seed(3)
    high = target_mean(algo, data)
    # (C51 projection keeps the mean of a distribution inside the support)
    assert torch.allclose(low, 1.0 + algo.gamma * next_lb, atol=1e-3)
    assert torch.allclose(high, 1.0 + algo.gamma * 2.0 * next_lb, atol=1e-3)
    assert not torch.allclose(next_lb, torch.zeros_like(next_lb))
    # terminated: the target is the reward alone, whatever alpha and Z(s', a') are
    done = target_mean(algo, batch(reward=1.0, terminated=1.0))
    assert torch.allclose(done, torch.ones_like(done), atol=1e-5)


def test_policy_gradient_reaches_every_agent_through_every_step() -> None:
    algo = make(diffusion_steps=4)
    outputs: list[torch.Tensor] = []
    denoise = algo.policy.net.denoise

    def recording(
        x: torch.Tensor, t: torch.Tensor | None, cond: torch.Tensor, time_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = denoise(x, t, cond, time_features)
        if out.requires_grad:
            out.retain_grad()
            outputs.append(out)
        return out

    algo.policy.net.denoise = recording  # type: ignore[method-assign]
    algo._policy_update(batch())
    assert len(outputs) == 4, "one score evaluation per denoising step"
    mask = torch.as_tensor(SPEC.action_mask())
    for h, out in enumerate(outputs):
        grad = out.grad.abs().sum(0)  # [N, A]
        assert (grad[mask] > 0).all(), f"step {h}: some agent/action gets no gradient"
    for name, p in algo.policy.named_parameters():
        if p.grad is not None and p.dim() == 3:  # stacked per-agent weights [N, in, out]
            assert (p.grad.abs().flatten(1).sum(1) > 0).all(), name


@pytest.mark.parametrize("objective", ["dime", "paper", "sac"])
@pytest.mark.parametrize("offset", [+100.0, -100.0])
def test_temperature_direction_per_objective(objective: str, offset: float) -> None:
    """dime / sac raise alpha when the statistic is below its fixed point; Eq. 15 as printed
    ('paper') lowers alpha whenever l < H_target, i.e. always for a squashed policy."""
    algo = make(temperature=objective)
    assert algo.target_entropy == {"dime": 4.0, "paper": 4.0, "sac": -4.0}[objective] * SPEC.joint_action_dim
    log_prior = torch.full((8,), -3.0)
    fixed_point = {"dime": -algo.target_entropy + 3.0, "paper": algo.target_entropy, "sac": algo.target_entropy}
    lb = torch.full((8,), fixed_point[objective] + offset)
    before = algo.alpha.item()
    for _ in range(5):
        algo._temperature_update(lb, log_prior)
    after = algo.alpha.item()
    rises = (offset < 0) if objective != "paper" else (offset > 0)
    assert (after > before) if rises else (after < before)
    # DIME's statistic is l + log p(a_H): the same l with a lower log p(a_H) lowers alpha less
    if objective == "dime":
        other = make(temperature="dime")
        other._temperature_update(torch.full((8,), fixed_point["dime"] + 1.0), torch.full((8,), -3.0))
        low = make(temperature="dime")
        low._temperature_update(torch.full((8,), fixed_point["dime"] + 1.0), torch.full((8,), -5.0))
        assert low.alpha.item() > other.alpha.item()


def test_alpha_lr_zero_and_fixed_alpha_keep_alpha() -> None:
    """`alpha_lr or lr` turned 0 into the actor lr; now 0 freezes alpha, None means lr, and the
    default is DIME's 1e-3 whatever lr is."""
    assert make(lr=7e-6).alpha_optim.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert make(lr=7e-6, alpha_lr=None).alpha_optim.param_groups[0]["lr"] == pytest.approx(7e-6)
    assert make(lr=7e-6, critic_lr=0.0).critic_optim.param_groups[0]["lr"] == 0.0
    frozen = make(alpha_lr=0.0, policy_delay=1)
    fixed = make(auto_alpha=False, alpha=0.1, policy_delay=1)
    for _ in range(3):
        frozen.update(batch())
        m = fixed.update(batch())
    assert frozen.alpha.item() == pytest.approx(1.0)
    assert fixed.alpha.item() == pytest.approx(0.1) and m["train/alpha"] == pytest.approx(0.1)
    with pytest.raises(UserError, match="auto_alpha"):
        make(alpha=0.1)
    with pytest.raises(UserError, match="temperature"):
        make(temperature="bogus")


def test_diffusion_horizon_is_fixed_across_steps() -> None:
    totals = {h: make(diffusion_steps=h).schedule.ou_rates().sum().item() for h in (2, 8, 16)}
    assert totals[2] == pytest.approx(totals[8], rel=1e-6) and totals[16] == pytest.approx(totals[8], rel=1e-6)
    legacy = {h: make(diffusion_steps=h, ou_schedule="ddpm").schedule.ou_rates().sum().item() for h in (2, 16)}
    assert legacy[16] - legacy[2] > 1.0  # the old chain's total rate grew with H
    assert make(diffusion_horizon=1.0).schedule.ou_rates().sum().item() < totals[8] / 2


@pytest.mark.parametrize("norm", ["batchrenorm", "batchnorm"])
def test_train_and_eval_actions_match_once_stats_settle(norm: str) -> None:
    """The observation is normalised once per sample, so once the running statistics have
    settled the train-mode chain (batch statistics) and the eval-mode chain (running ones)
    give the same actions for the same noise. Normalising the noisy action at every chain step
    with statistics pooled over all H steps (the old actor) fails this."""
    algo = make(actor_input_norm=norm, actor_norm_momentum=0.9, actor_norm_warmup=10**9)
    g = torch.Generator().manual_seed(5)
    scale, shift = torch.tensor([3.0, 0.5, 2.0, 1.0]), torch.tensor([1.0, -2.0, 0.0, 4.0])
    obs = lambda n: torch.randn(n, 3, 4, generator=g) * scale + shift  # noqa: E731
    algo.policy.train()
    with torch.no_grad():
        for _ in range(200):
            algo.policy.normalise(obs(4096))
    big = obs(20_000)
    noise = torch.randn(algo.schedule.num_steps + 1, 20_000, 3, 2, generator=g)
    with torch.no_grad():
        algo.policy.net.body[-1].weight.mul_(1e3)  # a score that depends strongly on obs
        algo.policy.train()
        a_train = _chain(algo, big, noise)
        algo.policy.eval()
        a_eval = _chain(algo, big, noise)
    assert (a_train - a_eval).abs().max() < 0.05
    # the old per-step pooled normalisation of the noisy action does not settle
    old = AgentBatchedScoreMLP(3, 2, 4, hidden=(16, 16), time_dim=8, input_norm=True, out_init_scale=1.0)
    with torch.no_grad():
        old.train()
        for _ in range(50):
            _chain(algo, obs(4096), None, net=old)
        a_train = _chain(algo, big, noise, net=old)
        old.eval()
        a_eval = _chain(algo, big, noise, net=old)
    assert (a_train - a_eval).abs().max() > 0.2


def _chain(
    algo: OMAD, obs: torch.Tensor, noise: torch.Tensor | None, net: AgentBatchedScoreMLP | None = None
) -> torch.Tensor:
    """Actions of the OU chain with ``algo``'s policy (or ``net``) and the given noise."""
    model = algo.policy.conditioned(obs) if net is None else net.conditioned(obs)
    return ou_sample(model, algo.schedule, (obs.shape[0], 3, 2), noise=noise).action


@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_target_policy_follows_rho(rho: float) -> None:
    algo = make(rho=rho, policy_delay=1)
    old_target = [p.detach().clone() for p in algo.target_policy.parameters()]
    algo.update(batch())
    for p_t, p_old, p in zip(algo.target_policy.parameters(), old_target, algo.policy.parameters()):
        assert torch.allclose(p_t, rho * p_old + (1 - rho) * p.detach(), atol=1e-6)


def test_policy_delay_and_state_dict_round_trip() -> None:
    algo = make(policy_delay=3)
    metrics = [algo.update(batch()) for _ in range(4)]
    assert ["train/actor_loss" in m for m in metrics] == [True, False, False, True]
    assert all(np.isfinite(v) for m in metrics for v in m.values())
    clone = make(lr=5e-4)
    clone.load_state_dict(algo.state_dict())
    obs = np.random.default_rng(0).normal(size=(5, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(algo.act(obs, explore=False), clone.act(obs, explore=False))
    out = algo.act(obs, explore=True)
    assert out.shape == (5, 3, 2) and np.all(np.abs(out) <= 1) and np.all(out[:, 1, 1] == 0)
