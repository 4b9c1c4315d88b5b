"""Faster paths of issue 16 compute the same maths as the step-by-step reference: BatchRenorm's
two-pass batch statistics against torch.var_mean, its folded affine, the fused OU chain and the
time table of ``ConditionedScore`` against the per-step kernels, and a few OMAD updates with
all fast paths (and fused Adam) against the reference path."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

import dmarl.algorithms.omad as omad_module
from dmarl.algorithms.omad import OMAD
from dmarl.data.batch import Batch
from dmarl.diffusion.samplers import (
    OUSample,
    gaussian_log_prob,
    ou_forward_kernel,
    ou_reverse_kernel,
    ou_sample,
    tanh_log_det,
)
from dmarl.diffusion.schedules import OUSchedule
from dmarl.diffusion.score_networks import AgentBatchedScoreMLP, AgentLoopScoreMLP
from dmarl.envs.base import EnvSpec
from dmarl.nn.agent_batched import from_stacked, to_stacked
from dmarl.nn.batch_renorm import BatchRenorm

SPEC = EnvSpec(
    name="test", family="test", agent_ids=("a", "b", "c"), obs_dims=(4, 3, 4), action_dims=(2, 1, 2),
    state_dim=5, episode_limit=10, reward_convention="sum",
)


def small_batch(b: int = 32) -> Batch:
    g = torch.Generator().manual_seed(1)
    actions = (torch.rand(b, 3, 2, generator=g) * 2 - 1) * torch.as_tensor(SPEC.action_mask(), dtype=torch.float32)
    return Batch(
        obs=torch.randn(b, 3, 4, generator=g), state=torch.randn(b, 5, generator=g), actions=actions,
        reward=torch.randn(b, generator=g), next_obs=torch.randn(b, 3, 4, generator=g),
        next_state=torch.randn(b, 5, generator=g), terminated=torch.zeros(b),
    )


def _reference(brn: BatchRenorm, x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """BatchRenorm's training output from torch.var_mean (the previous implementation)."""
    flat = x.reshape(-1, x.shape[-1])
    var, mean = torch.var_mean(flat, dim=0, unbiased=False)
    std = torch.sqrt(var + brn.eps)
    running_std = torch.sqrt(running_var + brn.eps)
    r = (std.detach() / running_std).clamp(1.0 / brn.r_max, brn.r_max)
    d = ((mean.detach() - running_mean) / running_std).clamp(-brn.d_max, brn.d_max)
    return ((x - mean) / std * r + d) * brn.weight + brn.bias


