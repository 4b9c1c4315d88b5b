"""MAPPO and HAPPO — the on-policy PPO baselines of HARL, trained by `OnPolicyRunner`.

Papers: Yu et al., "The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games"
(NeurIPS 2022 Datasets & Benchmarks; MAPPO); Kuba et al., "Trust Region Policy Optimisation
in Multi-Agent Reinforcement Learning" (ICLR 2022; HAPPO) and Zhong et al.,
"Heterogeneous-Agent Reinforcement Learning" (JMLR 2024; HARL). Implementation reference:
HARL's ``harl/algorithms/actors/{happo,mappo}.py``, ``harl/algorithms/critics/v_critic.py``,
``harl/runners/on_policy_{ha,ma}_runner.py``, ``harl/configs/algos_cfgs/{happo,mappo}.yaml``.
No copy of these papers is in ../shared/papers: equations are numbered where the source is
the standard one (PPO, GAE) and otherwise named, with the HARL function they follow.

Equations -> functions:
- PPO clipped surrogate (Schulman et al. 2017, Eq. 7) with entropy bonus (Eq. 9's S term):
  L_i = -E[ M min(r_i A, clip(r_i, 1 +- eps) A) ] - c_ent E[H(pi_i(.|o_i))],
  r_i = pi_i(a_i|o_i) / pi_i^old(a_i|o_i) (`PPOFamily._actor_epochs`). MAPPO: M = 1.
- HAPPO's sequential update (Kuba et al. 2022, the HAPPO objective; HARL
  ``OnPolicyHARunner.train`` and ``HAPPO.update``): agents
  i_1..i_n in a random order (``fixed_order`` False) are updated one after another, and agent
  i_m's advantage is weighted by M = prod_{j<m} pi_{i_j}^new(a_{i_j}|o) / pi_{i_j}^old(a_{i_j}|o),
  the ratios of the already-updated agents (`PPOFamily._sequential_update`,
  `happo_factor`).
- MAPPO with ``share_param`` (Yu et al. 2022, parameter sharing; HARL
  ``MAPPO.share_param_train``): one actor trained on the pooled samples of all agents
  (`PPOFamily._shared_update`); without it every agent is updated on its own data with M = 1.
- Centralised critic V(s) with the clipped value loss and HARL's Huber loss (MAPPO paper's
  value clipping and value normalisation; HARL ``VCritic.cal_value_loss``):
  L_V = E[max(huber(R^ - V), huber(R^ - clip(V, V_old +- eps)))], R^ = ValueNorm(R)
  (`PPOFamily._critic_epochs`); ValueNorm and GAE (Schulman et al. 2016, Eq. 16) are in
  `dmarl.runners.onpolicy`.
- Gaussian actors with HARL's state-independent std: a ~ N(mu(o), sigma^2),
  sigma = std_y_coef * sigmoid(w / std_x_coef), w initialised to std_x_coef (`GaussianActor`).

HARL's defaults (algos_cfgs/{happo,mappo}.yaml): hidden [128, 128] ReLU with an input
LayerNorm and a LayerNorm after every hidden activation, orthogonal init (gain sqrt 2 in hidden
layers, 0.01 on the action mean, 1 on the value head), zero biases, lr = critic lr = 5e-4,
Adam eps 1e-5, ppo/critic epochs 5, one mini-batch each, clip 0.2, entropy 0.01, value loss
coefficient 1, max grad norm 10, Huber delta 10, ValueNorm on, gamma 0.99; MAPPO shares
parameters in a fixed order, HAPPO does neither.

Choices where HARL is silent or differs (all gin-configurable or documented):
- Env actions are the samples clipped to [-1, 1] (the suite's action box); log-probabilities
  use the unclipped samples, as HARL stores them. ``act(explore=False)`` is the clipped mean.
- Mini-batches are drawn with the runner's numpy generator (HARL uses torch.randperm); pooled
  MAPPO shuffles the N x B pooled samples together (HARL draws one permutation per agent).
- Advantages are normalised over the whole rollout (HARL's EP state: population std + 1e-5).
- HAPPO's factor uses log-probs evaluated just before and after each agent's update (as HARL);
  the PPO ratio inside the update uses the behaviour log-probs of the rollout.
- Activations other than those of ``torch.nn.init.calculate_gain`` get hidden gain 1.
"""
from __future__ import annotations

