"""DOM2-style offline MARL: per-agent diffusion actors trained Diffusion-QL style, twin critics
on the team reward, and trajectory-based data reweighting.

Paper: Z. Li, L. Pan, L. Huang, "Beyond Conservatism: Diffusion Policies in Offline
Multi-agent Reinforcement Learning" (arXiv 2307.01472 v1; v2 "Improving Generalization and
Data Efficiency with Diffusion in Offline Multi-agent RL"); outline in
../shared/papers/003_c19fd2072617c08b.txt and ../shared/docs/algorithms.md. No DOM2 code or
equations are public: what is known is a diffusion model in each agent's policy, a
trajectory-based data reweighting (v1: data augmentation) scheme, OMAR's setting (MPE and
HalfCheetah 2x3, per-agent learning on the team reward). Every other choice below is ours,
documented and configurable with gin (``DOM2.<name>``).

Equations used (Diffusion-QL: Z. Wang, J. Hunt, M. Zhou, "Diffusion Policies as an Expressive
Policy Class for Offline RL", ICLR 2023; equation numbers of arXiv 2208.06193), per agent i:

- Eq. 1 / Sec. 3 (reverse chain p_theta(a^{k-1} | a^k, o_i), K = ``diffusion_steps`` = 5,
  x0-prediction clipped to [-1, 1], no noise at the last step): ``DOM2.sample`` ->
  `dmarl.diffusion.samplers.ddpm_sample` with all N agents in one
  `dmarl.diffusion.score_networks.AgentBatchedScoreMLP` (stacked weights, one matmul per layer).
- Sec. 4 / App. (VP schedule beta_k = 1 - exp(-b_min/K - (b_max - b_min)(2k - 1)/(2K^2)),
  b_min 0.1, b_max 10): `dmarl.diffusion.schedules.DiscreteSchedule.vp`.
- Eq. 2 (L_d = E ||eps - eps_theta(sqrt(abar_k) a + sqrt(1 - abar_k) eps, k | o_i)||^2 on
  dataset actions): ``DOM2._actor_update`` -> `dmarl.diffusion.losses.denoising_loss`
  (padded action dims masked out).
- Eq. 3 (pi = argmin L_d - alpha E[Q(s, a^0)], a^0 sampled through the whole chain with
  gradients; code: alpha = eta / sg(mean |Q_other twin|), the twin chosen at random each
  step): ``DOM2._actor_update`` -> `dmarl.diffusion.losses.diffusion_ql_loss`.
- Eq. 4 (critic: r + gamma (1 - term) min_j Q'_j(s', a'), a' ~ the EMA actor, twin Q,
  Polyak targets): ``DOM2._critic_update`` on `dmarl.critics.agent_twin_q.AgentTwinQ` (all
  critics' twins in one stacked MLP).
- Algorithm 1 (EMA actor: decay 0.995, updated every 5 steps from step 1000; the EMA actor
  gives the target actions and the evaluation actions): ``DOM2._ema_update``.
- OMAR's CQL penalty (Pan et al. 2022, Eq. 3; its code's MPE form: ``cql_samples`` uniform
  actions in [-1, 1]^A with log-density -A log 2, logsumexp temperature 1, both twins),
  weight ``cql_alpha`` (0 = off): ``DOM2._critic_update`` -> `dmarl.critics.cql.cql_penalty`.

Choices (gin-configurable):
- ``critic = 'per_agent'`` (default, OMAR's setting): agent i's twin Q_i(o_i, a_i) regresses
  the team reward with agent i's own next action; its actor maximises Q_i only. ``'central'``:
  one twin Q(s, a_1..a_N), every actor's sampled action enters it jointly (CTDE).
- The Q term's normaliser is per critic: sum_i [L_d,i - eta mean Q_i / sg(mean |Q_i'|)]
  (per agent), or sum_i L_d,i - eta mean Q / sg(mean |Q'|) (central).
- Trajectory reweighting, DOM2's "trajectory-based data reweighting", read as sampling
  transitions with probability proportional to a weight of their episode's return: the
  offline runner's own sampler (`dmarl.runners.offline.OfflineRunner.sampler`, on the run's
  ``dataset_fraction`` subset, built on `dmarl.data.offline.ReturnWeightedSampler`), which
  gin/algorithms/dom2.gin binds: ``'return_weighted'`` (episodes with return >= the
  ``sampler_threshold`` quantile count ``sampler_copies`` times: v1's duplication, without
  copying data), ``'softmax'`` (weight exp(R / ``sampler_temperature``), R in the dataset's
  return units), ``'uniform'`` (no reweighting). The algorithm itself only sees batches.
- ``cql_alpha``: 0 by default ("Beyond Conservatism": the diffusion actor's behaviour-cloning
  term is the only conservatism). Evidence (2026-12-02, simple_spread expert data of
  datasets/quality, gin/experiments/dom2_simple_spread_cpu.gin, 2000 updates, one seed): final
  return -63.25 with cql_alpha 0 and -63.25 with 1.0, the CQL update costing ~2x; equal score at
  half the cost keeps it off (one seed: the dom2_* benchmarks run both with more seeds).
- Top-quantile reweighting by default in gin/algorithms/dom2.gin (top 10 % of episodes x 5): on
  the medium-replay data (same conditions) -73.2 vs -74.9 without reweighting (one seed; not a significant gap).
- Evaluation: one EMA sample per agent (``act_candidates = 1``). Diffusion-QL's own
  evaluation draws 50 candidates and picks one with probability softmax(Q); here
  ``act_candidates > 1`` does that per agent with its own Q_i(o_i, .) (decentralised; only
  with the per-agent critic). ``explore`` is ignored: the policy is stochastic.
- Learning rates are cosine-annealed to 0 over the run's updates (Diffusion-QL's
  ``lr_decay``; ``lr_decay = False`` for constant), announced by the runner (``plan_updates``).
- ``grad_clip``: max gradient norm of actor and critic (Diffusion-QL's per-task ``gn``);
  None = no clipping.
- Networks: Diffusion-QL's 3 x 256 Mish noise network with a 16-d sinusoidal time embedding;
  critics 3 x 256 Mish. Padded (heterogeneous) agents: zero-padded inputs, padded action
  dims masked in the loss and zeroed in samples.
"""
from __future__ import annotations

