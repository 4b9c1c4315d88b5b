"""Deterministic tanh actors and the TD3 noise helpers shared by deterministic-policy methods
(HATD3, MATD3+BC, OMSD's Dirac actors).

- ``DeterministicActor``: a = tanh(MLP(o)) in [-1, 1]^A (HARL's ``DeterministicPolicy`` with
  ``final_activation_func: tanh``; optional input LayerNorm = HARL's feature normalisation).
- ``exploration_noise``: a + N(0, sigma^2), clipped to the box (TD3 / HARL ``expl_noise``).
- ``target_smoothing``: a + clip(N(0, sigma^2), -c, c), clipped to the box (TD3's target
  policy smoothing; HARL ``policy_noise`` / ``noise_clip``).

Actions live in [-1, 1] (the env adapters map them to each task's bounds), so HARL's
``scale = (high - low) / 2`` is 1 here.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dmarl.nn.mlp import MLP


class DeterministicActor(nn.Module):
    """mu(o) = tanh(MLP(o)): obs ``[..., O]`` -> action ``[..., A]`` in [-1, 1].

    ``feature_norm``: LayerNorm on the input (HARL ``use_feature_normalization``);
    ``out_init_scale``: scale of the output layer's default init (HARL initialises the last
    layer with gain 0.01, so actions start near 0).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        feature_norm: bool = False,
        out_init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.body = MLP(
            obs_dim, action_dim, hidden, activation=activation,
            input_norm="layernorm" if feature_norm else None, out_init_scale=out_init_scale,
        )

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.body(obs))


def exploration_noise(action: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """a + N(0, std^2 I), clipped to [-1, 1] (Gaussian exploration of TD3 / HARL)."""
    if std <= 0:
        return action
    noise = torch.randn(action.shape, generator=generator, device=action.device, dtype=action.dtype)
    return (action + std * noise).clamp(-1.0, 1.0)


def target_smoothing(
    action: Tensor, std: float, clip: float, generator: torch.Generator | None = None
) -> Tensor:
    """TD3 target policy smoothing: a + clip(N(0, std^2 I), -clip, clip), clipped to [-1, 1]."""
    noise = torch.randn(action.shape, generator=generator, device=action.device, dtype=action.dtype)
    return (action + (std * noise).clamp(-clip, clip)).clamp(-1.0, 1.0)