import math
from typing import Any

import gin
import numpy as np
import torch
from torch import nn

from dmarl.algorithms.multiagent import AgentSlices
from dmarl.algorithms.state import Checkpointed
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError
from dmarl.nn.mlp import MLP
from dmarl.registry import register_algorithm
from dmarl.runners.onpolicy import Rollout, ValueNorm


def orthogonal_init_(mlp: MLP, activation: str, out_gain: float) -> None:
    """HARL's init: orthogonal weights (gain of ``activation`` in hidden layers, ``out_gain`` on
    the output layer) and zero biases."""
    try:
        hidden_gain = nn.init.calculate_gain(activation)
    except ValueError:
        hidden_gain = 1.0
    for k, linear in enumerate(mlp.linears):
        nn.init.orthogonal_(linear.weight, gain=out_gain if k == len(mlp.linears) - 1 else hidden_gain)
        nn.init.zeros_(linear.bias)


def harl_mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...], activation: str, feature_norm: bool, out_gain: float) -> MLP:
    """HARL's MLPBase + output layer: optional input LayerNorm, Linear -> act -> LayerNorm blocks."""
    mlp = MLP(in_dim, out_dim, hidden, activation, "layernorm" if feature_norm else None, "layernorm")
    orthogonal_init_(mlp, activation, out_gain)
    return mlp


class GaussianActor(nn.Module):
    """Diagonal Gaussian policy with HARL's state-independent std (module docstring)."""

    def __init__(
        self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], activation: str, feature_norm: bool,
        std_x_coef: float, std_y_coef: float, gain: float,
    ) -> None:
        super().__init__()
        self.mean = harl_mlp(obs_dim, action_dim, hidden, activation, feature_norm, gain)
        self.std_x_coef, self.std_y_coef = std_x_coef, std_y_coef
        self.log_std = nn.Parameter(torch.full((action_dim,), float(std_x_coef)))

    def dist(self, obs: torch.Tensor) -> torch.distributions.Normal:
        std = torch.sigmoid(self.log_std / self.std_x_coef) * self.std_y_coef
        mean = self.mean(obs)
        return torch.distributions.Normal(mean, std.expand_as(mean))

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.dist(obs).log_prob(actions).sum(-1)


def happo_factor(new_logps: list[torch.Tensor], old_logps: list[torch.Tensor]) -> torch.Tensor:
    """HAPPO's advantage weight for the next agent: prod_j exp(new_j - old_j) over the agents
    already updated (ones when none)."""
    factor = torch.ones_like(old_logps[0]) if old_logps else torch.ones(())
    for new, old in zip(new_logps, old_logps):
        factor = factor * torch.exp(new - old)
    return factor


def value_loss_terms(error: torch.Tensor, huber_delta: float | None) -> torch.Tensor:
    """HARL's per-sample critic loss: Huber(delta) or e^2 / 2."""
    if huber_delta is None:
        return error**2 / 2
    return nn.functional.huber_loss(error, torch.zeros_like(error), reduction="none", delta=huber_delta)


