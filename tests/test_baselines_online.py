"""Online baselines of the OMAD paper on small shapes: HASAC (HARL's temperatures: start at 1,
a separate critic temperature on sum_i log pi_i, soft target brute force), HATD3 (target
smoothing, delay, sequential updates with the earlier agents' updated actions), MADPMD /
MASDAC (weights and losses against brute force), and for every algorithm: act shapes, finite
update metrics, state_dict round trips."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from dmarl import registry
from dmarl.algorithms.baselines.hatd3 import HATD3
from dmarl.algorithms.baselines.madpmd import MADPMD
from dmarl.algorithms.baselines.masdac import MASDAC
from dmarl.algorithms.joint_diffusion import (
    dpmd_weights,
    normalize_q,
    sdac_candidates,
    sdac_loss,
    sdac_weights,
)
from dmarl.algorithms.baselines import hasac as hasac_module
from dmarl.data.batch import Batch
from dmarl.diffusion.schedules import DiscreteSchedule
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError
from dmarl.nn.deterministic import DeterministicActor, exploration_noise, target_smoothing

CPU = torch.device("cpu")
# Heterogeneous agents: padded obs 6, padded actions 3, state 7.
SPEC = EnvSpec("test/hetero", "toy", ("a", "b", "c"), (5, 4, 6), (2, 3, 1), 7, 25, "shared")
SMALL = {
    "hasac": dict(hidden=(16, 16)),
    "hatd3": dict(hidden=(16, 16)),
    "madpmd": dict(hidden=(16, 16), time_dim=8, diffusion_steps=5, alpha_delay=2),
    "masdac": dict(hidden=(16, 16), time_dim=8, diffusion_steps=5, alpha_delay=2, num_candidates=4),
}


def make_batch(b: int = 16, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(b, 3, 6, generator=g) * torch.as_tensor(SPEC.obs_mask(), dtype=torch.float32)
    next_obs = torch.randn(b, 3, 6, generator=g) * torch.as_tensor(SPEC.obs_mask(), dtype=torch.float32)
    actions = (torch.rand(b, 3, 3, generator=g) * 2 - 1) * torch.as_tensor(SPEC.action_mask(), dtype=torch.float32)
    return Batch(
        obs=obs, state=torch.randn(b, 7, generator=g), actions=actions, reward=torch.randn(b, generator=g),
        next_obs=next_obs, next_state=torch.randn(b, 7, generator=g),
        terminated=(torch.rand(b, generator=g) < 0.3).float(),
    )


def make(name: str, seed: int = 0, **overrides: object):
    torch.manual_seed(seed)
    return registry.get_algorithm(name).cls(spec=SPEC, device=CPU, **{**SMALL[name], **overrides})


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# -- every algorithm --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SMALL))
def test_registered_act_shapes_and_finite_update_metrics(name: str) -> None:
    assert registry.get_algorithm(name).kind == "online"
    alg = make(name)
    obs = np.random.default_rng(0).normal(size=(4, 3, 6)).astype(np.float32)
    for explore in (True, False):
        actions = alg.act(obs, explore=explore)
        assert isinstance(actions, np.ndarray) and actions.shape == (4, 3, 3)
        assert np.all(np.abs(actions) <= 1.0) and np.all(actions[:, ~SPEC.action_mask()] == 0.0)
    seen: set[str] = set()
    for step in range(4):
        metrics = alg.update(make_batch(seed=step))
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        seen |= set(metrics)
    assert {"train/critic_loss", "train/q_mean", "train/actor_loss"} <= seen
    if name == "hasac":
        assert {"train/alpha", "train/critic_alpha", "train/alpha_loss", "policy/entropy"} <= seen
    if name in ("madpmd", "masdac"):
        assert {"train/alpha", "train/alpha_loss", "policy/noise_entropy", "train/weight_ess"} <= seen


@pytest.mark.parametrize("name", list(SMALL))
def test_state_dict_round_trip_reproduces_actions_and_updates(name: str) -> None:
    alg = make(name, seed=0)
    for step in range(3):
        alg.update(make_batch(seed=step))
    buffer = io.BytesIO()  # through a file, as checkpoints do (and no tensors shared with alg)
    torch.save(alg.state_dict(), buffer)
    buffer.seek(0)
    copy = make(name, seed=123)
    copy.load_state_dict(torch.load(buffer, weights_only=True))
    obs = np.random.default_rng(1).normal(size=(5, 3, 6)).astype(np.float32)
    for explore in (True, False):
        torch.manual_seed(7)
        expected = alg.act(obs, explore=explore)
        torch.manual_seed(7)
        np.testing.assert_array_equal(copy.act(obs, explore=explore), expected)
    # optimiser states and counters travel too: one more identical update gives identical metrics
    batch = make_batch(seed=9)
    torch.manual_seed(3)
    m1 = alg.update(batch)
    torch.manual_seed(3)
    m2 = copy.update(batch)
    assert m1 == m2


# -- HASAC ------------------------------------------------------------------------------------


def test_hasac_temperatures_start_at_one_as_harl() -> None:
    alg = make("hasac")  # HARL: log_alpha = zeros for every agent and for the critic
    torch.testing.assert_close(alg.log_alpha.detach(), torch.zeros(4))
    fixed = make("hasac", auto_alpha=False, initial_alpha=0.05)  # HARL's `alpha` when not tuned
    for step in range(3):
        metrics = fixed.update(make_batch(seed=step))
    torch.testing.assert_close(fixed.log_alpha.detach(), torch.full((4,), math.log(0.05)))
    assert metrics["train/alpha"] == pytest.approx(0.05) and metrics["train/critic_alpha"] == pytest.approx(0.05)
    with pytest.raises(UserError, match="critic_alpha"):
        make("hasac", critic_alpha="joint")


@pytest.mark.parametrize("critic_alpha", ["harl", "per_agent"])
def test_hasac_soft_target_brute_force(critic_alpha: str, monkeypatch: pytest.MonkeyPatch) -> None:
    alg = make("hasac", critic_alpha=critic_alpha)
    with torch.no_grad():
        alg.log_alpha.copy_(torch.log(torch.tensor([0.3, 0.5, 0.7, 2.0])))  # alpha_0..2, alpha_c
    batch = make_batch()
    targets: list[torch.Tensor] = []
    monkeypatch.setattr(hasac_module, "twin_td_step", lambda _c, _o, _i, target, _h: targets.append(target) or {})
    torch.manual_seed(5)
    alg._critic_update(batch)
    torch.manual_seed(5)  # the same next-action samples
    with torch.no_grad():
        next_actions, next_logp = alg._sample_all(batch.next_obs)
        expected = []
        for b in range(len(batch)):
            q = alg.critic_target(torch.cat([batch.next_state[b], *[a[b] for a in next_actions]])).min()
            if critic_alpha == "harl":
                bonus = 2.0 * sum(next_logp[b, i] for i in range(3))
            else:
                bonus = sum(a * next_logp[b, i] for i, a in enumerate([0.3, 0.5, 0.7]))
            expected.append(batch.reward[b] + 0.99 * (1 - batch.terminated[b]) * (q - bonus))
    torch.testing.assert_close(targets[0], torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_hasac_temperature_losses_gradients() -> None:
    alg = make("hasac")
    mean_logp = torch.tensor([-0.5, 1.0, 2.5])
    alg._temperature_losses(mean_logp).backward()
    entropy_target = -torch.tensor(SPEC.action_dims, dtype=torch.float32)  # -dim(A_i)
    gap = mean_logp + entropy_target
    # d/d log alpha_i = -(E log pi_i + H_i); critic: -(E sum_i log pi_i + sum_i H_i)
    torch.testing.assert_close(alg.log_alpha.grad, -torch.cat([gap, gap.sum().reshape(1)]))


# -- HATD3 ------------------------------------------------------------------------------------


def test_deterministic_actor_and_noise_helpers() -> None:
    torch.manual_seed(0)
    actor = DeterministicActor(4, 3, (8,), feature_norm=True, out_init_scale=0.01)
    a = actor(torch.randn(64, 4))
    assert a.shape == (64, 3) and a.abs().max() < 0.1  # small output gain -> actions near 0
    noisy = exploration_noise(a, 0.1)
    assert noisy.abs().max() <= 1.0 and not torch.equal(noisy, a)
    smooth = target_smoothing(a, std=10.0, clip=0.5)
    assert (smooth - a).abs().max() <= 0.5 + 1e-6 and (smooth - a).abs().max() > 0.49


def test_hatd3_target_smoothing_uses_target_actors_and_clipped_noise() -> None:
    alg = make("hatd3", policy_noise=10.0, noise_clip=0.5)
    next_obs = make_batch().next_obs
    with torch.no_grad():
        mu_target = [actor(alg.slices.obs(next_obs, i)) for i, actor in enumerate(alg.target_actors)]
        for p in alg.actors[0].parameters():  # the current actors do not enter the target
            p.add_(1.0)
    smoothed = alg._target_actions(next_obs)
    for a, mu in zip(smoothed, mu_target):
        assert a.abs().max() <= 1.0
        diff = (a - mu).abs()
        assert diff.max() <= 0.5 + 1e-6 and diff.max() > 0.45  # std 10 -> the clip binds
    alg.policy_noise = 0.0
    for a, mu in zip(alg._target_actions(next_obs), mu_target):
        torch.testing.assert_close(a, mu)


def test_hatd3_critic_target_brute_force() -> None:
    alg = make("hatd3", policy_noise=0.0)  # no smoothing noise: the target is deterministic
    batch = make_batch()
    expected = 0.0
    with torch.no_grad():
        for j in range(2):
            qs = []
            for b in range(len(batch)):
                a_next = [alg.target_actors[i](alg.slices.obs(batch.next_obs[b], i)) for i in range(3)]
                q_next = alg.critic_target(torch.cat([batch.next_state[b], *a_next]))
                y = batch.reward[b] + 0.99 * (1 - batch.terminated[b]) * q_next.min()
                q = alg.critic(torch.cat([batch.state[b], alg.slices.joint_actions(batch.actions[b])]))[j]
                qs.append((q - y) ** 2)
            expected += torch.stack(qs).mean()
    metrics = alg.update(batch)
    assert metrics["train/critic_loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_hatd3_policy_delay_and_polyak_targets() -> None:
    alg = make("hatd3", policy_delay=2, polyak=0.1)
    actors0 = [params(a) for a in alg.actors]
    critic_target0 = params(alg.critic_target)
    metrics = alg.update(make_batch(seed=0))  # update 1: critic only
    assert "train/actor_loss" not in metrics
    for a, before in zip(alg.actors, actors0):
        assert all(torch.equal(p, q) for p, q in zip(params(a), before))
    for t, before in zip(alg.target_actors, actors0):
        assert all(torch.equal(p, q) for p, q in zip(params(t), before))
    assert all(torch.equal(p, q) for p, q in zip(params(alg.critic_target), critic_target0))
    metrics = alg.update(make_batch(seed=1))  # update 2: actors + targets
    assert "train/actor_loss" in metrics
    for actor, target, before in zip(alg.actors, alg.target_actors, actors0):
        new = params(actor)
        assert any(not torch.equal(p, q) for p, q in zip(new, before))
        for p_t, p_old, p_new in zip(params(target), before, new):
            torch.testing.assert_close(p_t, 0.9 * p_old + 0.1 * p_new)
    for p_t, p_old, p_new in zip(params(alg.critic_target), critic_target0, params(alg.critic)):
        torch.testing.assert_close(p_t, 0.9 * p_old + 0.1 * p_new)


def test_hatd3_sequential_update_uses_updated_actions_of_earlier_agents() -> None:
    alg = make("hatd3", policy_delay=1, actor_lr=0.05)
    batch = make_batch()
    dims = SPEC.action_dims
    offsets = np.cumsum([SPEC.state_dim, *dims])  # joint input = [state, a_0, a_1, a_2]

    def agent_slice(x: torch.Tensor, i: int) -> torch.Tensor:
        return x[:, offsets[i] : offsets[i] + dims[i]]

    calls: list[torch.Tensor] = []
    forward = alg.critic.forward

    def recording_forward(*inputs: torch.Tensor) -> torch.Tensor:
        x = torch.cat(inputs, dim=-1)
        if x.requires_grad:  # the actor-update calls (an action carries a gradient)
            calls.append(x.detach().clone())
        return forward(*inputs)

    alg.critic.forward = recording_forward
    with torch.no_grad():
        before = [actor(alg.slices.obs(batch.obs, i)) for i, actor in enumerate(alg.actors)]
    alg.update(batch)
    with torch.no_grad():
        after = [actor(alg.slices.obs(batch.obs, i)) for i, actor in enumerate(alg.actors)]
    order = alg.last_order
    assert sorted(order) == [0, 1, 2] and len(calls) == 3
    for m, x in enumerate(calls):
        for j in order[:m]:  # already updated in this step
            torch.testing.assert_close(agent_slice(x, j), after[j])
            assert not torch.allclose(agent_slice(x, j), before[j])
        for j in order[m:]:  # the agent itself and the ones after it: current actors
            torch.testing.assert_close(agent_slice(x, j), before[j])
    orders = set()
    for seed in range(8):  # the order is a fresh random permutation each step
        torch.manual_seed(seed)
        alg._actor_updates(batch)
        orders.add(tuple(alg.last_order))
    assert len(orders) > 1


# -- MADPMD / MASDAC --------------------------------------------------------------------------


def test_dpmd_weights_brute_force() -> None:
    torch.manual_seed(0)
    q = torch.randn(12) * 3
    alpha = 0.7
    exps = [math.exp(v / alpha) for v in q.tolist()]
    brute = torch.tensor([e / (sum(exps) / len(exps)) for e in exps])
    torch.testing.assert_close(dpmd_weights(q, alpha), brute)
    # normalised Q: z = clip((q - m) / s, -c, c)
    z = normalize_q(q, q.mean(), q.std(), clip=1.0)
    brute_z = [min(max((v - q.mean().item()) / q.std().item(), -1.0), 1.0) for v in q.tolist()]
    torch.testing.assert_close(z, torch.tensor(brute_z))
    big = dpmd_weights(torch.tensor([1000.0, 999.0]), 1.0)  # no overflow
    assert torch.isfinite(big).all() and big.mean().item() == pytest.approx(1.0)


def test_sdac_weights_candidates_and_loss_brute_force() -> None:
    torch.manual_seed(0)
    b, k, a = 3, 5, 2
    q = torch.randn(b, k) * 2
    alpha = 0.5
    w = sdac_weights(q, alpha)
    for i in range(b):
        exps = [math.exp(v / alpha) for v in q[i].tolist()]
        torch.testing.assert_close(w[i], torch.tensor([e / sum(exps) for e in exps]))
    schedule = DiscreteSchedule.linear(6, 1e-3, 0.5)
    t = schedule.step_time(torch.tensor([0, 3, 5]))
    a_t, noise = torch.randn(b, a), torch.randn(b, k, a)
    cand = sdac_candidates(schedule, a_t, t, noise)
    eps_pred = torch.randn(b, a)
    total = 0.0
    for i, step in enumerate([0, 3, 5]):
        abar = schedule.alpha_bar[step]
        for j in range(k):
            expected = ((a_t[i] - (1 - abar).sqrt() * noise[i, j]) / abar.sqrt()).clamp(-1, 1)
            torch.testing.assert_close(cand[i, j], expected)
            total += w[i, j] * ((eps_pred[i] - noise[i, j]) ** 2).sum()
    torch.testing.assert_close(sdac_loss(eps_pred, noise, w), total / b)


def _min_q(alg, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    return alg.critic(torch.cat([state, action])).min()


def test_madpmd_policy_loss_brute_force() -> None:
    alg = make("madpmd", seed=0, q_normalization="batch", q_clip=1.0)
    alg.log_alpha.data.fill_(math.log(0.3))
    batch = make_batch(b=8)
    next_cond = alg.joint_obs(batch.next_obs)
    a0 = (torch.rand(8, SPEC.joint_action_dim) * 2 - 1)
    torch.manual_seed(5)
    loss, _ = alg._policy_loss(batch, {"next_cond": next_cond, "next_actions": a0})
    torch.manual_seed(5)  # the loss draws t, then eps
    t = alg.schedule.sample_t((8,))
    eps = torch.randn(8, SPEC.joint_action_dim)
    with torch.no_grad():
        q = torch.stack([_min_q(alg, batch.next_state[i], a0[i]) for i in range(8)])
        z = ((q - q.mean()) / q.std()).clamp(-1.0, 1.0)
        e = torch.exp(z / 0.3)
        w = e / e.mean()
        errs = []
        for i in range(8):
            k = alg.schedule.step_index(t[i])
            abar = alg.schedule.alpha_bar[k]
            x_t = abar.sqrt() * a0[i] + (1 - abar).sqrt() * eps[i]
            pred = alg.policy(x_t[None], t[i : i + 1], next_cond[i : i + 1])[0]
            errs.append(((pred - eps[i]) ** 2).sum())
        expected = (w * torch.stack(errs)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_madpmd_per_state_weights_brute_force() -> None:
    """samples_per_state M > 1: weights M softmax_m(z / alpha) within each state."""
    alg = make("madpmd", seed=0, samples_per_state=3, q_normalization="none")
    alg.log_alpha.data.fill_(math.log(0.5))
    batch = make_batch(b=4)
    cond = alg.joint_obs(batch.obs).repeat_interleave(3, dim=0)
    torch.manual_seed(5)
    loss, _ = alg._per_state_loss(batch)
    torch.manual_seed(5)  # a0 ~ pi (+ noise), then t, eps of the denoising loss
    with torch.no_grad():
        a0 = alg._explore(alg._sample(cond))
        t = alg.schedule.sample_t((12,))
        eps = torch.randn(12, SPEC.joint_action_dim)
        total = 0.0
        for i in range(4):
            q = torch.stack([_min_q(alg, batch.state[i], a0[3 * i + j]) for j in range(3)])
            e = torch.exp(q / 0.5)
            w = e / e.mean()
            for j in range(3):
                n = 3 * i + j
                abar = alg.schedule.alpha_bar[alg.schedule.step_index(t[n])]
                x_t = abar.sqrt() * a0[n] + (1 - abar).sqrt() * eps[n]
                pred = alg.policy(x_t[None], t[n : n + 1], cond[n : n + 1])[0]
                total += w[j] * ((pred - eps[n]) ** 2).sum()
    torch.testing.assert_close(loss, total / 12, rtol=1e-5, atol=1e-6)


def test_masdac_policy_loss_brute_force() -> None:
    alg = make("masdac", seed=0, num_candidates=4, q_normalization="batch")
    alg.log_alpha.data.fill_(math.log(0.3))
    batch = make_batch(b=6)
    cond = alg.joint_obs(batch.obs)
    torch.manual_seed(5)
    loss, _ = alg._policy_loss(batch, {})
    torch.manual_seed(5)  # the loss draws a0 ~ pi (+ exploration noise), t, eps, then K eps^k
    with torch.no_grad():
        a0 = alg._explore(alg._sample(cond))
        t = alg.schedule.sample_t((6,))
        eps = torch.randn_like(a0)
        noise = torch.randn(6, 4, SPEC.joint_action_dim)
        a_ts, qs = [], []
        for i in range(6):
            abar = alg.schedule.alpha_bar[alg.schedule.step_index(t[i])]
            a_ts.append(abar.sqrt() * a0[i] + (1 - abar).sqrt() * eps[i])
            cands = [((a_ts[i] - (1 - abar).sqrt() * noise[i, j]) / abar.sqrt()).clamp(-1, 1) for j in range(4)]
            qs.append(torch.stack([_min_q(alg, batch.state[i], c) for c in cands]))
        q = torch.stack(qs)
        z = (q - q.mean()) / q.std()  # 'batch': standardised over all B x K candidates
        total = 0.0
        for i in range(6):
            w = torch.softmax(z[i] / 0.3, dim=0)
            pred = alg.policy(a_ts[i][None], t[i : i + 1], cond[i : i + 1])[0]
            total += sum(w[j] * ((pred - noise[i, j]) ** 2).sum() for j in range(4))
    torch.testing.assert_close(loss, total / 6, rtol=1e-5, atol=1e-6)


def test_joint_policy_sees_all_observations_and_splits_the_joint_action() -> None:
    alg = make("madpmd")
    obs = make_batch(b=4).obs
    cond = alg.joint_obs(obs)
    assert cond.shape == (4, sum(SPEC.obs_dims))
    torch.testing.assert_close(cond[:, 5:9], obs[:, 1, :4])  # agent b's true slice
    joint = torch.arange(6.0).expand(4, 6)
    parts = alg.split_actions(joint)
    assert [p.shape[-1] for p in parts] == list(SPEC.action_dims)
    torch.testing.assert_close(alg.slices.joint_actions(alg.slices.pad_actions(parts)), joint)


def test_temperature_tracks_the_exploration_noise_entropy() -> None:
    # alpha grows while the noise entropy is below -0.9 dim(A) and shrinks above it
    for initial, direction in ((0.01, 1.0), (50.0, -1.0)):
        alg = make("madpmd", initial_alpha=initial, alpha_delay=1, alpha_lr=0.1)
        start = alg.alpha.item()
        for step in range(3):
            alg.update(make_batch(seed=step))
        assert direction * (alg.alpha.item() - start) > 0
    assert isinstance(make("masdac"), MASDAC) and isinstance(make("madpmd"), MADPMD)
    assert isinstance(make("hatd3"), HATD3)


@pytest.mark.parametrize("name", ["hasac", "hatd3"])
def test_adam_kernels_the_default_reproduces_torch_s_adam_and_fused_tracks_it(name: str) -> None:
    """The default ('for-loop') gives torch's default Adam bit for bit (published boards
    reproduce); 'fused' (OMAD's kernel, bound by the speed scripts) tracks it to float32
    rounding over five updates; a bad name is one error naming the field."""
    def trained(algo) -> list[torch.Tensor]:
        for step in range(5):
            algo.update(make_batch(seed=step))
        return params(algo.critic) + [p for actor in algo.actors for p in params(actor)]

    torch_s = make(name)  # the same algorithm with torch.optim.Adam's own kernel choice on this device
    for optim in [*torch_s.actor_optims, torch_s.critic_optim, *([torch_s.alpha_optim] if name == "hasac" else [])]:
        optim.param_groups[0].update(fused=None, foreach=None)
    reference = trained(torch_s)  # each run trains right after `make` seeds torch: the same random draws
    default, fused = trained(make(name)), trained(make(name, adam_implementation="fused"))
    assert all(torch.equal(a, b) for a, b in zip(default, reference))
    assert not all(torch.equal(a, b) for a, b in zip(fused, default))
    for a, b in zip(fused, default):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match=f"{name.upper()}.adam_implementation = 'adamw'"):
        make(name, adam_implementation="adamw")
