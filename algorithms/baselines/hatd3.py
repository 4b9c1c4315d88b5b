"""HATD3 — Heterogeneous-Agent Twin Delayed DDPG.

Paper: Zhong, Kuba, Feng, Hu, Ji, Yang, "Heterogeneous-Agent Reinforcement Learning"
(JMLR 2024), implemented in HARL (`harl/algorithms/actors/hatd3.py`,
`harl/runners/off_policy_ha_runner.py`). One of the online baselines of the OMAD paper
(000, Sec. 6.1, Table 3); summary in ../shared/docs/algorithms.md ("Online baselines").

- Actors: one deterministic tanh policy per agent on its own observation, mu_i(o_i)
  (`dmarl.nn.deterministic.DeterministicActor`), with target copies mu'_i.
- Exploration: a_i = clip(mu_i(o_i) + N(0, 0.1^2)) (``HATD3.act``, `exploration_noise`).
- Critic: centralised twin Q on (global state, joint action) with a Polyak target critic.
  TD3 target with target policy smoothing (``HATD3._target_actions``, `target_smoothing`):
    a'_i = clip(mu'_i(o'_i) + clip(N(0, 0.2^2), -0.5, 0.5), -1, 1),
    y = R^(m) + gamma^m (1 - term) min_j Q'_j(s', a')                 (``HATD3._critic_update``)
  with the n-step return R^(m) and gamma^m of `dmarl.data.replay` (HARL's ``n_step``;
  R^(1) = r and gamma^1 = gamma with the default 1-step replay).
- Delayed, sequential policy improvement (HARL's HA update): every ``policy_delay`` critic
  updates, agents are updated one at a time in a random permutation; agent i_m maximises
  Q_1(s, a^{i_1:m-1}_new, mu_{i_m}(o), a^{-i_1:m}) where the earlier agents' actions come from
  their *already updated* actors and the rest from the current ones, all deterministic
  (``HATD3._actor_updates``). The target actors and the target critic move by Polyak
  averaging (tau = 0.005) in the same delayed step (``HATD3.update``).

Choices (configurable): n-step TD targets through ``ReplayBuffer.n_step`` (HARL's tuned
configs: 1 on MPE, 5-25 on MaMuJoCo, e.g. 10 on HalfCheetah 2x3; set in the gins); MSE
critic loss on both twins as HARL's ``TwinContinuousQCritic.train``; the actor loss uses the first twin as HARL (``get_values``);
HARL's defaults (`harl/configs/algos_cfgs/hatd3.yaml` and the tuned MPE/MaMuJoCo configs):
hidden (256, 256) ReLU (MaMuJoCo; MPE uses 128), input LayerNorm on the actors, output
layer gain 0.01, actor lr 5e-4, critic lr 1e-3, gamma 0.99, polyak 0.005, exploration
noise 0.1, policy noise 0.2 clipped at 0.5, policy delay 2.
Adam kernel ``adam_implementation`` (`dmarl.nn.optim.make_adam`): default ``'for-loop'``
(torch's CPU default), so the published leaderboards reproduce bit for bit; ``'fused'`` is
OMAD's default kernel, ~5 % faster here, and the speed scripts bind it for both sides.
"""
from __future__ import annotations

import gin
import numpy as np
import torch

from dmarl.algorithms.multiagent import AgentSlices
from dmarl.algorithms.state import Checkpointed
from dmarl.critics.twin_q import TwinQ, make_target, polyak_update, twin_td_step
from dmarl.data.batch import Batch
from dmarl.envs.base import EnvSpec
from dmarl.nn.optim import ADAM_BETAS, make_adam
from dmarl.nn.deterministic import DeterministicActor, exploration_noise, target_smoothing
from dmarl.registry import register_algorithm