class PPOFamily(Checkpointed):
    """Shared machinery of MAPPO and HAPPO; ``sequential`` (HAPPO) switches on the factor."""

    # a shared actor (MAPPO) is stored once: the unique actors and optimisers
    checkpointed = (
        ("actors", "unique_actors"), ("actor_optims", "unique_optims"), "critic", "critic_optim", "value_norm",
    )
    sequential = False
    default_share_param = False
    default_fixed_order = False

    def __init__(  # value ranges are checked by dmarl.validation before construction
        self,
        spec: EnvSpec,
        device: torch.device,
        hidden: tuple[int, ...] = (128, 128),
        activation: str = "relu",
        feature_norm: bool = True,
        lr: float = 5e-4,
        critic_lr: float = 5e-4,
        opti_eps: float = 1e-5,
        weight_decay: float = 0.0,
        std_x_coef: float = 1.0,
        std_y_coef: float = 0.5,
        gain: float = 0.01,
        ppo_epoch: int = 5,
        critic_epoch: int = 5,
        actor_num_mini_batch: int = 1,
        critic_num_mini_batch: int = 1,
        clip_param: float = 0.2,
        entropy_coef: float = 0.01,
        value_loss_coef: float = 1.0,
        max_grad_norm: float | None = 10.0,
        huber_delta: float | None = 10.0,
        use_clipped_value_loss: bool = True,
        use_valuenorm: bool = True,
        gamma: float = 0.99,
        share_param: bool | None = None,
        fixed_order: bool | None = None,
    ) -> None:
        name = type(self).__name__
        self.spec, self.device, self.slices = spec, device, AgentSlices(spec)
        self.share_param = self.default_share_param if share_param is None else share_param
        self.fixed_order = self.default_fixed_order if fixed_order is None else fixed_order
        if self.share_param and (len(set(spec.obs_dims)) > 1 or len(set(spec.action_dims)) > 1):
            raise UserError(
                f"{name}.share_param = True needs agents with equal observation and action sizes; task "
                f"{spec.name} has obs {spec.obs_dims} and actions {spec.action_dims} (set share_param = False)"
            )
        self.ppo_epoch, self.critic_epoch = ppo_epoch, critic_epoch
        self.actor_num_mini_batch, self.critic_num_mini_batch = actor_num_mini_batch, critic_num_mini_batch
        self.clip_param, self.entropy_coef, self.value_loss_coef = clip_param, entropy_coef, value_loss_coef
        self.max_grad_norm, self.huber_delta = max_grad_norm, huber_delta
        self.use_clipped_value_loss, self.gamma = use_clipped_value_loss, gamma

        def make_actor(i: int) -> GaussianActor:
            return GaussianActor(
                spec.obs_dims[i], spec.action_dims[i], tuple(hidden), activation, feature_norm, std_x_coef, std_y_coef, gain
            ).to(device)

        def make_optim(params: Any, rate: float) -> torch.optim.Adam:
            return torch.optim.Adam(params, lr=rate, eps=opti_eps, weight_decay=weight_decay)

        n = spec.n_agents
        unique = [make_actor(0)] if self.share_param else [make_actor(i) for i in range(n)]
        self.unique_actors = unique
        self.unique_optims = [make_optim(a.parameters(), lr) for a in unique]
        self.actors = unique * n if self.share_param else unique  # actors[i] is agent i's policy
        self.actor_optims = self.unique_optims * n if self.share_param else self.unique_optims
        self.critic = harl_mlp(spec.state_dim, 1, tuple(hidden), activation, feature_norm, 1.0).to(device)
        self.critic_optim = make_optim(self.critic.parameters(), critic_lr)
        self.value_norm = ValueNorm().to(device) if use_valuenorm else None

    # -- acting -------------------------------------------------------------------------
    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def sample_actions(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unclipped samples ``[E, N, A_max]`` (zero padding) and their log-probs ``[E, N]``."""
        obs_t = self._tensor(obs)
        dists = [actor.dist(self.slices.obs(obs_t, i)) for i, actor in enumerate(self.actors)]
        actions = [d.sample() for d in dists]
        logp = torch.stack([d.log_prob(a).sum(-1) for d, a in zip(dists, actions)], dim=-1)
        return self.slices.pad_actions(actions).cpu().numpy(), logp.cpu().numpy()

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        obs_t = self._tensor(obs)
        if explore:
            return np.clip(self.sample_actions(obs)[0], -1.0, 1.0)
        means = [actor.mean(self.slices.obs(obs_t, i)) for i, actor in enumerate(self.actors)]
        return self.slices.pad_actions(means).clamp(-1.0, 1.0).cpu().numpy()

    @torch.no_grad()
    def values(self, state: np.ndarray) -> np.ndarray:
        """The critic's (normalised, when ValueNorm is on) outputs for states ``[M, S]``: ``[M]``."""
        return self.critic(self._tensor(state)).squeeze(-1).cpu().numpy()

    @torch.no_grad()
    def denormalize(self, values: np.ndarray) -> np.ndarray:
        if self.value_norm is None:
            return np.asarray(values)
        return self.value_norm.denormalize(self._tensor(values)).cpu().numpy()

    # -- learning -----------------------------------------------------------------------
    def train_on(self, rollout: Rollout, rng: np.random.Generator) -> dict[str, float]:
        """One PPO iteration on a rollout: the actors (MAPPO or HAPPO), then the critic."""
        batch = rollout.advantages.numel()
        adv = rollout.advantages.reshape(batch)
        adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-5)
        obs = rollout.obs.reshape(batch, *rollout.obs.shape[2:])
        actions = rollout.actions.reshape(batch, *rollout.actions.shape[2:])
        logp = rollout.logp.reshape(batch, -1)
        if self.share_param and not self.sequential:
            metrics = self._shared_update(obs, actions, logp, adv, rng)
        else:
            metrics = self._sequential_update(obs, actions, logp, adv, rng)
        metrics.update(self._critic_epochs(
            rollout.state.reshape(batch, -1), rollout.values.reshape(batch), rollout.returns.reshape(batch), rng
        ))
        return metrics

    def _agent_data(self, obs: torch.Tensor, actions: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.slices.obs(obs, i), actions[:, i, : self.spec.action_dims[i]]

    def _shared_update(
        self, obs: torch.Tensor, actions: torch.Tensor, logp: torch.Tensor, adv: torch.Tensor, rng: np.random.Generator
    ) -> dict[str, float]:
        """Parameter-sharing MAPPO: one actor on the pooled samples of every agent."""
        parts = [self._agent_data(obs, actions, i) for i in range(self.spec.n_agents)]
        pooled_obs = torch.cat([o for o, _ in parts])
        pooled_actions = torch.cat([a for _, a in parts])
        pooled_logp = logp.t().reshape(-1)
        pooled_adv = adv.repeat(self.spec.n_agents)
        return self._actor_epochs(
            0, pooled_obs, pooled_actions, pooled_logp, pooled_adv, torch.ones_like(pooled_adv), rng
        )

    def _sequential_update(
        self, obs: torch.Tensor, actions: torch.Tensor, logp: torch.Tensor, adv: torch.Tensor, rng: np.random.Generator
    ) -> dict[str, float]:
        """Agents one after another; HAPPO weights each by `happo_factor` of the earlier ones."""
        n = self.spec.n_agents
        order = list(range(n)) if self.fixed_order else [int(i) for i in rng.permutation(n)]
        news: list[torch.Tensor] = []
        olds: list[torch.Tensor] = []
        totals: dict[str, float] = {}
        for i in order:
            obs_i, actions_i = self._agent_data(obs, actions, i)
            factor = happo_factor(news, olds) if self.sequential else torch.ones_like(adv)
            with torch.no_grad():
                before = self.actors[i].log_prob(obs_i, actions_i)
            stats = self._actor_epochs(i, obs_i, actions_i, logp[:, i], adv, factor.expand_as(adv), rng)
            if self.sequential:
                with torch.no_grad():
                    news.append(self.actors[i].log_prob(obs_i, actions_i))
                olds.append(before)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value / n
        if self.sequential:
            totals["train/happo_factor_mean"] = float(happo_factor(news, olds).mean())
        return totals

    def _actor_epochs(
        self, i: int, obs: torch.Tensor, actions: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
        factor: torch.Tensor, rng: np.random.Generator,
    ) -> dict[str, float]:
        """``ppo_epoch`` x ``actor_num_mini_batch`` clipped-surrogate steps of agent i's actor."""
        actor, optim = self.actors[i], self.actor_optims[i]
        stats = {"train/actor_loss": 0.0, "train/entropy": 0.0, "train/actor_grad_norm": 0.0, "train/ratio": 0.0}
        size = len(obs) // self.actor_num_mini_batch
        for _ in range(self.ppo_epoch):
            perm = torch.as_tensor(rng.permutation(len(obs)), device=self.device)
            for k in range(self.actor_num_mini_batch):
                idx = perm[k * size : (k + 1) * size]
                dist = actor.dist(obs[idx])
                ratio = torch.exp(dist.log_prob(actions[idx]).sum(-1) - old_logp[idx])
                surrogate = torch.minimum(
                    ratio * adv[idx], ratio.clamp(1.0 - self.clip_param, 1.0 + self.clip_param) * adv[idx]
                )
                policy_loss = -(factor[idx] * surrogate).mean()
                entropy = dist.entropy().sum(-1).mean()
                optim.zero_grad(set_to_none=True)
                (policy_loss - self.entropy_coef * entropy).backward()
                norm = nn.utils.clip_grad_norm_(actor.parameters(), self.max_grad_norm or math.inf)
                optim.step()
                for key, value in (("actor_loss", policy_loss), ("entropy", entropy), ("actor_grad_norm", norm),
                                   ("ratio", ratio.mean())):
                    stats[f"train/{key}"] += float(value.detach()) / (self.ppo_epoch * self.actor_num_mini_batch)
        return stats

    def _critic_epochs(
        self, state: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, rng: np.random.Generator
    ) -> dict[str, float]:
        """``critic_epoch`` x ``critic_num_mini_batch`` steps of the clipped Huber value loss."""
        stats = {"train/critic_loss": 0.0, "train/critic_grad_norm": 0.0}
        size = len(state) // self.critic_num_mini_batch
        steps = self.critic_epoch * self.critic_num_mini_batch
        for _ in range(self.critic_epoch):
            perm = torch.as_tensor(rng.permutation(len(state)), device=self.device)
            for k in range(self.critic_num_mini_batch):
                idx = perm[k * size : (k + 1) * size]
                values = self.critic(state[idx]).squeeze(-1)
                target = returns[idx]
                if self.value_norm is not None:
                    self.value_norm.update(target)
                    target = self.value_norm.normalize(target)
                loss = value_loss_terms(target - values, self.huber_delta)
                if self.use_clipped_value_loss:
                    clipped = old_values[idx] + (values - old_values[idx]).clamp(-self.clip_param, self.clip_param)
                    loss = torch.maximum(loss, value_loss_terms(target - clipped, self.huber_delta))
                loss = loss.mean()
                self.critic_optim.zero_grad(set_to_none=True)
                (self.value_loss_coef * loss).backward()
                norm = nn.utils.clip_grad_norm_(self.critic.parameters(), self.max_grad_norm or math.inf)
                self.critic_optim.step()
                stats["train/critic_loss"] += loss.item() / steps
                stats["train/critic_grad_norm"] += float(norm) / steps
        return stats


@register_algorithm("mappo", kind="onpolicy", paper="MAPPO (Yu et al., NeurIPS 2022 D&B; HARL)")
@gin.configurable
class MAPPO(PPOFamily):
    """MAPPO: simultaneous PPO updates; HARL's default shares one actor, fixed order."""

    default_share_param = True
    default_fixed_order = True


@register_algorithm("happo", kind="onpolicy", paper="HAPPO (Kuba et al., ICLR 2022; HARL)")
@gin.configurable
class HAPPO(PPOFamily):
    """HAPPO: sequential per-agent PPO in a random order with the factor of earlier agents."""

    sequential = True
