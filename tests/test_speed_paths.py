"""Faster paths of issue 16 compute the same maths: BatchRenorm's two-pass batch statistics
against torch.var_mean (values and input gradients, leading dims, a large offset)."""
from __future__ import annotations

import torch

from dmarl.nn.batch_renorm import BatchRenorm


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
