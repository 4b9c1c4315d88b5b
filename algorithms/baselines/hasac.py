"""HASAC — Heterogeneous-Agent Soft Actor-Critic.

Paper: Liu, Zhong, et al., "Maximum Entropy Heterogeneous-Agent Reinforcement Learning"
(ICLR 2024), implemented in HARL (`harl/runners/off_policy_ha_runner.py`,
`harl/algorithms/critics/soft_twin_continuous_q_critic.py`). Summary in
../shared/docs/algorithms.md ("Online baselines").

- Actors: one tanh-squashed Gaussian policy per agent on its own observation
  (`dmarl.nn.policies.TanhGaussianActor`).
- Critic: centralised twin-Q on (global state, joint action) with Polyak target networks;
  soft TD target, n-step when the replay buffer gives n-step samples (HARL's ``n_step``):
    y = R^(m) + gamma^m (1 - term) (min_j Q'_j(s', a') - alpha_c sum_i log pi_i(a'_i | o'_i))
  with R^(m) and gamma^m from `dmarl.data.replay` (``Batch.discount``; gamma when 1-step)
  (`HASAC._critic_update`).
- Sequential policy improvement (HARL's HASAC update): agents are updated one at a time in a
  random permutation; agent i_m maximises
  E[min_j Q_j(s, a^{i_1:m-1}_new, a^{i_m}, a^{-i_1:m}) - alpha_i log pi_i(a^{i_m} | o)]
  where the actions of earlier agents come from their *already updated* policies
  (`HASAC._actor_updates`).
- Temperatures (HARL's scheme): one per agent, alpha_i, in agent i's actor loss, tuned toward
  target entropy -dim(A_i) on log pi_i; and a separate *critic* temperature alpha_c in the TD
  target, tuned on the joint log-probability sum_i log pi_i toward sum_i -dim(A_i)
  (HARL's ``SoftTwinContinuousQCritic.update_alpha``) (`HASAC._temperature_losses`). With
  ``auto_alpha`` all start at log alpha = 0 (alpha = 1) as in HARL; without it every alpha is
  fixed at ``initial_alpha`` (HARL's ``alpha``).

Choices (configurable): ``critic_alpha = 'harl'`` (the separate critic temperature above) or
``'per_agent'`` (y uses sum_i alpha_i log pi_i, this module's earlier reading); both
temperature kinds learn at ``alpha_lr`` as in HARL. MSE critic loss (``huber_delta``
selects HARL's optional Huber loss). HARL's defaults: hidden (256, 256) ReLU with input
LayerNorm on the actors (``feature_norm``; the stacked twin critic has none), lr 5e-4 (actors
and critic), alpha lr 3e-4, gamma 0.99, polyak 0.005, batch 1000 (runner), 10,000 warm-up
steps; n_step 20 on MPE is set in the gins (``ReplayBuffer.n_step``).
Adam kernel ``adam_implementation`` (`dmarl.nn.optim.make_adam`): default ``'for-loop'``
(torch's CPU default), so the published leaderboards reproduce bit for bit; ``'fused'`` is
OMAD's default kernel, ~5 % faster here, and the speed scripts bind it for both sides.
"""
from __future__ import annotations

import math

import gin
import numpy as np
import torch

from dmarl.critics.twin_q import TwinQ, make_target, polyak_update, twin_td_step
from dmarl.data.batch import Batch
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError
from dmarl.nn.optim import ADAM_BETAS, make_adam
from dmarl.nn.policies import TanhGaussianActor
from dmarl.registry import register_algorithm
from dmarl.algorithms.multiagent import AgentSlices
from dmarl.algorithms.state import Checkpointed

CRITIC_ALPHAS = ("harl", "per_agent")