import math

import gin
import numpy as np
import torch
from torch import Tensor, nn

from dmarl.algorithms.state import Checkpointed
from dmarl.critics.agent_twin_q import AgentTwinQ
from dmarl.critics.cql import cql_penalty
from dmarl.critics.twin_q import make_target, polyak_update
from dmarl.data.batch import Batch
from dmarl.diffusion.losses import denoising_loss, diffusion_ql_loss
from dmarl.diffusion.samplers import ddpm_sample
from dmarl.diffusion.schedules import DiscreteSchedule
from dmarl.diffusion.score_networks import AgentBatchedScoreMLP
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError
from dmarl.registry import register_algorithm

CRITICS = ("per_agent", "central")


def cosine_factor(step: int, horizon: int) -> float:
    """Cosine annealing factor 0.5 (1 + cos(pi min(step, horizon) / horizon)); 1 if horizon <= 0."""
    return 1.0 if horizon <= 0 else 0.5 * (1.0 + math.cos(math.pi * min(step, horizon) / horizon))


@register_algorithm("dom2", kind="offline", paper="DOM2: diffusion policies in offline MARL (arXiv 2307.01472)")
@gin.configurable
class DOM2(Checkpointed):
    """Per-agent Diffusion-QL actors + twin critics + trajectory reweighting (module docstring)."""

    checkpointed = (
        "actor", "ema", "critic", "critic_target", "actor_optim", "critic_optim", "schedulers", "counters", "horizon",
    )

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        gamma: float = 0.99,
        polyak: float = 0.005,
        eta: float = 1.0,
        diffusion_steps: int = 5,
        beta_min: float = 0.1,
        beta_max: float = 10.0,
        actor_lr: float = 3e-4,
        actor_hidden: tuple[int, ...] = (256, 256, 256),
        actor_activation: str = "mish",
        time_dim: int = 16,
        time_embedding_kind: str = "sinusoidal",
        critic: str = "per_agent",
        critic_lr: float = 3e-4,
        critic_hidden: tuple[int, ...] = (256, 256, 256),
        critic_activation: str = "mish",
        cql_alpha: float = 0.0,
        cql_samples: int = 10,
        cql_temperature: float = 1.0,
        ema_decay: float = 0.995,
        ema_start: int = 1000,
        ema_every: int = 5,
        lr_decay: bool = True,
        grad_clip: float | None = None,
        act_candidates: int = 1,
    ) -> None:
        self._check(critic, eta, diffusion_steps, cql_alpha, cql_samples, ema_decay, ema_every, act_candidates)
        self.spec, self.device = spec, device
        self.gamma, self.polyak, self.eta = gamma, polyak, eta
        self.critic_kind, self.cql_alpha, self.cql_samples, self.cql_temperature = (
            critic, cql_alpha, cql_samples, cql_temperature,
        )
        self.ema_decay, self.ema_start, self.ema_every = ema_decay, ema_start, ema_every
        self.lr_decay, self.grad_clip, self.act_candidates = lr_decay, grad_clip, act_candidates
        n, a_max, o_max = spec.n_agents, spec.act_max, max(spec.obs_dims)
        self.action_mask = (torch.arange(a_max)[None, :] < torch.tensor(spec.action_dims)[:, None]).float().to(device)
        self.schedule = DiscreteSchedule.vp(diffusion_steps, beta_min, beta_max).to(device)
        self.actor = AgentBatchedScoreMLP(
            n, a_max, o_max, hidden=actor_hidden, activation=actor_activation, time_dim=time_dim,
            time_embedding_kind=time_embedding_kind,
        ).to(device)
        self.ema = make_target(self.actor)
        if critic == "per_agent":  # K = N critics Q_i(o_i, a_i), else one Q(s, a_1..a_N)
            groups, cond_dim, action_dim = n, o_max, a_max
        else:
            groups, cond_dim, action_dim = 1, spec.state_dim, sum(spec.action_dims)
        self.critic = AgentTwinQ(groups, cond_dim, action_dim, tuple(critic_hidden), critic_activation).to(device)
        self.critic_target = make_target(self.critic)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)
        self.horizon = 0  # total updates announced by the runner (plan_updates); 0 = constant lr
        self.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(optim, self._lr_factor) for optim in (self.actor_optim, self.critic_optim)
        ]
        self.counters = {"updates": 0}

    @staticmethod
    def _check(
        critic: str, eta: float, steps: int, cql_alpha: float, cql_samples: int,
        ema_decay: float, ema_every: int, candidates: int,
    ) -> None:
        problems = []
        if critic not in CRITICS:
            problems.append(f"DOM2.critic must be one of {CRITICS}, got {critic!r}")
        if eta < 0 or cql_alpha < 0:
            problems.append(f"DOM2.eta and DOM2.cql_alpha must be >= 0, got {eta} and {cql_alpha}")
        if steps < 1 or cql_samples < 1 or ema_every < 1 or candidates < 1:
            problems.append("DOM2.diffusion_steps, cql_samples, ema_every and act_candidates must be >= 1")
        if not 0.0 <= ema_decay < 1.0:
            problems.append(f"DOM2.ema_decay must be in [0, 1), got {ema_decay}")
        if candidates > 1 and critic != "per_agent":
            problems.append("DOM2.act_candidates > 1 needs critic = 'per_agent' (a central Q would need the state to act)")
        if problems:
            raise UserError("; ".join(problems))

    # -- sampling ------------------------------------------------------------------------
    def sample(self, net: AgentBatchedScoreMLP, obs: Tensor, *, requires_grad: bool = False) -> Tensor:
        """Actions ``[..., N, A_max]`` of every agent from its reverse chain given o_i (padding zeroed)."""
        shape = (*obs.shape[:-1], self.spec.act_max)
        action = ddpm_sample(net.conditioned(obs), self.schedule, shape, requires_grad=requires_grad)
        return action * self.action_mask

    def _critic_input(self, obs: Tensor, state: Tensor | None, actions: Tensor) -> tuple[Tensor, Tensor]:
        """(condition, action) ``[..., K, .]``: (o_i, a_i) per agent, or (s, a_1..a_N) once (central)."""
        if self.critic_kind == "per_agent":
            return obs, actions
        joint = torch.cat([actions[..., i, :d] for i, d in enumerate(self.spec.action_dims)], dim=-1)
        return state.unsqueeze(-2), joint.unsqueeze(-2)

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        """EMA actor; agent i sees only ``obs[:, i]`` (its own chain and, with candidates, its Q_i)."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if self.act_candidates == 1:
            return self.sample(self.ema, obs_t).cpu().numpy()
        c = self.act_candidates
        rep = obs_t.unsqueeze(1).expand(obs_t.shape[0], c, *obs_t.shape[1:])
        cand = self.sample(self.ema, rep)  # [E, C, N, A]
        q = self.critic_target(*self._critic_input(rep, None, cand)).min(0).values  # [E, C, N]
        probs = torch.softmax(q.transpose(1, 2), dim=-1).reshape(-1, c)  # [E*N, C]
        pick = torch.multinomial(probs, 1).reshape(obs_t.shape[0], 1, -1, 1)
        chosen = cand.gather(1, pick.expand(-1, 1, -1, cand.shape[-1])).squeeze(1)
        return chosen.cpu().numpy()

    # -- updates -------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        metrics = self._critic_update(batch)
        metrics.update(self._actor_update(batch))
        polyak_update(self.critic_target, self.critic, self.polyak)
        for scheduler in self.schedulers:
            scheduler.step()
        self.counters["updates"] += 1
        self._ema_update()
        return metrics

    def _clip(self, module: nn.Module) -> None:
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(module.parameters(), self.grad_clip)

    def _critic_update(self, batch: Batch) -> dict[str, float]:
        """Diffusion-QL Eq. 4 on the team reward (+ OMAR's CQL penalty when ``cql_alpha > 0``)."""
        with torch.no_grad():
            next_actions = self.sample(self.ema, batch.next_obs)
            next_inputs = self._critic_input(batch.next_obs, batch.next_state, next_actions)
            next_q = self.critic_target(*next_inputs).min(0).values
            target = batch.reward[:, None] + self.gamma * (1.0 - batch.terminated[:, None]) * next_q  # [B, K]
        q = self.critic(*self._critic_input(batch.obs, batch.state, batch.actions))  # [2, B, K]
        td = ((q - target) ** 2).mean(1).sum()
        loss, metrics = td, {"train/critic_loss": td.item(), "train/q_mean": q.mean().item()}
        if self.cql_alpha > 0:
            penalty = self._cql(batch, q)
            loss = loss + self.cql_alpha * penalty
            metrics["train/cql_penalty"] = penalty.item()
        self.critic_optim.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(self.critic)
        self.critic_optim.step()
        return metrics

    def _cql(self, batch: Batch, q_data: Tensor) -> Tensor:
        """OMAR's CQL(H) term summed over twins and critics: uniform proposals on [-1, 1]^A."""
        b, m = batch.obs.shape[0], self.cql_samples
        uniform = torch.rand(b, m, *batch.actions.shape[1:], device=self.device) * 2.0 - 1.0
        uniform = uniform * self.action_mask
        obs = batch.obs.unsqueeze(1).expand(b, m, *batch.obs.shape[1:])
        state = batch.state.unsqueeze(1).expand(b, m, batch.state.shape[-1])
        q_rand = self.critic(*self._critic_input(obs, state, uniform))  # [2, B, M, K]
        dims = self.action_mask.sum(-1) if self.critic_kind == "per_agent" else self.action_mask.sum().reshape(1)
        total = q_data.new_zeros(())
        for k in range(q_rand.shape[-1]):
            log_density = torch.full((b, m), -float(dims[k]) * math.log(2.0), device=self.device)
            for j in range(2):
                total = total + cql_penalty(q_rand[j, ..., k], q_data[j, :, k], log_density, self.cql_temperature)
        return total

    def _actor_update(self, batch: Batch) -> dict[str, float]:
        """Diffusion-QL Eq. 2-3 for all agents at once (their parameters are separate, so the
        summed loss gives each agent its own gradient)."""
        bc = denoising_loss(
            self.actor.conditioned(batch.obs), self.schedule, batch.actions, action_mask=self.action_mask
        ).mean(0)  # [N]
        new_actions = self.sample(self.actor, batch.obs, requires_grad=True)
        self.critic.requires_grad_(False)
        q = self.critic(*self._critic_input(batch.obs, batch.state, new_actions))  # [2, B, K]
        self.critic.requires_grad_(True)
        j = int(torch.randint(2, ()).item())  # Diffusion-QL: a random twin, normalised by the other
        bc_groups = bc if self.critic_kind == "per_agent" else bc.sum().reshape(1)
        loss = sum(
            diffusion_ql_loss(bc_groups[k], q[j, :, k], self.eta, q_scale=q[1 - j, :, k]) for k in range(q.shape[-1])
        )
        self.actor_optim.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(self.actor)
        self.actor_optim.step()
        return {"train/actor_loss": loss.item(), "train/bc_loss": bc.mean().item(), "train/q_policy": q.mean().item()}

    def _ema_update(self) -> None:
        """Diffusion-QL's EMA: every ``ema_every`` updates, from update ``ema_start`` on (the
        EMA actor stays at its initial copy before), theta_ema <- d theta_ema + (1 - d) theta."""
        step = self.counters["updates"]
        if step % self.ema_every == 0 and step >= self.ema_start:
            polyak_update(self.ema, self.actor, 1.0 - self.ema_decay)

    # -- schedule and checkpointing --------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        return cosine_factor(step, self.horizon if self.lr_decay else 0)

    def plan_updates(self, total_updates: int) -> None:
        """The run's total updates: the horizon of the cosine-annealed learning rates."""
        self.horizon = int(total_updates)
