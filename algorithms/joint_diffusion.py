"""What MADPMD and MASDAC share: one DDPM diffusion policy over the *joint* action
(centralised execution), a twin-Q critic with Polyak targets, Gaussian exploration noise
whose scale follows a tuned temperature, and the reweighted score-matching weights.

Both baselines extend the single-agent algorithms of Ma, Chen, Wang, Li, Dai, "Efficient
Online Reinforcement Learning for Diffusion Policy" (ICML 2025, arXiv 2502.00361; reference
code `mahaitongdae/diffusion_policy_online_rl`, `relax/algorithm/{dpmd,sdac}.py`,
`relax/network/diffv2.py`) to MARL the way the OMAD paper (000, App. D.3) describes:
"implemented using a centralized training and centralized execution paradigm".

Centralised execution. ``act`` receives only the padded observations, so the joint policy
conditions on the *global observation* c = concat_i o_i (each agent's true, unpadded
observation; in MPE this is exactly the env state) and outputs the joint action
a = (a^1, ..., a^N) in [-1, 1]^{sum_i A_i}, split back into per-agent actions. The critic
Q_j(s, a) sees the env's global state s and the joint action, like every other critic of
the suite (HASAC, HATD3, OMAD), so critics compare on equal terms.

Policy (DDPM, Ho et al. 2020): epsilon network eps_theta(a_t, t, c) (`ScoreMLP`, 3 x 256
mish as the reference), T = 20 steps of a linear beta schedule (the reference scales
linspace(1e-4, 0.999) by 0.8 -> 8e-5 .. 0.7992), sampled by the core `ddpm_sample` with x0
clipped to [-1, 1] (``JointDiffusionBase._sample``).

Critic (``JointDiffusionBase._critic_update``), as the reference code: rewards scaled by
``reward_scale`` (0.2), y = r + gamma (1 - term) min_j Q'_j(s', a'), a' ~ pi(.|c') (with
exploration noise, as the reference's ``get_action``), MSE on both twins; targets move by
Polyak tau = 0.005 every ``policy_delay`` (2) updates, the policy is updated on the same
schedule. ``train/q_mean`` is reported in unscaled reward units (Q / reward_scale).

Exploration and temperature (the reference's scheme, ``JointDiffusionBase._explore`` /
``_alpha_update``): actions get additive Gaussian noise N(0, (noise_scale * alpha)^2 I)
when exploring; every ``alpha_delay`` (250) updates alpha takes one Adam step on
  L(log alpha) = -log alpha (H_target - H_noise),  H_noise = dim(A)/2 log(2 pi e (noise_scale alpha)^2),
  H_target = -0.9 dim(A)
(H_noise detached), i.e. alpha grows while the noise entropy is below the target. The same
alpha is the temperature of the weights exp(Q / alpha). Evaluation (``explore=False``) samples
the chain without the additive noise.

Not reproduced: the reference's best-of-N action selection under Q at acting time (``act``
sees observations, not the state the critic needs; the papers' algorithm boxes sample one
action) and its EMA "target policy", used there only for saved policies (we evaluate the
current policy). The policy lr decays linearly from ``lr`` to ``policy_lr_end`` between
policy updates ``lr_decay_begin`` and ``lr_decay_begin + lr_decay_steps`` (reference:
3e-4 -> 3e-5 over 25k..75k); the critic lr stays constant.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

from dmarl.algorithms.multiagent import AgentSlices
from dmarl.algorithms.state import Checkpointed
from dmarl.critics.twin_q import TwinQ, make_target, polyak_update, twin_td_step
from dmarl.data.batch import Batch
from dmarl.diffusion.samplers import ddpm_sample
from dmarl.diffusion.schedules import DiscreteSchedule
from dmarl.diffusion.score_networks import ScoreMLP
from dmarl.envs.base import EnvSpec

Q_NORMALIZATIONS = ("none", "running", "batch", "state")


# -- reweighted score-matching weights (module level so tests check them against brute force) --


def normalize_q(q: Tensor, mean: Tensor | float = 0.0, std: Tensor | float = 1.0, clip: float | None = None) -> Tensor:
    """z = (q - mean) / std, clipped to [-clip, clip] when ``clip`` is given (DPMD reference:
    running mean/std of Q, clip 3)."""
    z = (q - mean) / std
    return z if clip is None else z.clamp(-clip, clip)


def dpmd_weights(z: Tensor, alpha: Tensor | float) -> Tensor:
    """DPMD weights exp(z / alpha) over a batch of current-policy samples ``z [B]``,
    self-normalised to mean 1 within the batch: w_b = exp(z_b / alpha) / mean_j exp(z_j / alpha)
    (computed as B * softmax(z / alpha), so no overflow); no gradient. The normalisation only
    rescales the loss by a batch constant, i.e. it estimates the normaliser of
    pi_{k+1} = pi_k exp(Q / alpha) / Z from the batch."""
    z = z.detach()
    return z.shape[0] * torch.softmax(z / alpha, dim=0)


def sdac_weights(z: Tensor, alpha: Tensor | float) -> Tensor:
    """SDAC weights softmax_k(z_k / alpha) over the K candidate actions of each state,
    ``z [B, K]`` -> ``[B, K]`` summing to 1 per state; no gradient."""
    return torch.softmax(z.detach() / alpha, dim=-1)


def sdac_candidates(schedule: DiscreteSchedule, a_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """SDAC's reverse-sampled candidates a0^k = clip((a_t - sigma_t eps^k) / alpha_t, -1, 1):
    ``a_t [B, A]``, ``t [B]``, ``noise [B, K, A]`` -> ``[B, K, A]``. With eps^k ~ N(0, I) these
    are draws of the Gaussian q~(a0 | a_t) proportional to N(a_t; alpha_t a0, sigma_t^2 I)
    (reference ``get_recon``)."""
    alpha, sigma = schedule.alpha_sigma(t)
    return ((a_t.unsqueeze(-2) - sigma[:, None, None] * noise) / alpha[:, None, None]).clamp(-1.0, 1.0)


def sdac_loss(eps_pred: Tensor, noise: Tensor, weights: Tensor) -> Tensor:
    """Reverse-sampling weighted score matching: mean_b sum_k w_bk ||eps_theta(a_t, t, c)_b - eps_bk||^2
    (``eps_pred [B, A]``, ``noise [B, K, A]``, ``weights [B, K]``); the network is evaluated
    once per (state, a_t) since every candidate shares a_t."""
    err = ((eps_pred.unsqueeze(-2) - noise) ** 2).sum(-1)
    return (weights * err).sum(-1).mean()


def noise_entropy(noise_std: Tensor, dim: int) -> Tensor:
    """Entropy of N(0, noise_std^2 I_dim): dim / 2 log(2 pi e noise_std^2)."""
    return 0.5 * dim * torch.log(2.0 * math.pi * math.e * noise_std**2)


class JointDiffusionBase(Checkpointed, ABC):
    """Shared machinery of the centralised-execution diffusion baselines (module docstring).

    Subclasses implement ``_policy_loss(batch, cache) -> (loss, metrics)``; ``cache`` holds
    the next-state samples drawn for the critic target (``next_cond``, ``next_actions``).
    """

    checkpointed = (
        "policy", "policy_optim", "critic", "critic_target", "critic_optim", "log_alpha", "alpha_optim", "q_stats",
        "q_stats_ready", "updates", "policy_updates",
    )

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        *,
        hidden: tuple[int, ...],
        activation: str,
        time_dim: int,
        diffusion_steps: int,
        beta_start: float,
        beta_end: float,
        lr: float,
        critic_lr: float | None,
        policy_lr_end: float,
        lr_decay_begin: int,
        lr_decay_steps: int,
        gamma: float,
        tau: float,
        policy_delay: int,
        reward_scale: float,
        initial_alpha: float,
        alpha_lr: float,
        alpha_delay: int,
        auto_alpha: bool,
        noise_scale: float,
        target_entropy_scale: float,
        q_normalization: str,
        q_stats_rate: float,
    ) -> None:
        if q_normalization not in Q_NORMALIZATIONS:
            raise ValueError(f"q_normalization must be one of {Q_NORMALIZATIONS}, got {q_normalization!r}")
        self.spec, self.device = spec, device
        self.slices = AgentSlices(spec)
        self.action_dim = spec.joint_action_dim
        self.cond_dim = sum(spec.obs_dims)
        self.gamma, self.tau, self.policy_delay, self.reward_scale = gamma, tau, policy_delay, reward_scale
        self.lr, self.policy_lr_end = lr, policy_lr_end
        self.lr_decay_begin, self.lr_decay_steps = lr_decay_begin, lr_decay_steps
        self.alpha_delay, self.auto_alpha, self.noise_scale = alpha_delay, auto_alpha, noise_scale
        self.target_entropy = -target_entropy_scale * self.action_dim
        self.q_normalization, self.q_stats_rate = q_normalization, q_stats_rate

        self.schedule = DiscreteSchedule.linear(diffusion_steps, beta_start, beta_end).to(device)
        self.policy = ScoreMLP(
            self.action_dim, self.cond_dim, hidden=hidden, activation=activation, time_dim=time_dim,
            time_embedding_kind="sinusoidal", out_init_scale=1.0,
        ).to(device)
        self.policy_optim = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.critic = TwinQ(spec.state_dim + self.action_dim, hidden, activation).to(device)
        self.critic_target = make_target(self.critic)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=lr if critic_lr is None else critic_lr)
        self.log_alpha = torch.tensor(math.log(initial_alpha), device=device, requires_grad=True)
        self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=alpha_lr)
        self.updates = 0
        self.policy_updates = 0
        # running mean / std of Q for the weights' normalisation (set from the first batch)
        self.q_stats = torch.tensor([0.0, 1.0], device=device)
        self.q_stats_ready = False

    # -- helpers ------------------------------------------------------------------------
    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    def joint_obs(self, obs: Tensor) -> Tensor:
        """Global observation c = concat_i o_i (true dims): ``[..., N, O_max]`` -> ``[..., sum_i O_i]``."""
        return torch.cat([self.slices.obs(obs, i) for i in range(self.spec.n_agents)], dim=-1)

    def split_actions(self, joint: Tensor) -> list[Tensor]:
        """Joint action ``[..., sum_i A_i]`` -> per-agent ``[..., A_i]``."""
        return list(torch.split(joint, list(self.spec.action_dims), dim=-1))

    @torch.no_grad()
    def _sample(self, cond: Tensor) -> Tensor:
        """a0 ~ pi_theta(. | c) by DDPM ancestral sampling, ``cond [B, C]`` -> ``[B, sum_i A_i]``."""
        return ddpm_sample(self.policy.conditioned(cond), self.schedule, (cond.shape[0], self.action_dim))

    def _explore(self, action: Tensor) -> Tensor:
        """a + N(0, (noise_scale alpha)^2 I), clipped to [-1, 1]."""
        std = self.noise_scale * self.alpha
        return (action + std * torch.randn_like(action)).clamp(-1.0, 1.0)

    def _min_q(self, critic: TwinQ, state: Tensor, action: Tensor) -> Tensor:
        """min_j Q_j(s, a); ``state`` broadcasts over extra leading dims of ``action``."""
        while state.dim() < action.dim():
            state = state.unsqueeze(-2)
        state = state.expand(*action.shape[:-1], state.shape[-1])
        return torch.minimum(*critic(state, action))

    def _normalize_q(self, q: Tensor, clip: float | None = None) -> Tensor:
        """Q normalised for the weights: raw ('none'), by running mean/std ('running', rate
        ``q_stats_rate``, initialised from the first batch), by the batch ('batch'), or per
        state over the samples of that state (last dim of ``q [B, M]``, 'state')."""
        if self.q_normalization == "none":
            return q
        if self.q_normalization == "state":
            if q.dim() < 2 or q.shape[-1] < 2:
                raise ValueError("q_normalization='state' needs several samples per state")
            return normalize_q(q, q.mean(-1, keepdim=True), q.std(-1, keepdim=True).clamp_min(1e-6), clip)
        if self.q_normalization == "batch":
            return normalize_q(q, q.mean(), q.std().clamp_min(1e-6), clip)
        with torch.no_grad():
            batch_stats = torch.stack([q.mean(), q.std().clamp_min(1e-6)])
            if not self.q_stats_ready:
                self.q_stats.copy_(batch_stats)
                self.q_stats_ready = True
            else:
                self.q_stats.lerp_(batch_stats, self.q_stats_rate)
        return normalize_q(q, self.q_stats[0], self.q_stats[1], clip)

    def _policy_lr(self) -> float:
        """Linear decay lr -> policy_lr_end over policy updates [begin, begin + steps]."""
        frac = min(max(self.policy_updates - self.lr_decay_begin, 0) / max(self.lr_decay_steps, 1), 1.0)
        return self.lr + frac * (self.policy_lr_end - self.lr)

    # -- acting -------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        action = self._sample(self.joint_obs(obs_t))
        if explore:
            action = self._explore(action)
        return self.slices.pad_actions(self.split_actions(action)).cpu().numpy()

    # -- learning -----------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        self.updates += 1
        metrics, cache = self._critic_update(batch)
        if self.updates % self.policy_delay == 0:
            for group in self.policy_optim.param_groups:
                group["lr"] = self._policy_lr()
            loss, policy_metrics = self._policy_loss(batch, cache)
            self.policy_optim.zero_grad(set_to_none=True)
            loss.backward()
            self.policy_optim.step()
            self.policy_updates += 1
            metrics["train/actor_loss"] = loss.item()
            metrics.update(policy_metrics)
            polyak_update(self.critic_target, self.critic, self.tau)
        if self.auto_alpha and self.updates % self.alpha_delay == 0:
            metrics["train/alpha_loss"] = self._alpha_update()
        metrics["train/alpha"] = self.alpha.item()
        metrics["policy/noise_entropy"] = noise_entropy(self.noise_scale * self.alpha, self.action_dim).item()
        return metrics

    def _critic_update(self, batch: Batch) -> tuple[dict[str, float], dict[str, Tensor]]:
        next_cond = self.joint_obs(batch.next_obs)
        with torch.no_grad():
            next_actions = self._explore(self._sample(next_cond))
            next_q = self._min_q(self.critic_target, batch.next_state, next_actions)
            target = self.reward_scale * batch.reward + self.gamma * (1.0 - batch.terminated) * next_q
        inputs = torch.cat([batch.state, self.slices.joint_actions(batch.actions)], dim=-1)
        metrics = twin_td_step(self.critic, self.critic_optim, inputs, target)
        metrics["train/q_mean"] /= self.reward_scale  # report Q in unscaled reward units
        return metrics, {"next_cond": next_cond, "next_actions": next_actions}

    @abstractmethod
    def _policy_loss(self, batch: Batch, cache: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """The subclass's diffusion policy loss and its metrics."""

    def _alpha_update(self) -> float:
        """One Adam step on -log alpha (H_target - H_noise(alpha)) (H_noise detached)."""
        entropy = noise_entropy(self.noise_scale * self.alpha, self.action_dim)
        loss = -self.log_alpha * (self.target_entropy - entropy)
        self.alpha_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.alpha_optim.step()
        return loss.item()
