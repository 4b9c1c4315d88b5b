"""MA-CQL — per-agent conservative Q-learning, as OMAR runs it (Pan et al., "Plan Better Amid
Conservatism: Offline Multi-Agent RL with Actor Rectification", ICML 2022; code
`ling-pan/OMAR`, `algorithms/maddpg.py`, flag ``--cql 1``). CQL: Kumar et al. 2020.

Every agent i has a deterministic actor mu_i(o_i) and twin critics Q_i^j(o_i, a_i) on the team
reward (independent learning, OMAR Sec. 3-4); the critic adds CQL's regulariser to the TD loss.

Equation map
- CQL Eq. 4 (CQL(H)): alpha E_o[T log sum_a exp(Q(o, a) / T) - E_a~D Q(o, a)], the integral
  over actions estimated with OMAR's proposals (CQL App. F importance sampling:
  T log (1/M) sum_k exp(Q(o, a_k) / T - log mu(a_k))): ``ConservativeTD3.critic_regulariser``
  -> `dmarl.critics.cql.cql_penalty` with `uniform_proposal` / `gaussian_proposal`, one
  penalty per twin and per agent, summed (OMAR: ``cql_term1 + cql_term2``).
- Proposals (``cql_proposals``): 'uniform' = M uniform actions on [-1, 1]^{A_i}, log density
  -A_i log 2 (OMAR's MPE branch uses only these); 'policy' / 'next_policy' = M draws
  clip(mu_i(o_i) + N(0, 0.2^2)) / clip(mu_i(o'_i) + N(0, 0.2^2)), evaluated at o_i (OMAR's
  MaMuJoCo branch uses all three). M = ``cql_samples`` (OMAR: 10), T = ``cql_temperature`` (1).
- Critic target (OMAR's code): y_i = r + gamma (1 - d) min_j Q'_ij(o'_i, mu'_i(o'_i)), no target
  smoothing (``policy_noise = 0``), actor every step (``policy_delay = 1``), Polyak on both.
- Actor (OMAR's MA-CQL): maximise Q_i^1(o_i, mu_i(o_i)) - 1e-3 ||mu_i(o_i)||^2 / A_i
  (``action_l2``), per-agent gradient-norm clip 0.5 on critic and actor (``grad_clip``).

Readings (configurable): ``cql_penalty`` keeps CQL App. F's constant -log M (OMAR's code drops
it; no effect on gradients); the policy proposal's log density is the Gaussian noise's log
density (OMAR's code passes the density itself there); one dataset batch serves all agents.
Defaults are OMAR's MPE values (main.py: hidden 64, lr 0.01, gamma 0.95, tau 0.01, batch
1024); cql_alpha per task and dataset quality is OMAR's ``env_config_map`` and sits in
gin/experiments/macql_omar_<task>_<quality>.gin; HalfCheetah values (hidden 256, lr 3e-4,
gamma 0.99, tau 0.005, batch 256, all three proposals) in the halfcheetah gins.
"""
from __future__ import annotations

from collections.abc import Sequence

import gin
import torch
from torch import Tensor

from dmarl.algorithms.baselines.offline_common import PerAgentTD3
from dmarl.critics.cql import cql_penalty, gaussian_proposal, uniform_proposal
from dmarl.data.batch import Batch
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError
from dmarl.registry import register_algorithm

CQL_PROPOSALS = ("uniform", "policy", "next_policy")


class ConservativeTD3(PerAgentTD3):
    """Per-agent TD3 critic with OMAR's CQL regulariser (base of MA-CQL and OMAR)."""

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        *,
        cql_alpha: float,
        cql_samples: int,
        cql_temperature: float,
        cql_noise: float,
        cql_proposals: Sequence[str],
        **td3: float | tuple[int, ...] | str | None,
    ) -> None:
        name = type(self).__name__
        bad = [p for p in cql_proposals if p not in CQL_PROPOSALS]
        if bad or not cql_proposals:
            raise UserError(f"{name}.cql_proposals must be a non-empty subset of {CQL_PROPOSALS}, got {tuple(cql_proposals)}")
        if cql_alpha < 0 or cql_samples < 1 or not cql_temperature > 0 or not cql_noise > 0:
            raise UserError(
                f"{name}: need cql_alpha >= 0, cql_samples >= 1, cql_temperature > 0 and cql_noise > 0, got "
                f"{cql_alpha}, {cql_samples}, {cql_temperature}, {cql_noise}"
            )
        self.cql_alpha, self.cql_samples, self.cql_temperature = cql_alpha, cql_samples, cql_temperature
        self.cql_noise, self.cql_proposals = cql_noise, tuple(cql_proposals)
        super().__init__(spec, device, **td3)

    def proposals(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Sampled actions ``[B, M_total, N, A]`` and their log proposal densities ``[B, M_total, N]``."""
        b, m = batch.obs.shape[0], self.cql_samples
        actions, log_density = [], []
        with torch.no_grad():
            for kind in self.cql_proposals:
                if kind == "uniform":
                    a, lp = uniform_proposal((b, m), self.action_mask)
                else:
                    center = self.actor(batch.obs if kind == "policy" else batch.next_obs)
                    a, lp = gaussian_proposal(center, m, self.cql_noise, self.action_mask)
                actions.append(a)
                log_density.append(lp)
        return torch.cat(actions, 1), torch.cat(log_density, 1)

    def critic_regulariser(self, batch: Batch, q_data: Tensor) -> tuple[Tensor, dict[str, float]]:
        actions, log_density = self.proposals(batch)
        obs = batch.obs.unsqueeze(1).expand(-1, actions.shape[1], -1, -1)
        q_sampled = self.critic(obs, actions).permute(0, 1, 3, 2)  # [2, B, N, M]
        density = log_density.permute(0, 2, 1).unsqueeze(0).expand_as(q_sampled)
        penalty = cql_penalty(q_sampled, q_data, density, self.cql_temperature)  # mean over twins, agents
        n_terms = q_data.shape[0] * self.n_agents
        return self.cql_alpha * n_terms * penalty, {"train/cql_penalty": penalty.item()}


@register_algorithm("macql", kind="offline", paper="MA-CQL (per-agent CQL as in OMAR, Pan et al. ICML 2022)")
@gin.configurable
class MACQL(ConservativeTD3):
    """Per-agent CQL critics + TD3-style deterministic actors (module docstring)."""

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        cql_alpha: float = 1.0,
        cql_samples: int = 10,
        cql_temperature: float = 1.0,
        cql_noise: float = 0.2,
        cql_proposals: tuple[str, ...] = ("uniform",),
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "relu",
        actor_lr: float = 0.01,
        critic_lr: float = 0.01,
        gamma: float = 0.95,
        polyak: float = 0.01,
        policy_noise: float = 0.0,
        noise_clip: float = 0.5,
        policy_delay: int = 1,
        action_l2: float = 1e-3,
        expl_noise: float = 0.1,
        grad_clip: float | None = 0.5,
    ) -> None:
        super().__init__(
            spec, device, cql_alpha=cql_alpha, cql_samples=cql_samples, cql_temperature=cql_temperature,
            cql_noise=cql_noise, cql_proposals=cql_proposals, hidden=hidden, activation=activation,
            actor_lr=actor_lr, critic_lr=critic_lr, gamma=gamma, polyak=polyak, policy_noise=policy_noise,
            noise_clip=noise_clip, policy_delay=policy_delay, action_l2=action_l2, expl_noise=expl_noise,
            grad_clip=grad_clip,
        )
