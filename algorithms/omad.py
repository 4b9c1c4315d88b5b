"""OMAD — Online Multi-Agent Diffusion policies.

Paper: "Diffusing to Coordinate: Efficient Online Multi-Agent Diffusion Policies"
(../shared/papers/000_542810cab7afafe4.txt; restated in ../shared/docs/algorithms.md).

Equation map
- Eq. 5–6, 10 (per-agent OU reverse chain a_H -> a_0, H = 8 Euler–Maruyama steps, all N
  agents in one agent-batched pass): ``OMAD._sample`` -> `dmarl.diffusion.samplers.ou_sample`
  with `dmarl.diffusion.score_networks.AgentBatchedScoreMLP`.
- Theorem 1 / Eq. 9 (entropy lower bound l_i per agent, summed over agents):
  `OUSample.entropy_lower_bound` (per agent), summed in ``OMAD._sample``.
- Eq. 12 (target distribution r + gamma (1 - term)(Z(s', a') + alpha sum_i l_i(a'^i | s')),
  a' from the target policies, projected on the atoms): ``OMAD._critic_update`` ->
  `dmarl.critics.distributional.categorical_td_target` / `c51_project`.
- Eq. 13 (cross-entropy with entropy regulariser xi), CrossQ joint forward of (s, a) and
  (s', a'), BatchRenorm, no target critic: ``OMAD._critic_update`` -> `crossq_forward`,
  `categorical_loss`.
- Eq. 14 (synchronised policy loss of all agents, reparameterised through every denoising
  step, critic in eval mode): ``OMAD._policy_update`` -> `max_entropy_actor_loss`.
- Eq. 15 (temperature): ``OMAD._temperature_update`` -> `temperature_loss`.
- Alg. 1 lines 3, 7, 11 (collect with target policies, policy delay d_l, target policies
  theta' <- rho theta' + (1 - rho) theta): ``OMAD.act``, ``OMAD.update``.

Readings of ambiguities (all configurable)
- Warm-up timesteps (Table 1: 60,000) are read as uniformly random actions for the first
  60,000 env steps (`OnlineRunner.random_steps`); learning starts at 5,000 (L_init), so the
  critic already trains on random data. "BN warmup 1e5" is the BatchRenorm warm-up.
- Actions are squashed with tanh after the chain and the log-det term enters l_i (as DIME);
  ``squash=False`` clips instead (no log-det term).
- Sign of xi: Eq. 13 prints "+ xi H"; we subtract xi H (DIME, algorithms.md) so the entropy
  term keeps Z from collapsing (see `categorical_loss`).
- Temperature: Eq. 15 prints alpha (H_target - sum_i l_i) with H_target = 4 dim(A), which a
  squashed policy cannot reach. We use the SAC form alpha (sum_i l_i - H_target) with
  H_target = ``target_entropy_per_dim`` x dim(A), default -4 (the paper's magnitude, SAC's
  sign); alpha is updated every step from the sum_i l_i of the target-policy sample drawn
  for the critic target (Alg. 1 line 10 sits outside the policy-delay branch; with rho = 0
  the target policies equal the current ones).
- Decentralised execution: agent i's score network sees only o_i (Eq. 10 writes s).
- Deterministic evaluation runs the chain with zero noise (a_H = 0, xi_h = 0).
- Score parametrisation: f_theta(a, o, t) = network(a, o, t) - a / eta^2, i.e. the network
  learns the residual from the prior's score (``residual_score``). Same model class as Eq. 10;
  with the near-zero output init the initial chain keeps the prior N(0, eta^2) instead of
  expanding a_H by prod_h (1 + beta_h delta) (terminal variance ~20 with H = 8 and the cosine
  schedule), which saturates tanh and starts l_i near -5 per action dim.
- One categorical critic (``n_critics`` > 1 averages the projected targets and Q means of
  independent critics, DIME's twin variant).
"""
from __future__ import annotations

import math
from typing import Any

import gin
import numpy as np
import torch
from torch import Tensor

