"""MA-TD3+BC — TD3+BC (Fujimoto & Gu, NeurIPS 2021) run independently by every agent, the
MA-TD3+BC baseline of OMAR's result tables (Pan et al., ICML 2022) and paper 004 (Tables 2, 4).

Equation map (TD3+BC paper; its text is not in ../shared/papers, so equations are cited by
section and content)
- Sec. 5, the policy objective: pi_i = argmax E[lambda_i Q_i^1(o_i, pi_i(o_i)) - (pi_i(o_i) - a_i)^2]
  with lambda_i = alpha / ((1/B) sum_b |Q_i^1(o_i, pi_i(o_i))|) (no gradient through the
  normaliser), alpha = 2.5: ``MATD3BC.actor_objective`` (per agent: one lambda_i per agent).
- TD3 critic (clipped double Q, target policy smoothing noise 0.2 clipped at 0.5, policy delay
  2, Polyak averaging): `offline_common.PerAgentTD3.td_target` / ``update``.
Per-agent twin Q_i(o_i, a_i) on the team reward, as OMAR's setting.

Choices: TD3+BC's observation normalisation (dataset mean / std) is not applied (the MPE and
MaMuJoCo observations the suite feeds are O(1)-scaled by the adapters); network sizes / lr /
gamma / batch default to OMAR's MPE values (gin/algorithms/matd3_bc.gin) so the baselines share
OMAR's setting (hidden 64, Adam 0.01, gamma 0.95, Polyak 0.01, batch 1024), TD3+BC's own
constants (alpha, noise, delay) stay TD3+BC's. Measured (scripted-expert simple_spread data of
tests/test_offline_baselines.py, 1000 updates of batch 256, one seed): TD3+BC's D4RL values
(Adam 3e-4, gamma 0.99, Polyak 0.005) ended at -89.1, below the random policy (-75.8); OMAR's
MPE values at -51.6 (data -26.4): over so few updates the lambda-normalised Q term dominates the
BC term while the critic is still immature.
"""
from __future__ import annotations

import gin
import torch
from torch import Tensor

from dmarl.algorithms.baselines.offline_common import PerAgentTD3, masked_mse
from dmarl.data.batch import Batch
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError
from dmarl.registry import register_algorithm


def td3_bc_lambda(q_policy: Tensor, alpha: float) -> Tensor:
    """lambda = alpha / mean_b |Q(s_b, pi(s_b))| per agent (TD3+BC Sec. 5), ``q_policy`` [B, N] -> [N]."""
    return alpha / q_policy.abs().mean(0).detach()


@register_algorithm("matd3_bc", kind="offline", paper="MA-TD3+BC (TD3+BC, Fujimoto & Gu 2021, per agent; OMAR baseline)")
@gin.configurable
class MATD3BC(PerAgentTD3):
    """Independent TD3+BC per agent (module docstring)."""

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        alpha: float = 2.5,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "relu",
        actor_lr: float = 0.01,
        critic_lr: float = 0.01,
        gamma: float = 0.95,
        polyak: float = 0.01,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        policy_delay: int = 2,
        action_l2: float = 0.0,
        expl_noise: float = 0.1,
        grad_clip: float | None = None,
    ) -> None:
        if not alpha > 0:
            raise UserError(f"MATD3BC.alpha must be > 0, got {alpha}")
        self.alpha = alpha
        super().__init__(
            spec, device, hidden=hidden, activation=activation, actor_lr=actor_lr, critic_lr=critic_lr,
            gamma=gamma, polyak=polyak, policy_noise=policy_noise, noise_clip=noise_clip,
            policy_delay=policy_delay, action_l2=action_l2, expl_noise=expl_noise, grad_clip=grad_clip,
        )

    def actor_objective(self, batch: Batch, action: Tensor) -> tuple[Tensor, dict[str, float]]:
        q = self.critic.first(batch.obs, action)  # [B, N]
        lam = td3_bc_lambda(q, self.alpha)
        bc = masked_mse(action, batch.actions, self.action_mask)
        loss = -lam * q.mean(0) + bc
        return loss, {"train/bc_loss": bc.mean().item(), "train/lambda": lam.mean().item()}
