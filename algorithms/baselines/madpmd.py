"""MADPMD — Diffusion Policy Mirror Descent over the joint action (centralised execution).

Paper: Ma, Chen, Wang, Li, Dai, "Efficient Online Reinforcement Learning for Diffusion
Policy" (ICML 2025, arXiv 2502.00361; reference code `mahaitongdae/diffusion_policy_online_rl`,
`relax/algorithm/dpmd.py`), extended to MARL as the OMAD paper's MADPMD baseline (000,
Sec. 6.1, App. D.3, Table 3): one diffusion policy over the joint action, conditioned on the
global observation. Summary in ../shared/docs/algorithms.md ("Online baselines in paper 000").
Shared machinery (joint DDPM policy, twin-Q critic, exploration noise, temperature) is in
`dmarl.algorithms.joint_diffusion`; see its docstring.

- Policy mirror descent step: pi_{k+1}(a|s) proportional to pi_k(a|s) exp(Q(s, a) / alpha).
- Reweighted score matching (the paper's DPMD loss): with a0 ~ pi_k(.|s) (samples of the
  *current* policy, no gradient) the denoising loss weighted by exp(Q/alpha),
    L(theta) = E_{s, a0 ~ pi_k, t, eps}[ w(s, a0) || eps_theta(sqrt(abar_t) a0 + sqrt(1 - abar_t) eps, t, s) - eps ||^2 ],
  has the score of pi_{k+1} as its minimiser (``MADPMD._policy_loss`` with the core
  `denoising_loss`).
- Weights (`dpmd_weights`): w = exp(z / alpha) with z = clip((Q - m) / sd, -3, 3),
  Q = min_j Q_j, then normalised to mean 1 within the batch for stability (a self-normalised
  estimate of 1 / Z). m / sd are the batch mean / std of Q (``q_normalization='batch'``).
  The reference uses running estimates (rate 0.001, ``'running'`` here, initialised from the
  first batch; we also fix its precedence slip ``q - m / sd``): while Q moves fast early in
  training the running mean lags by many standard deviations, every z sits on the clip and
  the weights are uniform for thousands of updates (measured: effective sample size 1.0 over
  a whole CPU-scale run), so the batch statistics are the default.
- Samples: as the reference, the a0 are the current-policy samples at the *next* states drawn
  for the critic target (with exploration noise), reused so that one DDPM chain per update
  serves both (``reuse_target_samples=False`` draws fresh samples at s instead).
- Per-state normaliser (option, not in the reference): ``samples_per_state`` M > 1 draws M
  fresh samples per state and weights them M softmax_m(z_m / alpha) within the state, the
  self-normalised estimate of exp(Q / alpha) / Z(s); with ``q_normalization='state'`` z is
  standardised over the M samples of each state.
- Critic, delays, exploration noise and temperature: `JointDiffusionBase`.

Measured at CPU scale (MPE simple_spread N=3, gin/experiments/madpmd_simple_spread_cpu.gin,
one seed): the eval return falls from -76 (untrained, about random) to -110: the batch
weights mostly rank *states* (Q varies far more across states than across actions), so the
update is close to self-distillation of the policy's own samples, which drifts. Reusing or
redrawing the samples, and dropping the exploration noise from them, change nothing
(-108 / -120 at 24k steps); M = 4 with per-state standardisation stops the drift (-76).

Defaults (reference code ``scripts/train_mujoco.py`` / ``create_diffv2_net``): 3 x 256 mish
networks, T = 20, lr 3e-4 decaying to 3e-5 for the policy, reward scale 0.2, tau 0.005,
policy delay 2, initial alpha 5, alpha lr 7e-3 every 250 updates, noise scale 0.1, target
entropy -0.9 dim(A).
"""
from __future__ import annotations

import gin
import torch
from torch import Tensor

from dmarl.algorithms.joint_diffusion import JointDiffusionBase, dpmd_weights
from dmarl.data.batch import Batch
from dmarl.diffusion.losses import denoising_loss
from dmarl.envs.base import EnvSpec
from dmarl.registry import register_algorithm