from dmarl.algorithms.multiagent import AgentSlices
from dmarl.critics.distributional import (
    CategoricalCritic,
    categorical_loss,
    categorical_td_target,
    crossq_forward,
)
from dmarl.critics.twin_q import make_target, polyak_update
from dmarl.data.batch import Batch
from dmarl.diffusion.losses import max_entropy_actor_loss, temperature_loss
from dmarl.diffusion.samplers import OUSample, ou_sample
from dmarl.diffusion.schedules import DiscreteSchedule
from dmarl.diffusion.score_networks import AgentBatchedScoreMLP
from dmarl.envs.base import EnvSpec
from dmarl.registry import register_algorithm


@register_algorithm("omad", kind="online", paper="OMAD: Diffusing to Coordinate (paper 000)")
@gin.configurable
class OMAD:
    """Per-agent diffusion policies + joint distributional CrossQ critic (module docstring)."""

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        lr: float = 3.5e-5,
        critic_lr: float | None = None,
        alpha_lr: float | None = None,
        v_max: float = 200.0,
        n_atoms: int = 101,
        entropy_reg: float = 0.005,
        n_critics: int = 1,
        critic_hidden: tuple[int, ...] = (2048, 2048),
        bn_momentum: float = 0.99,
        bn_warmup: int = 100_000,
        actor_hidden: tuple[int, ...] = (256, 256, 256),
        actor_activation: str = "gelu",
        time_dim: int = 256,
        actor_input_norm: bool = True,
        diffusion_steps: int = 8,
        beta_min: float = 1e-3,
        beta_max: float = 0.9999,
        eta: float = 1.0,
        squash: bool = True,
        residual_score: bool = True,
        gamma: float = 0.99,
        policy_delay: int = 3,
        rho: float = 0.0,
        initial_alpha: float = 1.0,
        target_entropy_per_dim: float = -4.0,
        adam_betas: tuple[float, float] = (0.5, 0.999),
        grad_clip: float = 1.0,
    ) -> None:
        self.spec, self.device = spec, device
        self.slices = AgentSlices(spec)
        self.gamma, self.policy_delay, self.rho = gamma, policy_delay, rho
        self.eta, self.squash, self.entropy_reg, self.grad_clip = eta, squash, entropy_reg, grad_clip
        self.residual_score = residual_score
        self.schedule = DiscreteSchedule.cosine(diffusion_steps, beta_min, beta_max).to(device)
        self.action_mask = torch.as_tensor(spec.action_mask(), dtype=torch.float32, device=device)
        self.policy = AgentBatchedScoreMLP(
            spec.n_agents, spec.act_max, spec.obs_max, hidden=actor_hidden, activation=actor_activation,
            time_dim=time_dim, input_norm=actor_input_norm,
        ).to(device)
        self.target_policy = make_target(self.policy).eval()
        self.critics = torch.nn.ModuleList(
            CategoricalCritic(
                spec.state_dim + spec.joint_action_dim, v_max, n_atoms=n_atoms, hidden=critic_hidden,
                momentum=bn_momentum, warmup_steps=bn_warmup,
            )
            for _ in range(n_critics)
        ).to(device)
        self.policy_optim = torch.optim.Adam(self.policy.parameters(), lr=lr, betas=adam_betas)
        self.critic_optim = torch.optim.Adam(self.critics.parameters(), lr=critic_lr or lr, betas=adam_betas)
        self.log_alpha = torch.tensor(math.log(initial_alpha), device=device, requires_grad=True)
        self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=alpha_lr or lr, betas=adam_betas)
        self.target_entropy = target_entropy_per_dim * spec.joint_action_dim
        self.updates = 0

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    # -- sampling (Eq. 10, Theorem 1) ---------------------------------------------------
    def _sample(
        self, policy: AgentBatchedScoreMLP, obs: Tensor, *, requires_grad: bool, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, OUSample]:
        """All agents' actions [B, N, A_max] (zero in padded dims), sum_i l_i [B], raw sample."""
        shape = (obs.shape[0], self.spec.n_agents, self.spec.act_max)
        noise = obs.new_zeros((self.schedule.num_steps + 1, *shape)) if deterministic else None
        network = policy.conditioned(obs)
        score = (lambda a, t: network(a, t) - a / self.eta**2) if self.residual_score else network
        sample = ou_sample(
            score, self.schedule, shape, eta=self.eta, squash=self.squash,
            action_mask=self.action_mask, noise=noise, requires_grad=requires_grad,
        )
        action = sample.action if self.squash else sample.action.clamp(-1.0, 1.0)
        return action * self.action_mask, sample.entropy_lower_bound().sum(-1), sample

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        """Alg. 1 line 3: act with the target policies (each agent sees only its own o_i)."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        action, _, _ = self._sample(self.target_policy, obs_t, requires_grad=False, deterministic=not explore)
        return action.cpu().numpy()

    # -- learning (Alg. 1 lines 5–11) ---------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        metrics, next_entropy_lb = self._critic_update(batch)
        if self.updates % self.policy_delay == 0:
            metrics.update(self._policy_update(batch))
        metrics.update(self._temperature_update(next_entropy_lb))
        polyak_update(self.target_policy, self.policy, 1.0 - self.rho)
        self.updates += 1
        return metrics

    def _q_inputs(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        return state, self.slices.joint_actions(actions)

    def _critic_forward(self, batch: Batch) -> tuple[list[Tensor], Tensor, Tensor]:
        """CrossQ joint forward of (s, a) and (s', a'), a' ~ target policies; returns the
        predicted logits per critic, the projected Eq. 12 target [B, K] and sum_i l_i(a' | s')."""
        with torch.no_grad():
            next_actions, next_lb, _ = self._sample(self.target_policy, batch.next_obs, requires_grad=False)
        inputs = self._q_inputs(batch.state, batch.actions)
        next_inputs = self._q_inputs(batch.next_state, next_actions)
        self.critics.train()
        outputs = [crossq_forward(critic, inputs, next_inputs) for critic in self.critics]
        targets = [
            categorical_td_target(
                torch.softmax(next_logits, -1), batch.reward, batch.terminated, self.gamma,
                self.critics[0].support, bonus=self.alpha * next_lb,
            )
            for _, next_logits in outputs
        ]
        return [logits for logits, _ in outputs], torch.stack(targets).mean(0), next_lb

    def _critic_update(self, batch: Batch) -> tuple[dict[str, float], Tensor]:
        """Eq. 12–13 with the CrossQ joint forward (no target critic)."""
        logits, target, next_lb = self._critic_forward(batch)
        loss = sum(categorical_loss(lg, target, self.entropy_reg) for lg in logits)
        self._step(self.critic_optim, loss, self.critics.parameters())
        q_mean = torch.stack([c.q_value(lg.detach()) for c, lg in zip(self.critics, logits)]).mean()
        return {"train/critic_loss": loss.item(), "train/q_mean": q_mean.item()}, next_lb

    def _policy_update(self, batch: Batch) -> dict[str, float]:
        """Eq. 14: one loss for all agents, gradients through all H steps of every chain."""
        self.policy.train()
        self.critics.eval()
        self.critics.requires_grad_(False)
        actions, entropy_lb, _ = self._sample(self.policy, batch.obs, requires_grad=True)
        inputs = self._q_inputs(batch.state, actions)
        q = torch.stack([critic.q_value(critic(*inputs)) for critic in self.critics]).mean(0)
        loss = max_entropy_actor_loss(q, entropy_lb, self.alpha)
        self._step(self.policy_optim, loss, self.policy.parameters())
        self.critics.requires_grad_(True)
        self.critics.train()
        self.policy.eval()
        return {"train/actor_loss": loss.item(), "policy/entropy_lb": entropy_lb.mean().item()}

    def _temperature_update(self, entropy_lb: Tensor) -> dict[str, float]:
        """Eq. 15 (SAC sign, see module docstring) from the critic step's sum_i l_i."""
        loss = temperature_loss(self.log_alpha, entropy_lb.mean(), self.target_entropy)
        self.alpha_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.alpha_optim.step()
        return {"train/alpha": self.alpha.item(), "train/alpha_loss": loss.item()}

    def _step(self, optim: torch.optim.Optimizer, loss: Tensor, params: Any) -> None:
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        optim.step()

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "target_policy": self.target_policy.state_dict(),
            "critics": self.critics.state_dict(),
            "policy_optim": self.policy_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "alpha_optim": self.alpha_optim.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.target_policy.load_state_dict(state["target_policy"])
        self.critics.load_state_dict(state["critics"])
        self.policy_optim.load_state_dict(state["policy_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.alpha_optim.load_state_dict(state["alpha_optim"])
        self.updates = int(state["updates"])
