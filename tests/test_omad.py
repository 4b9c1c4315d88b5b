"""OMAD unit tests on small shapes: critic target, policy gradients through every agent and
every denoising step, temperature direction, target-policy averaging, checkpoint round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dmarl.algorithms.omad import OMAD
from dmarl.data.batch import Batch
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
    _, _, next_lb = algo._critic_forward(data)
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
    denoise = algo.policy.denoise

    def recording(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = denoise(x, t, cond)
        if out.requires_grad:
            out.retain_grad()
            outputs.append(out)
        return out

    algo.policy.denoise = recording  # type: ignore[method-assign]
    algo._policy_update(batch())
    assert len(outputs) == 4, "one score evaluation per denoising step"
    mask = torch.as_tensor(SPEC.action_mask())
    for h, out in enumerate(outputs):
        grad = out.grad.abs().sum(0)  # [N, A]
        assert (grad[mask] > 0).all(), f"step {h}: some agent/action gets no gradient"
    for name, p in algo.policy.named_parameters():
        if p.grad is not None and p.dim() == 3:  # stacked per-agent weights [N, in, out]
            assert (p.grad.abs().flatten(1).sum(1) > 0).all(), name


@pytest.mark.parametrize("entropy, direction", [(+100.0, "down"), (-100.0, "up")])
def test_temperature_moves_toward_target(entropy: float, direction: str) -> None:
    algo = make()
    before = algo.alpha.item()
    lb = torch.full((8,), algo.target_entropy + entropy)
    for _ in range(5):
        algo._temperature_update(lb)
    after = algo.alpha.item()
    assert (after < before) if direction == "down" else (after > before)


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
