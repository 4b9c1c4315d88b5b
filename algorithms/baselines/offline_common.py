"""The shared core of the independent offline baselines (BC, MA-TD3+BC, MA-CQL, OMAR, IQL).

OMAR's setting (Pan et al., ICML 2022; code `ling-pan/OMAR`, `algorithms/maddpg.py`): every
agent i has its own deterministic actor mu_i(o_i) and its own twin critic Q_i(o_i, a_i) trained
on the team reward; agents share nothing and are updated from the same dataset batch here
(OMAR's code draws one batch per agent: the same estimator in expectation).

- ``PerAgentPolicy``: the per-agent actors (`dmarl.nn.per_agent.PerAgentActor`), acting,
  optimiser, checkpointing and the per-agent action MSE (``masked_mse``).
- ``PerAgentTD3``: + per-agent twin critics with Polyak targets and the TD3 update
  (TD3: Fujimoto et al. 2018, Eq. for the clipped double-Q target y = r + gamma (1 - d)
  min_j Q'_j(o', a~'), a~' = clip(mu'(o') + clip(N(0, s^2), -c, c), -1, 1) when
  ``policy_noise`` > 0; OMAR's code uses a' = mu'(o') = ``policy_noise = 0``), the actor
  delay ``policy_delay`` and OMAR's per-agent gradient-norm clip and action L2 term.
  Subclasses supply ``critic_regulariser`` (CQL) and ``actor_objective`` (TD3+BC, OMAR).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dmarl.algorithms.state import Checkpointed
from dmarl.critics.twin_q import make_target, polyak_update
from dmarl.data.batch import Batch
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError
from dmarl.nn.deterministic import exploration_noise, target_smoothing
from dmarl.nn.per_agent import PerAgentActor, PerAgentTwinQ, clip_grad_norm_per_agent_


def masked_mse(pred: Tensor, target: Tensor, action_mask: Tensor) -> Tensor:
    """Per-agent E[||pred_i - target_i||^2 / A_i] over the batch, ``[N]`` (mean over each
    agent's true action dims, as TD3+BC's / BC's F.mse_loss on a_i)."""
    sq = ((pred - target) ** 2 * action_mask).sum(-1) / action_mask.sum(-1)
    return sq.reshape(-1, sq.shape[-1]).mean(0)


def _check_positive(owner: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise UserError(f"{owner}.{name} must be > 0, got {value}")


class PerAgentPolicy(Checkpointed):
    """Per-agent deterministic actors on o_i; ``update`` is the subclass's."""

    checkpointed = ("actor", "actor_optim", "updates")

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        *,
        hidden: tuple[int, ...],
        activation: str,
        actor_lr: float,
        expl_noise: float,
        grad_clip: float | None,
    ) -> None:
        _check_positive(type(self).__name__, actor_lr=actor_lr, grad_clip=grad_clip)
        self.spec, self.device, self.n_agents = spec, device, spec.n_agents
        self.expl_noise, self.grad_clip = expl_noise, grad_clip
        self.actor = PerAgentActor(spec.obs_dims, spec.action_dims, hidden, activation).to(device)
        self.action_mask = self.actor.action_mask
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.updates = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        action = self.actor(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        if explore:
            action = exploration_noise(action, self.expl_noise) * self.action_mask
        return action.cpu().numpy()

    def _step(self, optim: torch.optim.Optimizer, loss: Tensor, module: torch.nn.Module) -> None:
        """zero_grad, backward, per-agent gradient clip (``grad_clip``), step."""
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            clip_grad_norm_per_agent_(module.parameters(), self.n_agents, self.grad_clip)
        optim.step()


class PerAgentTD3(PerAgentPolicy):
    """Per-agent TD3 actor-critic: twin Q_i(o_i, a_i), target actor/critic, Polyak."""

    checkpointed = (*PerAgentPolicy.checkpointed, "actor_target", "critic", "critic_target", "critic_optim")

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        *,
        hidden: tuple[int, ...],
        activation: str,
        actor_lr: float,
        critic_lr: float,
        gamma: float,
        polyak: float,
        policy_noise: float,
        noise_clip: float,
        policy_delay: int,
        action_l2: float,
        expl_noise: float,
        grad_clip: float | None,
    ) -> None:
        super().__init__(
            spec, device, hidden=hidden, activation=activation, actor_lr=actor_lr,
            expl_noise=expl_noise, grad_clip=grad_clip,
        )
        _check_positive(type(self).__name__, critic_lr=critic_lr, polyak=polyak, policy_delay=policy_delay)
        self.gamma, self.polyak, self.policy_delay, self.action_l2 = gamma, polyak, policy_delay, action_l2
        self.policy_noise, self.noise_clip = policy_noise, noise_clip
        self.actor_target = make_target(self.actor)
        self.critic = PerAgentTwinQ(spec.obs_dims, spec.action_dims, hidden, activation).to(device)
        self.critic_target = make_target(self.critic)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)

    # -- hooks --------------------------------------------------------------------------
    def critic_regulariser(self, batch: Batch, q_data: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Extra critic loss (summed over agents); ``q_data`` [2, B, N] at the dataset actions."""
        return q_data.new_zeros(()), {}

    def actor_objective(self, batch: Batch, action: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Per-agent actor loss ``[N]`` at the actors' actions ``action`` [B, N, A] (TD3:
        -Q_i^1(o_i, mu_i(o_i)))."""
        return -self.critic.first(batch.obs, action).mean(0), {}

    # -- the update ---------------------------------------------------------------------
    def td_target(self, batch: Batch) -> Tensor:
        """y_i = r + gamma (1 - d) min_j Q'_ij(o'_i, a'_i), ``[B, N]`` (team reward r)."""
        with torch.no_grad():
            next_action = self.actor_target(batch.next_obs)
            if self.policy_noise > 0:
                next_action = target_smoothing(next_action, self.policy_noise, self.noise_clip) * self.action_mask
            next_q = self.critic_target(batch.next_obs, next_action).min(0).values
            discount = batch.bootstrap_discount(self.gamma) * (1.0 - batch.terminated.float())
            if isinstance(discount, Tensor):
                discount = discount.unsqueeze(-1)
            return batch.reward.unsqueeze(-1) + discount * next_q

    def update(self, batch: Batch) -> dict[str, float]:
        self.updates += 1
        metrics = self._critic_update(batch)
        if self.updates % self.policy_delay == 0:
            metrics.update(self._actor_update(batch))
            polyak_update(self.actor_target, self.actor, self.polyak)
            polyak_update(self.critic_target, self.critic, self.polyak)
        return metrics

    def _critic_update(self, batch: Batch) -> dict[str, float]:
        target = self.td_target(batch)
        q = self.critic(batch.obs, batch.actions)  # [2, B, N]
        td = ((q - target) ** 2).mean(1).sum()  # sum over twins and agents of each MSE
        reg, metrics = self.critic_regulariser(batch, q)
        self._step(self.critic_optim, td + reg, self.critic)
        metrics.update({"train/critic_loss": td.item() / (2 * self.n_agents), "train/q_mean": q[0].mean().item()})
        return metrics

    def _actor_update(self, batch: Batch) -> dict[str, float]:
        self.critic.requires_grad_(False)
        action = self.actor(batch.obs)
        per_agent, metrics = self.actor_objective(batch, action)
        l2 = (action**2 * self.action_mask).sum(-1) / self.action_mask.sum(-1)
        loss = (per_agent + self.action_l2 * l2.reshape(-1, self.n_agents).mean(0)).sum()
        self._step(self.actor_optim, loss, self.actor)
        self.critic.requires_grad_(True)
        metrics["train/actor_loss"] = loss.item() / self.n_agents
        return metrics