def test_two_pass_statistics_match_var_mean_in_values_gradients_and_running_stats() -> None:
    torch.manual_seed(0)
    brn = BatchRenorm(5, momentum=0.9, warmup_steps=0).double()
    with torch.no_grad():
        brn.running_mean.uniform_(-1, 1)
        brn.running_var.uniform_(0.5, 2)
        brn.weight.uniform_(0.5, 1.5)
        brn.bias.uniform_(-1, 1)
    x = (1e3 + torch.randn(4, 8, 5, dtype=torch.float64) * torch.tensor([0.1, 1, 2, 3, 10.0])).requires_grad_()
    running_mean, running_var = brn.running_mean.clone(), brn.running_var.clone()
    weights = torch.randn(4, 8, 5, dtype=torch.float64)
    out = brn(x)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    x_ref = x.detach().clone().requires_grad_()
    ref = _reference(brn, x_ref, running_mean, running_var)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), x_ref)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-9)
    var, mean = torch.var_mean(x.detach().reshape(-1, 5), dim=0, unbiased=False)
    torch.testing.assert_close(brn.running_mean, running_mean.lerp(mean, 0.1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(brn.running_var, running_var.lerp(var, 0.1), rtol=1e-10, atol=1e-10)


# -- the fused OU chain, ConditionedScore's time table, BatchRenorm's folded affine, fused Adam --


def _reference_denoise(
    self: AgentBatchedScoreMLP,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    time_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """The score network's first layer as three separate terms, time features per call."""
    xs, lead = to_stacked(x)
    h = self.act(cond + self.in_x(xs) + self.time_features(t.to(x.dtype), lead))
    for layer in self.body[:-1]:
        h = self.act(layer(h))
    return from_stacked(self.body[-1](h), lead)


def _reference_ou_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: OUSchedule,
    shape: tuple[int, ...],
    *,
    eta: float = 1.0,
    squash: bool = True,
    action_mask: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    requires_grad: bool = False,
    residual: bool = False,
    generator: torch.Generator | None = None,
) -> OUSample:
    """OMAD's chain step by step: ``ou_reverse_kernel`` / ``ou_forward_kernel`` densities with
    ``gaussian_log_prob``, the residual score subtracted explicitly; same noise order as
    ``ou_sample`` (a_H first, then one draw per step)."""
    rates, n_steps = schedule.ou_rates(), schedule.num_steps
    draws = iter(noise) if noise is not None else None
    with torch.set_grad_enabled(requires_grad and torch.is_grad_enabled()):
        a = eta * (next(draws) if draws else torch.randn(shape, generator=generator, dtype=schedule.dtype))
        log_prior = gaussian_log_prob(a, torch.zeros_like(a), torch.full_like(a, eta), action_mask)
        log_reverse, log_forward = [], []
        for h in range(n_steps, 0, -1):
            score = model(a, schedule.step_time(h - 1))
            if residual:
                score = score - a / eta**2
            mean, std = ou_reverse_kernel(a, score, rates[h - 1], eta)
            xi = next(draws) if draws else torch.randn(shape, generator=generator, dtype=schedule.dtype)
            a_next = mean + std * xi
            log_reverse.append(gaussian_log_prob(a_next, mean, std, action_mask))
            fwd_mean, fwd_std = ou_forward_kernel(a_next, rates[h - 1], eta)
            log_forward.append(gaussian_log_prob(a, fwd_mean, fwd_std, action_mask))
            a = a_next
        action = torch.tanh(a) if squash else a
        log_det = tanh_log_det(a, action_mask) if squash else torch.zeros_like(log_prior)
    return OUSample(
        action=action, pre_tanh=a, log_prior=log_prior, log_reverse=torch.stack(log_reverse[::-1], -1),
        log_forward=torch.stack(log_forward[::-1], -1), log_det_tanh=log_det,
    )


def _reference_batch_renorm(self: BatchRenorm, x: torch.Tensor) -> torch.Tensor:
    """BatchRenorm with the normalisation and the affine as separate passes."""
    if not self.training:
        return (x - self.running_mean) * torch.rsqrt(self.running_var + self.eps) * self.weight + self.bias
    flat = x.reshape(-1, self.num_features)
    mean = flat.mean(dim=0)
    centred = flat - mean
    var = centred.square().mean(dim=0)
    std = torch.sqrt(var + self.eps)
    running_std = torch.sqrt(self.running_var + self.eps)
    warm = self.steps >= self.warmup_steps
    r = torch.where(warm, (std.detach() / running_std).clamp(1 / self.r_max, self.r_max), torch.ones_like(std))
    d = ((mean.detach() - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
    d = torch.where(warm, d, torch.zeros_like(d))
    with torch.no_grad():
        self.running_mean.lerp_(mean.detach(), 1.0 - self.momentum)
        self.running_var.lerp_(var.detach(), 1.0 - self.momentum)
        self.steps += 1
    return (centred / std * r + d).reshape(x.shape) * self.weight + self.bias


@pytest.mark.parametrize("residual", [True, False])
def test_fused_ou_chain_equals_the_step_by_step_kernels(residual: bool) -> None:
    """float64: actions, every log-density term and the parameter gradients of an actor loss."""
    torch.manual_seed(0)
    net = AgentBatchedScoreMLP(3, 4, 5, hidden=(32, 32), time_dim=16, out_init_scale=1.0).double()
    sched = OUSchedule(6, 3.3, 1e-3, 0.9999, shape="cosine").double()
    obs = torch.randn(16, 3, 5, dtype=torch.float64)
    noise = torch.randn(7, 16, 3, 4, dtype=torch.float64)
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float64)
    outs, grads = [], []
    for sample in (ou_sample, _reference_ou_sample):
        model = net.conditioned(obs) if sample is ou_sample else (lambda x, t: _reference_denoise(net, x, t, enc))
        enc = net.encode(obs)
        out = sample(model, sched, (16, 3, 4), eta=1.3, action_mask=mask, noise=noise, requires_grad=True,
                     residual=residual)
        loss = (out.action * mask).sum() + out.entropy_lower_bound().sum()
        grads.append(torch.autograd.grad(loss, list(net.parameters())))
        outs.append(out)
    fast, ref = outs
    for name in ("action", "pre_tanh", "log_prior", "log_reverse", "log_forward", "log_det_tanh"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), rtol=1e-10, atol=1e-10, msg=name)
    for g_fast, g_ref in zip(*grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-10)


def test_time_table_rows_equal_per_call_time_features() -> None:
    torch.manual_seed(0)
    net = AgentBatchedScoreMLP(3, 4, 5, hidden=(32, 32), time_dim=16).double()
    times = torch.tensor([0.9, 0.5, 0.125], dtype=torch.float64)
    table = net.time_table(times)
    assert table.shape == (3, 3, 1, 32)
    for k, t in enumerate(times):
        torch.testing.assert_close(table[k], net.time_features(t, torch.Size([7])), rtol=1e-12, atol=1e-12)


def test_batch_renorm_folded_affine_matches_separate_passes_in_eval_mode() -> None:
    torch.manual_seed(0)
    brn = BatchRenorm(5).double().eval()
    with torch.no_grad():
        for buf, (lo, hi) in ((brn.running_mean, (-2, 2)), (brn.running_var, (0.1, 3)), (brn.weight, (0.5, 2)),
                              (brn.bias, (-1, 1))):
            buf.uniform_(lo, hi)
    x = torch.randn(4, 8, 5, dtype=torch.float64)
    torch.testing.assert_close(brn(x), _reference_batch_renorm(brn, x), rtol=1e-12, atol=1e-12)


def _omad_run(monkeypatch: pytest.MonkeyPatch, reference: bool) -> tuple[list[dict[str, float]], OMAD, list[np.ndarray]]:
    """Five OMAD updates (two policy updates) past the BatchRenorm warm-up, then acting."""
    with monkeypatch.context() as patch:
        if reference:
            patch.setattr(omad_module, "ou_sample", _reference_ou_sample)
            patch.setattr(AgentBatchedScoreMLP, "denoise", _reference_denoise)
            patch.setattr(BatchRenorm, "forward", _reference_batch_renorm)
        torch.manual_seed(0)
        algo = OMAD(SPEC, torch.device("cpu"), critic_hidden=(64, 64), actor_hidden=(32, 32), time_dim=16,
                    diffusion_steps=4, bn_warmup=2, lr=1e-3, adam_implementation="for-loop" if reference else "fused")
        data = small_batch()
        metrics = [algo.update(data) for _ in range(5)]
        obs = data.obs.numpy()
        actions = [algo.act(obs, explore=False), algo.act(obs, explore=True)]
    return metrics, algo, actions


def test_omad_fast_paths_track_the_reference_path_over_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast paths (fused chain, time table, folded BatchRenorm affine, fused Adam) against
    the step-by-step reference (for-loop Adam) in float32 from the same seed: losses,
    parameters and actions agree to float32 rounding, accumulated over five updates."""
    fast_metrics, fast, fast_actions = _omad_run(monkeypatch, reference=False)
    ref_metrics, ref, ref_actions = _omad_run(monkeypatch, reference=True)
    for m_fast, m_ref in zip(fast_metrics, ref_metrics):
        assert m_fast.keys() == m_ref.keys()
        for key in m_fast:
            assert m_fast[key] == pytest.approx(m_ref[key], rel=2e-5, abs=1e-6), key
    for (name, p_fast), p_ref in zip(fast.policy.state_dict().items(), ref.policy.state_dict().values()):
        torch.testing.assert_close(p_fast, p_ref, rtol=2e-5, atol=1e-5, msg=name)
    for (name, p_fast), p_ref in zip(fast.critics.state_dict().items(), ref.critics.state_dict().values()):
        torch.testing.assert_close(p_fast, p_ref, rtol=2e-5, atol=1e-5, msg=name)
    for a_fast, a_ref in zip(fast_actions, ref_actions):
        np.testing.assert_allclose(a_fast, a_ref, rtol=0, atol=1e-6)
    assert fast.updates == ref.updates == 5 and not np.array_equal(*fast_actions)  # explore draws noise


@pytest.mark.parametrize("warmup_steps", [0, 10])
def test_batch_renorm_closed_form_backward_matches_autograd_of_the_reference(warmup_steps: int) -> None:
    """Gradients of x, gamma, beta (renorm corrections on, or warm-up: plain BN) against autograd
    through the separate-pass reference, float64, after a few steps of running statistics."""
    torch.manual_seed(0)
    brn = BatchRenorm(6, momentum=0.5, warmup_steps=warmup_steps).double()
    ref = BatchRenorm(6, momentum=0.5, warmup_steps=warmup_steps).double()
    with torch.no_grad():
        brn.weight.uniform_(0.5, 1.5)
        brn.bias.uniform_(-1, 1)
    ref.load_state_dict(brn.state_dict())
    for step in range(3):
        x = (3.0 + 2.0 * torch.randn(5, 7, 6, dtype=torch.float64)).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        weights = torch.randn(5, 7, 6, dtype=torch.float64)
        out, out_ref = brn(x), _reference_batch_renorm(ref, x_ref)
        grads = torch.autograd.grad((out * weights).sum(), [x, brn.weight, brn.bias])
        grads_ref = torch.autograd.grad((out_ref * weights).sum(), [x_ref, ref.weight, ref.bias])
        torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12, msg=f"step {step}")
        for name, g, g_ref in zip(("x", "weight", "bias"), grads, grads_ref):
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10, msg=f"step {step} d{name}")
        for name in ("running_mean", "running_var", "steps"):
            torch.testing.assert_close(getattr(brn, name), getattr(ref, name), rtol=1e-12, atol=1e-12)


def test_omad_fast_paths_are_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same seed, same metrics, parameters and actions, bit for bit (fused Adam included)."""
    first, second = _omad_run(monkeypatch, reference=False), _omad_run(monkeypatch, reference=False)
    assert first[0] == second[0]
    for a, b in zip(first[1].policy.state_dict().values(), second[1].policy.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(first[1].critics.state_dict().values(), second[1].critics.state_dict().values()):
        assert torch.equal(a, b)
    assert all(np.array_equal(a, b) for a, b in zip(first[2], second[2]))


SHAPES = [(2, 16), (6, 16), (2, 256), (6, 256), (2, 1024), (6, 1024)]


def _forced(net: AgentBatchedScoreMLP, min_elements: int) -> AgentBatchedScoreMLP:
    """A copy of ``net`` whose ``denoise`` always (0) / never (2^62) takes the per-agent path."""
    out = AgentBatchedScoreMLP.from_modules([net.agent_module(i) for i in range(net.n_agents)]).eval()
    out.per_agent_min_elements = min_elements
    return out


@pytest.mark.parametrize(("n_agents", "batch"), SHAPES)
def test_per_agent_and_stacked_paths_equal_the_agent_loop(n_agents: int, batch: int) -> None:
    """float32, same weights: the rule's choice, both forced paths and N separate networks agree
    to float rounding, with a shared 0-dim t, per-sample t and input BatchNorm (eval stats)."""
    torch.manual_seed(n_agents * batch)
    loop = AgentLoopScoreMLP(n_agents, 4, 10, hidden=(256, 256, 256), time_dim=32, input_norm=True,
                             out_init_scale=1.0).eval()
    with torch.no_grad():
        for net in loop.agents:
            net.norm_x.running_mean.uniform_(-1, 1)
            net.norm_cond.running_var.uniform_(0.5, 2)
    default = AgentBatchedScoreMLP.from_modules(list(loop.agents)).eval()
    nets = [default, _forced(default, 0), _forced(default, 2**62)]
    x, obs = torch.randn(batch, n_agents, 4), torch.randn(batch, n_agents, 10)
    with torch.no_grad():
        for t in (torch.tensor(0.4), torch.rand(batch, n_agents)):
            ref = loop(x, t, obs)
            for net in nets:
                torch.testing.assert_close(net(x, t, obs), ref, rtol=1e-5, atol=1e-5)
    xs, _ = to_stacked(x)
    with torch.no_grad():
        assert nets[1].per_agent_path(xs) and not nets[2].per_agent_path(xs)
        assert default.per_agent_path(xs) == (batch >= 128)  # 2^15 elements per agent at width 256
    assert not default.per_agent_path(xs)  # gradients recorded: the stacked path


def test_per_agent_path_gives_the_stacked_ou_chain() -> None:
    """The whole OU chain (time table, residual score) through either path: same actions."""
    torch.manual_seed(0)
    net = AgentBatchedScoreMLP(3, 2, 5, hidden=(64, 64), time_dim=16, out_init_scale=1.0).eval()
    sched = OUSchedule(8, 3.3, 1e-3, 0.9999, shape="cosine")
    obs, noise = torch.randn(128, 3, 5), torch.randn(9, 128, 3, 2)
    actions = [
        ou_sample(_forced(net, k).conditioned(obs), sched, (128, 3, 2), noise=noise, residual=True).action
        for k in (0, 2**62)
    ]
    torch.testing.assert_close(actions[0], actions[1], rtol=1e-5, atol=1e-5)
