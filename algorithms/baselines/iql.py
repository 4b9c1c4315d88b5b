"""Independent IQL — Implicit Q-Learning (Kostrikov, Nair, Levine, ICLR 2022) run by every
agent on its own observation, with advantage-weighted regression (AWR) policy extraction;
the IQL baseline of the offline MARL tables (paper 004 lists IQL; OMAR's independent setting).

Equation map (IQL paper)
- Eq. 5 (expectile value loss, L_V = E[L_2^tau(min_j Qhat_ij(o_i, a_i) - V_i(o_i))]) and
  Eq. 6 (L_Q = E[(r + gamma (1 - d) V_i(o'_i) - Q_ij(o_i, a_i))^2]), Polyak target twins:
  `dmarl.critics.iql.IQLCritic` / `iql_step` (the critic OMSD uses, moved to the core), one per
  agent: ``IQL.update``.
- Eq. 7 (AWR extraction): L_pi_i = -E[exp(beta (Qhat_i - V_i)) log pi_i(a_i | o_i)], weights
  clipped at 100 (the reference code's EXP_ADV_MAX) with Qhat = min of the target twins and V
  before this step's V update (the reference code's order): ``IQL.actor_loss`` ->
  `dmarl.critics.iql.awr_weights`.
- Policy: the reference code's Gaussian with tanh-bounded mean mu_i(o_i)
  (`dmarl.nn.per_agent.PerAgentActor`) and a state-independent log std per agent and action
  dim (clamped to [-5, 2]); acting is deterministic (the mean).

Defaults (gin/algorithms/iql.gin): the IQL paper's MuJoCo values (tau 0.7, beta 3.0, Adam 3e-4,
2 x 256 ReLU, gamma 0.99, Polyak 0.005, batch 256). Readings: the reference code's cosine
decay of the policy lr is not applied (constant lr); the team reward is every agent's reward.
"""
from __future__ import annotations

import math

import gin
import torch
from torch import Tensor, nn

from dmarl.algorithms.baselines.offline_common import PerAgentPolicy
from dmarl.critics.iql import IQLCritic, awr_weights, iql_step
from dmarl.data.batch import Batch
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError
from dmarl.registry import register_algorithm

LOG_STD_RANGE = (-5.0, 2.0)  # IQL reference code's policy log std bounds


def gaussian_log_prob(action: Tensor, mean: Tensor, log_std: Tensor, mask: Tensor) -> Tensor:
    """log N(action; mean, diag(exp(log_std)^2)) summed over the true dims (``mask``)."""
    z = (action - mean) / log_std.exp()
    per_dim = -0.5 * z**2 - log_std - 0.5 * math.log(2.0 * math.pi)
    return (per_dim * mask).sum(-1)


@register_algorithm("iql", kind="offline", paper="IQL (Kostrikov et al., ICLR 2022), independent per agent with AWR")
@gin.configurable
class IQL(PerAgentPolicy):
    """Per-agent IQL critics (expectile V, twin Q) + AWR Gaussian actors (module docstring)."""

    checkpointed = (*PerAgentPolicy.checkpointed, "log_std", "critics", "v_optims", "q_optims")

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        tau: float = 0.7,
        temperature: float = 3.0,
        max_weight: float = 100.0,
        hidden: tuple[int, ...] = (256, 256),
        activation: str = "relu",
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        gamma: float = 0.99,
        polyak: float = 0.005,
        expl_noise: float = 0.1,
        grad_clip: float | None = None,
    ) -> None:
        if not 0.0 < tau < 1.0 or not temperature >= 0 or not max_weight > 0:
            raise UserError(f"IQL: need 0 < tau < 1, temperature >= 0, max_weight > 0; got {tau}, {temperature}, {max_weight}")
        super().__init__(
            spec, device, hidden=hidden, activation=activation, actor_lr=actor_lr,
            expl_noise=expl_noise, grad_clip=grad_clip,
        )
        self.tau, self.temperature, self.max_weight, self.gamma, self.polyak = tau, temperature, max_weight, gamma, polyak
        self.log_std = nn.Parameter(torch.zeros(spec.n_agents, spec.act_max, device=device))
        self.actor_optim.add_param_group({"params": [self.log_std]})
        self.critics = nn.ModuleList(
            IQLCritic(o, a, hidden, activation) for o, a in zip(spec.obs_dims, spec.action_dims)
        ).to(device)
        self.v_optims = [torch.optim.Adam(c.v.parameters(), lr=critic_lr) for c in self.critics]
        self.q_optims = [torch.optim.Adam(c.q.parameters(), lr=critic_lr) for c in self.critics]

    def _agent(self, batch: Batch, i: int) -> tuple[Tensor, Tensor, Tensor]:
        o, a = self.spec.obs_dims[i], self.spec.action_dims[i]
        return batch.obs[:, i, :o], batch.actions[:, i, :a], batch.next_obs[:, i, :o]

    def advantage_weights(self, batch: Batch) -> Tensor:
        """exp(beta (min_j Qhat_ij - V_i)) clipped, ``[B, N]`` (before this step's V update)."""
        with torch.no_grad():
            cols = []
            for i, critic in enumerate(self.critics):
                obs, action, _ = self._agent(batch, i)
                cols.append(awr_weights(critic.q_target(obs, action).min(0).values, critic.value(obs),
                                        self.temperature, self.max_weight))
            return torch.stack(cols, dim=-1)

    def actor_loss(self, batch: Batch, weights: Tensor) -> Tensor:
        """Per-agent AWR loss -E[w log pi_i(a_i | o_i)], ``[N]``."""
        log_std = self.log_std.clamp(*LOG_STD_RANGE)
        logp = gaussian_log_prob(batch.actions, self.actor(batch.obs), log_std, self.action_mask)  # [B, N]
        return -(weights * logp).mean(0)

    def update(self, batch: Batch) -> dict[str, float]:
        self.updates += 1
        weights = self.advantage_weights(batch)
        metrics: dict[str, list[float]] = {}
        for i, critic in enumerate(self.critics):
            obs, action, next_obs = self._agent(batch, i)
            out = iql_step(
                critic, self.v_optims[i], self.q_optims[i], obs, action, batch.reward, batch.terminated.float(),
                next_obs, tau=self.tau, gamma=self.gamma, polyak=self.polyak,
            )
            for k, v in out.items():
                metrics.setdefault(k, []).append(v)
        loss = self.actor_loss(batch, weights)
        self._step(self.actor_optim, loss.sum(), self.actor)
        result = {f"train/{k}": sum(v) / len(v) for k, v in metrics.items()}
        result.update({"train/actor_loss": loss.mean().item(), "train/awr_weight": weights.mean().item()})
        return result
