"""Critics against the math: C51 projection vs brute force, CrossQ joint forward, twin Q and
Polyak targets, IQL expectile and CQL closed forms."""
from __future__ import annotations

import math

import pytest
import torch

from dmarl.critics import (
    CategoricalCritic,
    TwinQ,
    c51_project,
    categorical_entropy,
    categorical_loss,
    categorical_td_target,
    cql_penalty,
    crossq_forward,
    expectile_loss,
    iql_q_loss,
    iql_value_loss,
    make_target,
    polyak_update,
)
from dmarl.nn import BatchRenorm


def _brute_force_projection(probs, reward, terminated, gamma, v_min, v_max, bonus):
    """Per-sample, per-atom loop (Bellemare et al. 2017, Alg. 1) with the on-atom case explicit."""
    B, K = len(probs), len(probs[0])
    dz = (v_max - v_min) / (K - 1)
    out = [[0.0] * K for _ in range(B)]
    for i in range(B):
        for j in range(K):
            z = v_min + j * dz
            tz = reward[i] + gamma * (1 - terminated[i]) * (z + bonus[i])
            tz = min(max(tz, v_min), v_max)
            b = (tz - v_min) / dz
            lo, hi = math.floor(b), math.ceil(b)
            if lo == hi:
                out[i][lo] += probs[i][j]
            else:
                out[i][lo] += probs[i][j] * (hi - b)
                out[i][hi] += probs[i][j] * (b - lo)
    return torch.tensor(out, dtype=torch.float64)


def test_c51_projection_equals_brute_force_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    B, K, v_max = 64, 101, 10.0
    support = torch.linspace(-v_max, v_max, K, dtype=torch.float64)
    probs = torch.softmax(3 * torch.randn(B, K, generator=g, dtype=torch.float64), -1)
    reward = 8 * torch.randn(B, generator=g, dtype=torch.float64)  # many targets beyond the support
    terminated = (torch.rand(B, generator=g) < 0.3).double()
    bonus = torch.randn(B, generator=g, dtype=torch.float64)
    ours = categorical_td_target(probs, reward, terminated, 0.97, support, bonus)
    ref = _brute_force_projection(
        probs.tolist(), reward.tolist(), terminated.tolist(), 0.97, -v_max, v_max, bonus.tolist()
    )
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.sum(-1), torch.ones(B, dtype=torch.float64))
    assert bool((reward.abs() > v_max).any() and (terminated == 1).any())


def test_c51_projection_edge_cases_on_atoms_and_outside():
    support = torch.linspace(-4.0, 4.0, 5, dtype=torch.float64)  # atoms -4, -2, 0, 2, 4
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.25, 0.15]], dtype=torch.float64).repeat(4, 1)
    reward = torch.tensor([2.0, 0.0, 100.0, -1.0], dtype=torch.float64)
    terminated = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    out = categorical_td_target(probs, reward, terminated, 1.0, support)
    # row 0: every target lands on an atom (shift by +2), the top two clip onto 4
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    # row 1: terminal with r = 0: all mass on the atom 0
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    # row 2: far beyond v_max: all mass on the last atom
    torch.testing.assert_close(out[2], torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    # row 3: terminal, r = -1 between atoms -2 and 0: split 1/2, 1/2
    torch.testing.assert_close(out[3], torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0], dtype=torch.float64))
    ref = _brute_force_projection(probs.tolist(), reward.tolist(), terminated.tolist(), 1.0, -4.0, 4.0, [0.0] * 4)
    torch.testing.assert_close(out, ref)
    # inside the support the projection preserves the mean
    atoms = torch.tensor([[-3.3, 0.7, 1.9, 3.99, -4.0]], dtype=torch.float64)
    proj = c51_project(probs[:1], atoms, support)
    torch.testing.assert_close((proj * support).sum(), (probs[:1] * atoms).sum())


def test_categorical_loss_and_entropy_regulariser():
    logits = torch.randn(8, 11, requires_grad=True)
    target = torch.softmax(torch.randn(8, 11), -1)
    assert categorical_entropy(torch.zeros(3, 11)).allclose(torch.full((3,), math.log(11)))
    ce = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
    p = torch.softmax(logits, -1)
    ent = -(p * p.log()).sum(-1).mean()
    torch.testing.assert_close(categorical_loss(logits, target, entropy_coef=0.1), ce - 0.1 * ent)
    # the regulariser pushes towards higher entropy: on a peaked prediction the gradient of
    # the entropy-only loss moves logits towards uniform
    peaked = torch.tensor([[5.0, 0.0, 0.0]], requires_grad=True)
    categorical_loss(peaked, torch.softmax(peaked.detach(), -1), entropy_coef=1.0).backward()
    assert peaked.grad[0, 0] > 0


