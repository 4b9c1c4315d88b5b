"""OMAD — Online Multi-Agent Diffusion policies.

Paper: "Diffusing to Coordinate: Efficient Online Multi-Agent Diffusion Policies"
(../shared/papers/000_542810cab7afafe4.txt; restated in ../shared/docs/algorithms.md).

Equation map
- Eq. 3–6, 10 (per-agent OU reverse chain a_H -> a_0, H = 8 Euler–Maruyama steps of size
  delta = T / H, all N agents in one agent-batched pass): ``OMAD._sample`` ->
  `dmarl.diffusion.samplers.ou_sample` on `dmarl.diffusion.schedules.OUSchedule` with
  `dmarl.diffusion.score_networks.AgentBatchedScoreMLP` behind `ObsNormalisedPolicy`.
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
- Eq. 15 (temperature): ``OMAD._temperature_update`` -> `temperature_loss` (``temperature``
  selects the objective, below).
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
- Temperature (``temperature``, ``target_entropy_per_dim`` = H_target / dim(A), dim(A) the
  joint action dim; formulas in `dmarl.diffusion.losses.temperature_loss`):
  * ``'dime'`` (default): L = alpha (H_target + sum_i l_i + sum_i log p(a_H^i)), H_target =
    4 dim(A); fixed point sum_i (l_i + log p(a_H^i)) = -4 dim(A). Eq. 15 prints
    alpha (H_target - sum_i l_i) with Table 1's H_target = 4 dim(A), which is DIME's loss
    -alpha (c - 4 dim(A)) with DIME's running cost c = -(l + log p(a_H)) written as "l";
    read with l literally, no squashed policy reaches H_target and alpha only decays. So the
    paper's reading that can work is DIME's, whose temperature OMAD follows (Table 1's
    4 dim(A) is DIME's target; DIME's temperature Adam lr is 1e-3).
  * ``'paper'``: Eq. 15 literally, alpha (H_target - sum_i l_i), H_target = +4 dim(A):
    alpha decays at ~alpha_lr per update in log space whatever the entropy (an annealing).
  * ``'sac'``: alpha (sum_i l_i - H_target), default H_target = -4 dim(A) (this module's
    earlier default).
  ``auto_alpha = False`` keeps alpha fixed at ``alpha`` (the paper's Fig. 6 ablation);
  ``alpha_lr = 0`` also freezes it. alpha_lr defaults to DIME's 1e-3, not the actor lr.
  alpha is updated every step from the target-policy sample drawn for the critic target
  (Alg. 1 line 10 sits outside the policy-delay branch; with rho = 0 the target policies
  equal the current ones; DIME instead uses the actor-update sample every d_l steps).
- OU chain (Eq. 3–6; ``diffusion_horizon`` = T, ``eta``, ``ou_schedule``): the paper writes
  delta = T / H and t_h = h T / H but gives neither T nor eta. We fix T (default 3.3) so
  that H only refines the same process: beta(t) is a cosine ramp from beta_min to beta_max
  on [0, T] (App. D.2's schedule read in continuous time) and beta_h delta is its integral
  over step h, so sum_h beta_h delta = B(T) = 1.65 for every H (the previous default, betas/2
  of an H-step DDPM cosine schedule, had 0.75 at H = 2, 1.64 at H = 8, 2.22 at H = 16, which
  confounded the Fig. 5 ablation; T = 3.3 matches its H = 8 total). eta = 1 (prior N(0, I)).
  ``ou_schedule = 'ddpm'`` restores the previous H-dependent chain; ``'constant'`` uses
  beta(t) = beta_max.
- Actor input normalisation (App. D.2 "the input vector undergoes Batch Normalization",
  Table 1 momentum 0.99): ``actor_input_norm = 'batchrenorm'`` (default; as the critic, with
  ``actor_norm_momentum`` in the paper's convention s <- 0.99 s + 0.01 s_B and the critic's
  warm-up) or ``'batchnorm'`` (torch momentum 1 - 0.99) or None. It normalises each agent's
  observation once per sample (`ObsNormalisedPolicy`), not the noisy action at every chain
  step: statistics pooled over all H steps (whose a_h have different distributions) made
  train-mode and eval-mode (acting) outputs differ. The noisy action keeps the prior's
  scale N(0, eta^2) and the time features are shared by the batch, so neither is normalised.
- Decentralised execution: agent i's score network sees only o_i (Eq. 10 writes s).
- Deterministic evaluation runs the chain with zero noise (a_H = 0, xi_h = 0).
- Score parametrisation: f_theta(a, o, t) = network(a, o, t) - a / eta^2, i.e. the network
  learns the residual from the prior's score (``residual_score``). Same model class as Eq. 10;
  with the near-zero output init the initial chain keeps the prior N(0, eta^2) instead of
  expanding a_H by prod_h (1 + beta_h delta) (terminal variance ~18 with H = 8 and the default
  schedule), which saturates tanh and starts l_i near -5 per action dim.
- One categorical critic (``n_critics`` > 1 averages the projected targets and Q means of
  independent critics, DIME's twin variant).

Speed (issue 16; same maths, float32-rounding-level differences, tests/test_speed_paths.py)
- ``adam_implementation`` (default ``'fused'``; `dmarl.nn.optim.make_adam`): one kernel pass
  per tensor; ``'for-loop'`` (torch's CPU default before) and ``'foreach'`` give the previous
  parameters bit for bit. The residual score is folded into the chain step (``ou_sample``'s
  ``residual``), and the time features of all H steps come from one pass (``time_table``).
"""
from __future__ import annotations

