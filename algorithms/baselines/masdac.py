"""MASDAC — Soft Diffusion Actor-Critic over the joint action (centralised execution).

Paper: Ma, Chen, Wang, Li, Dai, "Efficient Online Reinforcement Learning for Diffusion
Policy" (ICML 2025, arXiv 2502.00361; reference code `mahaitongdae/diffusion_policy_online_rl`,
`relax/algorithm/sdac.py`), extended to MARL as the OMAD paper's MASDAC baseline (000,
Sec. 6.1, App. D.3, Table 3): one diffusion policy over the joint action, conditioned on the
global observation. Summary in ../shared/docs/algorithms.md ("Online baselines in paper 000").
Shared machinery (joint DDPM policy, twin-Q critic, exploration noise, temperature) is in
`dmarl.algorithms.joint_diffusion`; see its docstring.

- Target: the max-entropy optimum pi*(a|s) proportional to exp(Q(s, a) / alpha).
- Reverse-sampling score matching (the paper's SDAC loss, ``MASDAC._policy_loss``):
  1. a0 ~ pi_k(.|s) (current policy with exploration noise, as the reference's
     ``get_action``), t ~ U{1..T}, a_t = sqrt(abar_t) a0 + sqrt(1 - abar_t) eps  (no gradient);
  2. K candidates from the Gaussian q~(a0 | a_t) proportional to N(a_t; sqrt(abar_t) a0, (1 - abar_t) I):
     a0^k = clip((a_t - sqrt(1 - abar_t) eps^k) / sqrt(abar_t), -1, 1), eps^k ~ N(0, I)
     (`sdac_candidates`);
  3. weights w_k = softmax_k(Q(s, a0^k) / alpha), Q = min_j Q_j (`sdac_weights`);
  4. L(theta) = E[ sum_k w_k || eps_theta(a_t, t, s) - eps^k ||^2 ] (`sdac_loss`): the
     self-normalised estimate of the score of pi* at a_t, regressed in epsilon form.
- Temperature scale: as the reference, the softmax sees the raw reward-scaled Q
  (``q_normalization='none'``). The reference tunes alpha for SDAC with a Q-based surrogate
  for log pi, which ties alpha to the task's Q scale; we tune alpha with the same
  noise-entropy rule as MADPMD (the reference's DPMD rule; alpha is what scales the
  exploration noise), which holds alpha near 1 whatever the Q scale. Where Q spans little
  (e.g. the two-agent bandit, toy/bandit: Q spans 0.4 after reward scaling) the weights are
  then near uniform; ``'batch'`` standardises Q by the mean / std of all B x K candidate
  values of the batch (the mean cancels in the softmax). Measured on toy/bandit (~900
  updates): 'none' returns 0.06, 'batch' 0.38, 'running' 0.59. ``'state'`` standardises Q
  over the K candidates of each state (not in the reference). On MPE simple_spread N=3 at
  CPU scale (one seed, random policy about -76): 'none' -70 and 'batch' -76 after 40k steps,
  'state' -64 after 24k.
- Critic, delays and exploration noise: `JointDiffusionBase`.

Defaults (reference code ``SDAC`` / ``create_diffv2_net`` / ``scripts/train_mujoco.py``):
K = 64 candidates, 3 x 256 mish networks, T = 20, lr 3e-4 decaying to 3e-5 for the policy,
reward scale 0.2, tau 0.005, policy delay 2, initial alpha 5, alpha lr 7e-3 every 250
updates, noise scale 0.1, target entropy -0.9 dim(A).
"""
from __future__ import annotations

import gin
import torch
from torch import Tensor

from dmarl.algorithms.joint_diffusion import JointDiffusionBase, sdac_candidates, sdac_loss, sdac_weights
from dmarl.data.batch import Batch
from dmarl.envs.base import EnvSpec
from dmarl.registry import register_algorithm


@register_algorithm("masdac", kind="online", paper="MASDAC: SDAC (Ma et al., ICML 2025) on the joint action")
@gin.configurable
class MASDAC(JointDiffusionBase):
    """Joint-action diffusion policy trained by reverse-sampling score matching (module docstring)."""

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        num_candidates: int = 64,
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
        q_normalization: str = "none",
        q_stats_rate: float = 0.001,
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
        self.num_candidates = num_candidates

    def _policy_loss(self, batch: Batch, cache: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """E[sum_k softmax_k(Q(s, a0^k) / alpha) ||eps_theta(a_t, t, c) - eps^k||^2]."""
        cond = self.joint_obs(batch.obs)
        b = cond.shape[0]
        with torch.no_grad():
            a0 = self._explore(self._sample(cond))
            t = self.schedule.sample_t((b,))
            a_t = self.schedule.perturb(a0, t, torch.randn_like(a0))
            noise = torch.randn(b, self.num_candidates, self.action_dim, device=self.device)
            candidates = sdac_candidates(self.schedule, a_t, t, noise)
            q = self._min_q(self.critic, batch.state, candidates)
            weights = sdac_weights(self._normalize_q(q), self.alpha)
        loss = sdac_loss(self.policy(a_t, t, cond), noise, weights)
        ess = (1.0 / (weights**2).sum(-1)).mean() / self.num_candidates
        return loss, {"train/weight_ess": ess.item(), "train/weight_max": weights.max(-1).values.mean().item()}