@register_algorithm("hasac", kind="online", paper="HASAC (Liu et al., ICLR 2024; HARL)")
@gin.configurable
class HASAC(Checkpointed):
    """Heterogeneous-agent SAC with sequential per-agent updates (see module docstring)."""

    supports_n_step = True  # reads Batch.discount
    checkpointed = ("actors", "actor_optims", "critic", "critic_target", "critic_optim", "log_alpha", "alpha_optim")

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        hidden: tuple[int, ...] = (256, 256),
        actor_lr: float = 5e-4,
        critic_lr: float = 5e-4,
        alpha_lr: float = 3e-4,
        gamma: float = 0.99,
        polyak: float = 0.005,
        initial_alpha: float = 1.0,
        auto_alpha: bool = True,
        critic_alpha: str = "harl",
        target_entropy_scale: float = 1.0,
        huber_delta: float | None = None,
        feature_norm: bool = True,
        fixed_order: bool = False,
        adam_implementation: str = "for-loop",
    ) -> None:
        self.spec, self.device = spec, device
        self.slices = AgentSlices(spec)
        field = "HASAC.adam_implementation"
        self.gamma, self.polyak, self.huber_delta = gamma, polyak, huber_delta
        self.auto_alpha, self.fixed_order = auto_alpha, fixed_order
        self.actors = [
            TanhGaussianActor(o, a, hidden, feature_norm=feature_norm).to(device)
            for o, a in zip(spec.obs_dims, spec.action_dims)
        ]
        self.actor_optims = [
            make_adam(a.parameters(), actor_lr, ADAM_BETAS, adam_implementation, field) for a in self.actors
        ]
        self.critic = TwinQ(spec.state_dim + spec.joint_action_dim, hidden).to(device)
        self.critic_target = make_target(self.critic)
        self.critic_optim = make_adam(self.critic.parameters(), critic_lr, ADAM_BETAS, adam_implementation, field)
        if critic_alpha not in CRITIC_ALPHAS:
            raise UserError(f"HASAC.critic_alpha = {critic_alpha!r}: expected one of {CRITIC_ALPHAS}")
        if not initial_alpha > 0:
            raise UserError(f"HASAC.initial_alpha = {initial_alpha!r}: expected a positive temperature")
        self.critic_alpha = critic_alpha
        # log alpha of every agent, then the critic's (index n_agents), one Adam over all
        self.log_alpha = torch.full((spec.n_agents + 1,), math.log(initial_alpha), device=device, requires_grad=True)
        self.alpha_optim = make_adam([self.log_alpha], alpha_lr, ADAM_BETAS, adam_implementation, field)
        self.target_entropy = -target_entropy_scale * torch.tensor(spec.action_dims, dtype=torch.float32, device=device)

    # -- acting -------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        actions = [actor.act(self.slices.obs(obs_t, i), explore=explore) for i, actor in enumerate(self.actors)]
        return self.slices.pad_actions(actions).cpu().numpy()

    def _sample_all(self, obs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Reparameterised actions and log-probs of every agent: list of [B, A_i], [B, N]."""
        samples = [actor.sample(self.slices.obs(obs, i)) for i, actor in enumerate(self.actors)]
        return [a for a, _ in samples], torch.stack([lp for _, lp in samples], dim=1)

    # -- learning -----------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        metrics = self._critic_update(batch)
        metrics.update(self._actor_updates(batch))
        polyak_update(self.critic_target, self.critic, self.polyak)
        return metrics

    @property
    def agent_alpha(self) -> torch.Tensor:
        """alpha_i of the actor losses, [N] (detached)."""
        return self.log_alpha[:-1].detach().exp()

    def entropy_bonus(self, logp: torch.Tensor) -> torch.Tensor:
        """The critic target's entropy term for per-agent log-probs [B, N]: alpha_c sum_i log pi_i
        ('harl') or sum_i alpha_i log pi_i ('per_agent'), [B]."""
        if self.critic_alpha == "harl":
            return self.log_alpha[-1].detach().exp() * logp.sum(dim=1)
        return (self.agent_alpha * logp).sum(dim=1)

    def _critic_update(self, batch: Batch) -> dict[str, float]:
        with torch.no_grad():
            next_actions, next_logp = self._sample_all(batch.next_obs)
            next_input = torch.cat([batch.next_state, *next_actions], dim=-1)
            next_q = torch.minimum(*self.critic_target(next_input))
            soft_value = next_q - self.entropy_bonus(next_logp)
            target = batch.reward + batch.bootstrap_discount(self.gamma) * (1.0 - batch.terminated) * soft_value
        inputs = torch.cat([batch.state, self.slices.joint_actions(batch.actions)], dim=-1)
        return twin_td_step(self.critic, self.critic_optim, inputs, target, self.huber_delta)

    def _actor_updates(self, batch: Batch) -> dict[str, float]:
        n = self.spec.n_agents
        order = range(n) if self.fixed_order else torch.randperm(n).tolist()
        with torch.no_grad():
            actions, _ = self._sample_all(batch.obs)
        self.critic.requires_grad_(False)
        actor_losses, logps = [], torch.zeros(n, device=self.device)
        for i in order:
            obs_i = self.slices.obs(batch.obs, i)
            action_i, logp_i = self.actors[i].sample(obs_i)
            joint = torch.cat([batch.state, *actions[:i], action_i, *actions[i + 1 :]], dim=-1)
            q = torch.minimum(*self.critic(joint))
            loss = (self.agent_alpha[i] * logp_i - q).mean()
            self.actor_optims[i].zero_grad(set_to_none=True)
            loss.backward()
            self.actor_optims[i].step()
            with torch.no_grad():  # later agents see this agent's *updated* policy
                actions[i] = self.actors[i].sample(obs_i)[0]
            actor_losses.append(loss.item())
            logps[i] = logp_i.detach().mean()
        self.critic.requires_grad_(True)
        metrics = {"train/actor_loss": float(np.mean(actor_losses)), "policy/entropy": float(-logps.sum())}
        if self.auto_alpha:
            alpha_loss = self._temperature_losses(logps)
            self.alpha_optim.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optim.step()
            metrics["train/alpha_loss"] = alpha_loss.item()
        metrics["train/alpha"] = float(self.agent_alpha.mean())
        metrics["train/critic_alpha"] = float(self.log_alpha[-1].detach().exp())
        return metrics

    def _temperature_losses(self, mean_logp: torch.Tensor) -> torch.Tensor:
        """SAC temperature losses, summed: per agent -log alpha_i (E log pi_i + H_i) and for the
        critic -log alpha_c (E sum_i log pi_i + sum_i H_i), H_i = target entropy (-dim A_i).
        ``mean_logp`` [N]: batch means of log pi_i under the pre-update policies."""
        gaps = torch.cat([mean_logp + self.target_entropy, (mean_logp + self.target_entropy).sum().reshape(1)])
        return -(self.log_alpha * gaps.detach()).sum()