import math
from typing import Any

import gin
import numpy as np
import torch
from torch import Tensor

from dmarl.algorithms.multiagent import AgentSlices
from dmarl.algorithms.state import Checkpointed
from dmarl.critics.distributional import (
    CategoricalCritic,
    categorical_loss,
    categorical_td_target,
    crossq_forward,
)
from dmarl.critics.twin_q import make_target, polyak_update
from dmarl.data.batch import Batch
from dmarl.diffusion.losses import TEMPERATURE_OBJECTIVES, max_entropy_actor_loss, temperature_loss
from dmarl.diffusion.samplers import OUSample, ou_sample
from dmarl.diffusion.schedules import OU_SHAPES, DiscreteSchedule, OUSchedule
from dmarl.diffusion.score_networks import AgentBatchedScoreMLP
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError
from dmarl.nn.batch_renorm import make_norm
from dmarl.nn.optim import make_adam
from dmarl.registry import register_algorithm

ACTOR_INPUT_NORMS = (None, "batchnorm", "batchrenorm")
# H_target / dim(A) when ``target_entropy_per_dim`` is None (module docstring).
DEFAULT_TARGET_PER_DIM = {"dime": 4.0, "paper": 4.0, "sac": -4.0}


class ObsNormalisedPolicy(torch.nn.Module):
    """Per-agent score networks whose observation input is normalised once per sample.

    ``norm`` acts on the flattened [B, N * O] observations, so every (agent, feature) has its
    own statistics (per-agent normalisation, decentralised: agent i's output depends on o_i
    only). ``conditioned(obs)`` normalises obs once and returns the denoiser for the chain.
    """

    def __init__(self, net: AgentBatchedScoreMLP, norm: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.norm = net, norm

    def normalise(self, obs: Tensor) -> Tensor:
        lead = obs.shape[:-2]
        return self.norm(obs.reshape(-1, obs.shape[-2] * obs.shape[-1])).reshape(*lead, *obs.shape[-2:])

    def conditioned(self, obs: Tensor) -> Any:
        return self.net.conditioned(self.normalise(obs))


@register_algorithm("omad", kind="online", paper="OMAD: Diffusing to Coordinate (paper 000)")
@gin.configurable
class OMAD(Checkpointed):
    """Per-agent diffusion policies + joint distributional CrossQ critic (module docstring)."""

    checkpointed = (
        "policy", "target_policy", "critics", "policy_optim", "critic_optim", "log_alpha", "alpha_optim", "updates",
    )

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        lr: float = 3.5e-5,
        critic_lr: float | None = None,
        alpha_lr: float | None = 1e-3,
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
        actor_input_norm: str | bool | None = "batchrenorm",
        actor_norm_momentum: float = 0.99,
        actor_norm_warmup: int | None = None,
        diffusion_steps: int = 8,
        diffusion_horizon: float = 3.3,
        ou_schedule: str = "cosine",
        beta_min: float = 1e-3,
        beta_max: float = 0.9999,
        eta: float = 1.0,
        squash: bool = True,
        residual_score: bool = True,
        gamma: float = 0.99,
        policy_delay: int = 3,
        rho: float = 0.0,
        temperature: str = "dime",
        auto_alpha: bool = True,
        alpha: float | None = None,
        initial_alpha: float = 1.0,
        target_entropy_per_dim: float | None = None,
        adam_betas: tuple[float, float] = (0.5, 0.999),
        adam_implementation: str = "fused",
        grad_clip: float = 1.0,
    ) -> None:
        """Arguments as the paper's Tables 1-2 / App. D.2 (gin/algorithms/omad.gin); the
        readings (``temperature``, ``diffusion_horizon``, ``ou_schedule``, ``actor_input_norm``)
        are in the module docstring. ``critic_lr`` None = ``lr``; ``alpha_lr`` None = ``lr``.
        ``auto_alpha=False`` fixes alpha at ``alpha`` (or ``initial_alpha`` if None).
        ``adam_implementation``: the optimisers' kernels (`dmarl.nn.optim.make_adam`)."""
        self.spec, self.device = spec, device
        self.slices = AgentSlices(spec)
        self.gamma, self.policy_delay, self.rho = gamma, policy_delay, rho
        self.eta, self.squash, self.entropy_reg, self.grad_clip = eta, squash, entropy_reg, grad_clip
        self.residual_score = residual_score
        self.schedule = self._make_schedule(ou_schedule, diffusion_steps, diffusion_horizon, beta_min, beta_max)
        self.schedule = self.schedule.to(device)
        self.action_mask = torch.as_tensor(spec.action_mask(), dtype=torch.float32, device=device)
        net = AgentBatchedScoreMLP(
            spec.n_agents, spec.act_max, spec.obs_max, hidden=actor_hidden, activation=actor_activation,
            time_dim=time_dim, input_norm=False,
        )
        warmup = bn_warmup if actor_norm_warmup is None else actor_norm_warmup
        norm = self._make_actor_norm(actor_input_norm, actor_norm_momentum, warmup)
        self.policy = ObsNormalisedPolicy(net, norm).to(device)
        self.policy.eval()
        self.target_policy = make_target(self.policy).eval()
        self.critics = torch.nn.ModuleList(
            CategoricalCritic(
                spec.state_dim + spec.joint_action_dim, v_max, n_atoms=n_atoms, hidden=critic_hidden,
                momentum=bn_momentum, warmup_steps=bn_warmup,
            )
            for _ in range(n_critics)
        ).to(device)
        field = "OMAD.adam_implementation"
        self.policy_optim = make_adam(self.policy.parameters(), lr, adam_betas, adam_implementation, field)
        critic_lr = lr if critic_lr is None else critic_lr
        self.critic_optim = make_adam(self.critics.parameters(), critic_lr, adam_betas, adam_implementation, field)
        if temperature not in TEMPERATURE_OBJECTIVES:
            raise UserError(
                f"OMAD.temperature = {temperature!r}: expected one of {', '.join(map(repr, TEMPERATURE_OBJECTIVES))}"
            )
        if alpha is not None and auto_alpha:
            raise UserError(
                f"OMAD.alpha = {alpha} fixes the temperature only with OMAD.auto_alpha = False "
                "(use OMAD.initial_alpha for the starting value of a tuned alpha)"
            )
        fixed = initial_alpha if alpha is None else alpha
        if fixed <= 0:
            raise UserError(f"OMAD.alpha / OMAD.initial_alpha = {fixed}: expected a value > 0")
        self.temperature, self.auto_alpha = temperature, auto_alpha
        self.log_alpha = torch.tensor(math.log(fixed), device=device, requires_grad=auto_alpha)
        alpha_lr = lr if alpha_lr is None else alpha_lr
        self.alpha_optim = make_adam([self.log_alpha], alpha_lr, adam_betas, adam_implementation, field)
        per_dim = DEFAULT_TARGET_PER_DIM[temperature] if target_entropy_per_dim is None else target_entropy_per_dim
        self.target_entropy = per_dim * spec.joint_action_dim
        self.updates = 0

    @staticmethod
    def _make_schedule(
        kind: str, steps: int, horizon: float, beta_min: float, beta_max: float
    ) -> OUSchedule | DiscreteSchedule:
        if kind == "ddpm":
            return DiscreteSchedule.cosine(steps, beta_min, beta_max)
        if kind not in OU_SHAPES:
            raise UserError(f"OMAD.ou_schedule = {kind!r}: expected one of {', '.join(map(repr, (*OU_SHAPES, 'ddpm')))}")
        try:
            return OUSchedule(steps, horizon, beta_min, beta_max, shape=kind)
        except ValueError as err:
            raise UserError(f"OMAD.diffusion_steps / diffusion_horizon / beta_min / beta_max: {err}") from err

    def _make_actor_norm(self, kind: str | bool | None, momentum: float, warmup: int) -> torch.nn.Module:
        """Input normalisation of the flattened per-agent observations (module docstring)."""
        if kind is True:
            kind = "batchrenorm"
        if kind is False:
            kind = None
        if kind not in ACTOR_INPUT_NORMS:
            raise UserError(f"OMAD.actor_input_norm = {kind!r}: expected one of {ACTOR_INPUT_NORMS}")
        if not 0.0 <= momentum < 1.0:
            raise UserError(f"OMAD.actor_norm_momentum = {momentum}: expected a value in [0, 1) (paper convention 0.99)")
        dim = self.spec.n_agents * self.spec.obs_max
        if kind == "batchrenorm":
            return make_norm(kind, dim, momentum=momentum, warmup_steps=warmup)
        if kind == "batchnorm":
            return make_norm(kind, dim, momentum=1.0 - momentum)  # torch's convention
        return make_norm(None, dim)

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    # -- sampling (Eq. 10, Theorem 1) ---------------------------------------------------
    def _sample(
        self, policy: ObsNormalisedPolicy, obs: Tensor, *, requires_grad: bool, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, OUSample]:
        """All agents' actions [B, N, A_max] (zero in padded dims), sum_i l_i [B], raw sample."""
        shape = (obs.shape[0], self.spec.n_agents, self.spec.act_max)
        noise = obs.new_zeros((self.schedule.num_steps + 1, *shape)) if deterministic else None
        sample = ou_sample(
            policy.conditioned(obs), self.schedule, shape, eta=self.eta, squash=self.squash,
            action_mask=self.action_mask, noise=noise, requires_grad=requires_grad, residual=self.residual_score,
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
        metrics.update(self._temperature_update(*next_entropy_lb))
        polyak_update(self.target_policy, self.policy, 1.0 - self.rho)
        self.updates += 1
        return metrics

    def _q_inputs(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        return state, self.slices.joint_actions(actions)

    def _critic_forward(self, batch: Batch) -> tuple[list[Tensor], Tensor, tuple[Tensor, Tensor]]:
        """CrossQ joint forward of (s, a) and (s', a'), a' ~ target policies; returns the
        predicted logits per critic, the projected Eq. 12 target [B, K] and (sum_i l_i(a' | s'),
        sum_i log p(a'_H^i)) for the temperature."""
        with torch.no_grad():
            next_actions, next_lb, sample = self._sample(self.target_policy, batch.next_obs, requires_grad=False)
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
        return [logits for logits, _ in outputs], torch.stack(targets).mean(0), (next_lb, sample.log_prior.sum(-1))

    def _critic_update(self, batch: Batch) -> tuple[dict[str, float], tuple[Tensor, Tensor]]:
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

    def _temperature_update(self, entropy_lb: Tensor, log_prior: Tensor) -> dict[str, float]:
        """Eq. 15 (objective ``temperature``, module docstring) from the critic step's sum_i l_i
        and sum_i log p(a_H^i); nothing moves with ``auto_alpha=False``."""
        if not self.auto_alpha:
            return {"train/alpha": self.alpha.item()}
        loss = temperature_loss(
            self.log_alpha, entropy_lb.mean(), self.target_entropy, objective=self.temperature,
            log_prior=log_prior.mean(),
        )
        self.alpha_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.alpha_optim.step()
        return {"train/alpha": self.alpha.item(), "train/alpha_loss": loss.item()}

    def _step(self, optim: torch.optim.Optimizer, loss: Tensor, params: Any) -> None:
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        optim.step()
