"""dmarl.nn and score networks: agent-batched == separate networks, BatchRenorm, embeddings."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmarl.diffusion.score_networks import AgentBatchedScoreMLP, AgentLoopScoreMLP, ScoreMLP
from dmarl.nn import (
    MLP,
    AgentBatchedLinear,
    AgentBatchedMLP,
    BatchRenorm,
    FourierTimeEmbedding,
    SinusoidalTimeEmbedding,
    make_activation,
    make_norm,
    time_embedding,
)

torch.set_default_dtype(torch.float32)


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters()}


def test_agent_batched_linear_equals_separate_linears():
    torch.manual_seed(0)
    linears = [nn.Linear(5, 3).double() for _ in range(4)]
    batched = AgentBatchedLinear.from_modules(linears)
    x = torch.randn(4, 7, 5, dtype=torch.float64)
    y = batched(x)
    ref = torch.stack([lin(x[i]) for i, lin in enumerate(linears)])
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    (y**2).sum().backward()
    sum((lin(x[i]) ** 2).sum() for i, lin in enumerate(linears)).backward()
    for i, lin in enumerate(linears):
        torch.testing.assert_close(batched.weight.grad[i], lin.weight.grad.t(), rtol=0, atol=1e-12)
        torch.testing.assert_close(batched.bias.grad[i, 0], lin.bias.grad, rtol=0, atol=1e-12)
    back = batched.agent_module(2)
    torch.testing.assert_close(back(x[2]), linears[2](x[2]))


@pytest.mark.parametrize("input_norm", [None, "batchnorm"])
def test_agent_batched_mlp_equals_separate_mlps(input_norm):
    torch.manual_seed(1)
    mlps = [MLP(6, 2, (16, 16), "mish", input_norm=input_norm).double() for _ in range(3)]
    batched = AgentBatchedMLP.from_modules(mlps)
    x = torch.randn(5, 4, 3, 6, dtype=torch.float64)  # leading dims [5, 4], N = 3
    for train in (True, False):
        batched.train(train)
        for m in mlps:
            m.train(train)
        y = batched(x)
        ref = torch.stack([m(x[..., i, :]) for i, m in enumerate(mlps)], dim=-2)
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    y.sum().backward()
    ref.sum().backward()
    for k, lin in enumerate(batched.linears):
        for i, m in enumerate(mlps):
            torch.testing.assert_close(lin.weight.grad[i], m.linears[k].weight.grad.t(), rtol=0, atol=1e-12)
    if input_norm:
        torch.testing.assert_close(batched.input_norm.running_mean[1], mlps[1].input_norm.running_mean)
    copy = batched.agent_module(0).eval()
    torch.testing.assert_close(copy(x[..., 0, :]), mlps[0].eval()(x[..., 0, :]), rtol=0, atol=1e-12)


def _score_nets(n_agents: int, input_norm: bool) -> list[ScoreMLP]:
    kw = dict(hidden=(32, 32, 32), time_dim=16, activation="gelu", input_norm=input_norm, out_init_scale=1.0)
    return [ScoreMLP(3, 5, 2, **kw).double() for _ in range(n_agents)]


@pytest.mark.parametrize("input_norm", [False, True])
@pytest.mark.parametrize("scalar_t", [False, True])
def test_agent_batched_score_mlp_equals_separate_networks(input_norm, scalar_t):
    """Outputs and every parameter gradient of the stacked network equal N separate ones."""
    torch.manual_seed(2)
    n = 4
    nets = _score_nets(n, input_norm)
    batched = AgentBatchedScoreMLP.from_modules(nets)
    x, obs, prefix = (torch.randn(8, 2, n, d, dtype=torch.float64) for d in (3, 5, 2))
    t = torch.tensor(0.37, dtype=torch.float64) if scalar_t else torch.rand(8, 2, n, dtype=torch.float64)
    y = batched(x, t, obs, prefix)
    ref = torch.stack(
        [
            net(x[..., i, :], t if scalar_t else t[..., i], obs[..., i, :], prefix[..., i, :])
            for i, net in enumerate(nets)
        ],
        dim=-2,
    )
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    w = torch.randn_like(y)
    (w * y).sum().backward()
    (w * ref).sum().backward()
    for i, net in enumerate(nets):
        stacked = batched.agent_module(i)
        for (name, p_sep), (_, p_cpy) in zip(net.named_parameters(), stacked.named_parameters()):
            assert p_sep.shape == p_cpy.shape, name
        grads = {
            "in_x.weight": batched.in_x.weight.grad[i].t(),
            "in_cond.weight": batched.in_cond.weight.grad[i].t(),
            "in_t.weight": batched.in_t.weight.grad[i].t(),
            "time_in.weight": batched.time_in.weight.grad[i].t(),
            "body.0.weight": batched.body[0].weight.grad[i].t(),
            "body.2.bias": batched.body[2].bias.grad[i, 0],
        }
        sep = _grads(net)
        for name, g in grads.items():
            torch.testing.assert_close(g, sep[name], rtol=0, atol=1e-12)
        if input_norm:
            torch.testing.assert_close(batched.norm_x.weight.grad[i], sep["norm_x.weight"], rtol=0, atol=1e-12)


def test_agent_loop_and_batched_share_interface_and_round_trip():
    torch.manual_seed(3)
    kw = dict(hidden=(16, 16), time_dim=8, out_init_scale=1.0)
    loop = AgentLoopScoreMLP(3, 2, 4, **kw)
    batched = AgentBatchedScoreMLP.from_modules(list(loop.agents))
    x, obs = torch.randn(6, 3, 2), torch.randn(6, 3, 4)
    t = torch.tensor(0.5)
    torch.testing.assert_close(loop.conditioned(obs)(x, t), batched.conditioned(obs)(x, t), rtol=0, atol=1e-6)
    fresh = AgentBatchedScoreMLP(3, 2, 4, **kw)
    assert fresh(x, t, obs).shape == (6, 3, 2)
    copy = fresh.agent_module(1)
    torch.testing.assert_close(copy(x[:, 1], t, obs[:, 1]), fresh(x, t, obs)[:, 1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        AgentBatchedScoreMLP.from_modules([ScoreMLP(2, 4, hidden=(16, 16)), ScoreMLP(2, 4, hidden=(8, 8))])


def test_score_mlp_near_zero_output_at_init_and_obs_free():
    torch.manual_seed(4)
    net = ScoreMLP(2, 0)  # no conditioning: obs has zero features
    out = net(torch.randn(64, 2), torch.rand(64), torch.randn(64, 0))
    assert out.abs().max() < 5e-3
    big = ScoreMLP(2, 0, out_init_scale=1.0)
    assert big(torch.randn(64, 2), torch.rand(64), torch.randn(64, 0)).abs().max() > 5e-3


def _bn_reference(x, mean, std, r, d, weight, bias):
    return ((x - mean) / std * r + d) * weight + bias


def test_batch_renorm_warmup_is_plain_batchnorm_and_eval_uses_running_stats():
    torch.manual_seed(5)
    brn = BatchRenorm(4, warmup_steps=2)
    with torch.no_grad():
        brn.running_mean.fill_(3.0)
        brn.running_var.fill_(9.0)
    x = torch.randn(32, 4) * 2 + 1
    plain = F.batch_norm(x, None, None, brn.weight, brn.bias, True, 0.0, brn.eps)
    for _ in range(2):  # warm-up calls: plain BN whatever the running statistics
        torch.testing.assert_close(brn(x), plain)
    assert int(brn.steps) == 2
    var, mean = torch.var_mean(x, 0, unbiased=False)
    torch.testing.assert_close(brn.running_mean, 3.0 * 0.99**2 + mean * (1 - 0.99**2))  # momentum 0.99
    torch.testing.assert_close(brn.running_var, 9.0 * 0.99**2 + var * (1 - 0.99**2))
    r_std = torch.sqrt(brn.running_var + brn.eps)
    r = (torch.sqrt(var + brn.eps) / r_std).clamp(1 / 3, 3)
    d = ((mean - brn.running_mean) / r_std).clamp(-5, 5)
    expected = _bn_reference(x, mean, torch.sqrt(var + brn.eps), r, d, brn.weight, brn.bias)
    y = brn(x)  # third call: warmed up, r and d from the running statistics
    torch.testing.assert_close(y, expected)
    assert not torch.allclose(y, plain, atol=1e-3)
    brn.eval()
    steps = int(brn.steps)
    ref_eval = (x - brn.running_mean) / torch.sqrt(brn.running_var + brn.eps) * brn.weight + brn.bias
    torch.testing.assert_close(brn(x), ref_eval)
    assert int(brn.steps) == steps  # evaluation neither counts nor updates statistics


def test_batch_renorm_r_and_d_clipped_and_stop_gradient():
    torch.manual_seed(6)
    brn = BatchRenorm(3, warmup_steps=0)
    x = (torch.randn(64, 3) * torch.tensor([1.0, 10.0, 0.01]) + torch.tensor([0.0, 50.0, 0.0])).requires_grad_(True)
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([0.0, 0.0, 0.0]))
        brn.running_var.copy_(torch.tensor([1.0, 1.0, 1.0]))
    rm, rv = brn.running_mean.clone(), brn.running_var.clone()
    y = brn(x)
    var, mean = torch.var_mean(x.detach(), 0, unbiased=False)
    std, r_std = torch.sqrt(var + brn.eps), torch.sqrt(rv + brn.eps)
    r_raw, d_raw = std / r_std, (mean - rm) / r_std
    r, d = r_raw.clamp(1 / 3, 3), d_raw.clamp(-5, 5)
    assert r_raw[1] > 3 and d_raw[1] > 5 and r_raw[2] < 1 / 3  # the clips are active
    assert r[1] == 3 and d[1] == 5 and r[2] == pytest.approx(1 / 3)
    # reference with r, d as constants: output and gradient must match (stop-gradient on r, d)
    x_ref = x.detach().clone().requires_grad_(True)
    v2, m2 = torch.var_mean(x_ref, 0, unbiased=False)
    ref = _bn_reference(x_ref, m2, torch.sqrt(v2 + brn.eps), r, d, 1.0, 0.0)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    (g * y).sum().backward()
    (g * ref).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(brn.running_mean, rm.lerp(mean, 0.01))
    torch.testing.assert_close(brn.running_var, rv.lerp(var, 0.01))


def test_batch_renorm_unclipped_matches_formula():
    torch.manual_seed(7)
    brn = BatchRenorm(2, warmup_steps=0)
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([0.1, -0.2]))
        brn.running_var.copy_(torch.tensor([0.8, 1.5]))
        brn.weight.copy_(torch.tensor([2.0, 0.5]))
        brn.bias.copy_(torch.tensor([0.3, -1.0]))
    x = torch.randn(50, 5, 2)  # any leading dims
    r_std = torch.sqrt(brn.running_var + brn.eps)
    rm = brn.running_mean.clone()
    y = brn(x)
    var, mean = torch.var_mean(x.reshape(-1, 2), 0, unbiased=False)
    std = torch.sqrt(var + brn.eps)
    ref = _bn_reference(x, mean, std, std / r_std, (mean - rm) / r_std, brn.weight, brn.bias)
    torch.testing.assert_close(y, ref)


def test_time_embeddings():
    t = torch.tensor([0.0, 0.25, 1.0])
    fourier = FourierTimeEmbedding(8, w_min=1.0, w_max=4.0)
    e = fourier(t)
    assert e.shape == (3, 8)
    torch.testing.assert_close(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(e[2, :4], torch.sin(torch.linspace(1.0, 4.0, 4)))
    sin = SinusoidalTimeEmbedding(6, scale=10.0)
    torch.testing.assert_close(sin(torch.tensor(0.1))[0], torch.tensor(math.sin(1.0)))
    assert time_embedding("fourier", 4)(torch.rand(2, 3)).shape == (2, 3, 4)
    with pytest.raises(ValueError):
        time_embedding("nope", 4)
    with pytest.raises(ValueError):
        FourierTimeEmbedding(5)


def test_factories_reject_unknown_names():
    with pytest.raises(ValueError):
        make_activation("swishy")
    with pytest.raises(ValueError):
        make_norm("groupnorm", 4)
    assert isinstance(make_norm("batchrenorm", 4, momentum=0.9), BatchRenorm)
    with pytest.raises(ValueError):
        AgentBatchedMLP.from_modules([MLP(2, 2, (4,), hidden_norm="layernorm")])