@register_algorithm("hatd3", kind="online", paper="HATD3 (Zhong et al., JMLR 2024; HARL)")
@gin.configurable
class HATD3(Checkpointed):
    """Heterogeneous-agent TD3 with sequential per-agent updates (see module docstring)."""

    supports_n_step = True  # reads Batch.discount
    checkpointed = (
        "actors", "target_actors", "actor_optims", "critic", "critic_target", "critic_optim", "updates",
    )

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        hidden: tuple[int, ...] = (256, 256),
        activation: str = "relu",
        actor_lr: float = 5e-4,
        critic_lr: float = 1e-3,
        gamma: float = 0.99,
        polyak: float = 0.005,
        expl_noise: float = 0.1,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        policy_delay: int = 2,
        huber_delta: float | None = None,
        feature_norm: bool = True,
        out_init_scale: float = 0.01,
        fixed_order: bool = False,
        adam_implementation: str = "for-loop",
    ) -> None:
        self.spec, self.device = spec, device
        self.slices = AgentSlices(spec)
        field = "HATD3.adam_implementation"
        self.gamma, self.polyak, self.huber_delta = gamma, polyak, huber_delta
        self.expl_noise, self.policy_noise, self.noise_clip = expl_noise, policy_noise, noise_clip
        self.policy_delay, self.fixed_order = policy_delay, fixed_order
        self.actors = [
            DeterministicActor(o, a, hidden, activation, feature_norm, out_init_scale).to(device)
            for o, a in zip(spec.obs_dims, spec.action_dims)
        ]
        self.target_actors = [make_target(a) for a in self.actors]
        self.actor_optims = [
            make_adam(a.parameters(), actor_lr, ADAM_BETAS, adam_implementation, field) for a in self.actors
        ]
        self.critic = TwinQ(spec.state_dim + spec.joint_action_dim, hidden, activation).to(device)
        self.critic_target = make_target(self.critic)
        self.critic_optim = make_adam(self.critic.parameters(), critic_lr, ADAM_BETAS, adam_implementation, field)
        self.updates = 0
        self.last_order: list[int] = []

    # -- acting -------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        actions = [actor(self.slices.obs(obs_t, i)) for i, actor in enumerate(self.actors)]
        if explore:
            actions = [exploration_noise(a, self.expl_noise) for a in actions]
        return self.slices.pad_actions(actions).cpu().numpy()

    @torch.no_grad()
    def _target_actions(self, next_obs: torch.Tensor) -> list[torch.Tensor]:
        """Smoothed target actions a'_i = clip(mu'_i(o'_i) + clip(eps, -c, c), -1, 1), [B, A_i]."""
        return [
            target_smoothing(actor(self.slices.obs(next_obs, i)), self.policy_noise, self.noise_clip)
            for i, actor in enumerate(self.target_actors)
        ]

    # -- learning -----------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        self.updates += 1
        metrics = self._critic_update(batch)
        if self.updates % self.policy_delay == 0:
            metrics.update(self._actor_updates(batch))
            for target, actor in zip(self.target_actors, self.actors):
                polyak_update(target, actor, self.polyak)
            polyak_update(self.critic_target, self.critic, self.polyak)
        return metrics

    def _critic_update(self, batch: Batch) -> dict[str, float]:
        with torch.no_grad():
            next_input = torch.cat([batch.next_state, *self._target_actions(batch.next_obs)], dim=-1)
            next_q = torch.minimum(*self.critic_target(next_input))
            target = batch.reward + batch.bootstrap_discount(self.gamma) * (1.0 - batch.terminated) * next_q
        inputs = torch.cat([batch.state, self.slices.joint_actions(batch.actions)], dim=-1)
        return twin_td_step(self.critic, self.critic_optim, inputs, target, self.huber_delta)

    def _actor_updates(self, batch: Batch) -> dict[str, float]:
        n = self.spec.n_agents
        order = list(range(n)) if self.fixed_order else torch.randperm(n).tolist()
        self.last_order = order
        with torch.no_grad():
            actions = [actor(self.slices.obs(batch.obs, i)) for i, actor in enumerate(self.actors)]
        self.critic.requires_grad_(False)
        losses = []
        for i in order:
            obs_i = self.slices.obs(batch.obs, i)
            action_i = self.actors[i](obs_i)
            joint = torch.cat([batch.state, *actions[:i], action_i, *actions[i + 1 :]], dim=-1)
            loss = -self.critic(joint)[0].mean()
            self.actor_optims[i].zero_grad(set_to_none=True)
            loss.backward()
            self.actor_optims[i].step()
            with torch.no_grad():  # later agents see this agent's *updated* policy
                actions[i] = self.actors[i](obs_i)
            losses.append(loss.item())
        self.critic.requires_grad_(True)
        return {"train/actor_loss": float(np.mean(losses))}