def test_categorical_critic_with_batch_renorm_and_crossq_forward():
    torch.manual_seed(0)
    critic = CategoricalCritic(6, v_max=5.0, n_atoms=21, hidden=(32, 32), warmup_steps=0)
    assert sum(isinstance(m, BatchRenorm) for m in critic.modules()) == 3  # input + 2 hidden
    assert critic.v_min == -5.0 and critic.support.shape == (21,)
    s, a, s2, a2 = torch.randn(16, 4), torch.randn(16, 2), torch.randn(16, 4) + 1, torch.randn(16, 2)
    first_norm = critic.net.input_norm
    logits, next_logits = crossq_forward(critic, (s, a), (s2, a2))
    assert logits.shape == next_logits.shape == (16, 21)
    assert logits.requires_grad and not next_logits.requires_grad
    joint = torch.cat([torch.cat([s, a], -1), torch.cat([s2, a2], -1)], 0)
    torch.testing.assert_close(first_norm.running_mean, 0.01 * joint.mean(0))  # statistics of both halves
    critic.eval()
    q = critic.q_value(critic(s, a))
    torch.testing.assert_close(q, (torch.softmax(critic(s, a), -1) * critic.support).sum(-1))
    logits.sum().backward()
    assert critic.net.linears[0].weight.grad is not None
    plain = CategoricalCritic(6, v_max=5.0, batch_renorm=False, hidden=(8,))
    assert not any(isinstance(m, BatchRenorm) for m in plain.modules())


def test_twin_q_members_are_independent_mlps():
    torch.manual_seed(1)
    twin = TwinQ(5, hidden=(16, 16), n_critics=3)
    s, a = torch.randn(7, 4, 3), torch.randn(7, 4, 2)
    q = twin(s, a)
    assert q.shape == (3, 7, 4)
    for i in range(3):
        member = twin.net.agent_module(i)
        torch.testing.assert_close(q[i], member(torch.cat([s, a], -1))[..., 0])
    assert not torch.allclose(q[0], q[1])


def test_polyak_update_and_target_copy():
    torch.manual_seed(2)
    src = CategoricalCritic(3, v_max=1.0, n_atoms=5, hidden=(4,))
    tgt = make_target(src)
    assert all(not p.requires_grad for p in tgt.parameters())
    src(torch.randn(8, 3))  # moves BatchRenorm statistics and the step counter
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    before = [p.clone() for p in tgt.parameters()]
    rm_before = tgt.net.input_norm.running_mean.clone()
    polyak_update(tgt, src, tau=0.25)
    for b, t, s in zip(before, tgt.parameters(), src.parameters()):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * s)
    rm_src = src.net.input_norm.running_mean
    torch.testing.assert_close(tgt.net.input_norm.running_mean, 0.75 * rm_before + 0.25 * rm_src)
    assert int(tgt.net.input_norm.steps) == 1
    polyak_update(tgt, src, tau=1.0)
    for t, s in zip(tgt.parameters(), src.parameters()):
        torch.testing.assert_close(t, s)


def test_expectile_and_iql_losses_closed_form():
    u = torch.tensor([-1.0, 2.0])
    assert expectile_loss(u, 0.7).item() == pytest.approx((0.3 * 1 + 0.7 * 4) / 2)
    assert expectile_loss(u, 0.5).item() == pytest.approx(0.5 * (1 + 4) / 2)
    v = torch.tensor([0.0, 1.0], requires_grad=True)
    q_twins = torch.tensor([[1.0, 0.0], [2.0, -1.0]], requires_grad=True)  # min over twins: [1, -1]
    loss = iql_value_loss(q_twins, v, 0.9)
    assert loss.item() == pytest.approx((0.9 * 1 + 0.1 * 4) / 2)
    loss.backward()
    assert q_twins.grad is None
    torch.testing.assert_close(v.grad, torch.tensor([-0.9, 0.2]))  # -mean(2 |tau - 1(u<0)| u), u = [1, -2]
    q_pred = torch.tensor([[1.0, 2.0], [0.0, 2.5]])
    r, term, next_v = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([2.0, 5.0])
    target = torch.tensor([1.0 + 0.5 * 2.0, 0.0])
    expected = ((q_pred - target) ** 2).mean()
    torch.testing.assert_close(iql_q_loss(q_pred, r, term, next_v, gamma=0.5), expected)


def test_cql_penalty_closed_forms():
    q_s, q_d = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1.0])
    assert cql_penalty(q_s, q_d).item() == pytest.approx(math.log(4.0) - 1.0)
    assert cql_penalty(2 * q_s, q_d, temperature=2.0).item() == pytest.approx(2 * math.log(4.0) - 1.0)
    q_s.requires_grad_(True)
    q_d.requires_grad_(True)
    cql_penalty(q_s, q_d).backward()
    torch.testing.assert_close(q_s.grad, torch.tensor([[0.25, 0.75]]))  # softmax over actions
    torch.testing.assert_close(q_d.grad, torch.tensor([-1.0]))
    # continuous actions: log int_{-1}^{1} exp(c a) da = log(2 sinh(c) / c) by importance
    # sampling from the uniform proposal (density 1/2)
    g = torch.Generator().manual_seed(3)
    c, M = 1.5, 200_000
    a = 2 * torch.rand(1, M, generator=g, dtype=torch.float64) - 1
    est = cql_penalty(c * a, torch.zeros(1, dtype=torch.float64), log_density=torch.full_like(a, math.log(0.5)))
    assert est.item() == pytest.approx(math.log(2 * math.sinh(c) / c), abs=5e-3)