@register_algorithm("madpmd", kind="online", paper="MADPMD: DPMD (Ma et al., ICML 2025) on the joint action")
@gin.configurable
class MADPMD(JointDiffusionBase):
    """Joint-action diffusion policy trained by exp(Q/alpha)-weighted denoising (module docstring)."""

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        hidden: tuple[int, ...] = (256, 256, 256),
        activation: str = "mish",
        time_dim: int = 64,
        diffusion_steps: int = 20,
        beta_start: float = 8e-5,
        beta_end: float = 0.7992,
        lr: float = 3e-4,
        critic_lr: float | None = None,
        policy_lr_end: float = 3e-5,
        lr_decay_begin: int = 25_000,
        lr_decay_steps: int = 50_000,
        gamma: float = 0.99,
        tau: float = 0.005,
        policy_delay: int = 2,
        reward_scale: float = 0.2,
        initial_alpha: float = 5.0,
        alpha_lr: float = 7e-3,
        alpha_delay: int = 250,
        auto_alpha: bool = True,
        noise_scale: float = 0.1,
        target_entropy_scale: float = 0.9,
        q_normalization: str = "batch",
        q_stats_rate: float = 0.001,
        q_clip: float | None = 3.0,
        reuse_target_samples: bool = True,
        samples_per_state: int = 1,
    ) -> None:
        super().__init__(
            spec, device, hidden=hidden, activation=activation, time_dim=time_dim,
            diffusion_steps=diffusion_steps, beta_start=beta_start, beta_end=beta_end, lr=lr,
            critic_lr=critic_lr, policy_lr_end=policy_lr_end, lr_decay_begin=lr_decay_begin,
            lr_decay_steps=lr_decay_steps, gamma=gamma, tau=tau, policy_delay=policy_delay,
            reward_scale=reward_scale, initial_alpha=initial_alpha, alpha_lr=alpha_lr,
            alpha_delay=alpha_delay, auto_alpha=auto_alpha, noise_scale=noise_scale,
            target_entropy_scale=target_entropy_scale, q_normalization=q_normalization,
            q_stats_rate=q_stats_rate,
        )
        self.q_clip, self.reuse_target_samples = q_clip, reuse_target_samples
        self.samples_per_state = samples_per_state

    def _policy_loss(self, batch: Batch, cache: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """E[w(s, a0) ||eps_theta(a_t, t, c) - eps||^2] over current-policy samples a0."""
        if self.samples_per_state > 1:
            return self._per_state_loss(batch)
        if self.reuse_target_samples:
            cond, state, a0 = cache["next_cond"], batch.next_state, cache["next_actions"]
        else:
            cond, state = self.joint_obs(batch.obs), batch.state
            a0 = self._explore(self._sample(cond))
        with torch.no_grad():
            q = self._min_q(self.critic, state, a0)
            weights = dpmd_weights(self._normalize_q(q, self.q_clip), self.alpha)
        per_sample = denoising_loss(self.policy.conditioned(cond), self.schedule, a0)
        loss = (weights * per_sample).mean()
        ess = weights.sum() ** 2 / (weights**2).sum() / weights.shape[0]
        return loss, {"train/weight_ess": ess.item(), "train/weight_max": weights.max().item()}

    def _per_state_loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """M = ``samples_per_state`` fresh samples per state, weights M softmax_m(z_m / alpha)
        within each state (mean 1 per state): the self-normalised estimate of
        exp(Q(s, a) / alpha) / Z(s), Z(s) = E_{a ~ pi_k} exp(Q(s, a) / alpha)."""
        m = self.samples_per_state
        cond = self.joint_obs(batch.obs).repeat_interleave(m, dim=0)
        with torch.no_grad():
            a0 = self._explore(self._sample(cond))
            q = self._min_q(self.critic, batch.state.repeat_interleave(m, dim=0), a0).view(-1, m)
            weights = m * torch.softmax(self._normalize_q(q, self.q_clip) / self.alpha, dim=-1)
        per_sample = denoising_loss(self.policy.conditioned(cond), self.schedule, a0).view(-1, m)
        loss = (weights * per_sample).mean()
        ess = (weights.sum(-1) ** 2 / (weights**2).sum(-1)).mean() / m
        return loss, {"train/weight_ess": ess.item(), "train/weight_max": weights.max().item()}
