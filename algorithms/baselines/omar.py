"""OMAR — Offline Multi-Agent RL with Actor Rectification (Pan, Huang, Ma, Xu, ICML 2022;
code `ling-pan/OMAR`: `algorithms/maddpg.py` ``MATD3.update`` with ``--omar 1``, `main.py`).

OMAR = MA-CQL's per-agent conservative critics (`algorithms/baselines/macql.py`) plus an
actor that, besides following the critic's gradient, regresses towards the best action a
zeroth-order (sampling) optimiser finds on the same critic, to escape the bad local optima of
the conservative Q landscape (OMAR Sec. 4).

Equation map (OMAR Sec. 4, cited by content: the paper's text is not in ../shared/papers;
constants from its code)
- Critic: CQL-regularised per-agent twin Q (OMAR's Eq. for MA-CQL, CQL Eq. 4):
  `macql.ConservativeTD3.critic_regulariser`.
- Zeroth-order optimisation of Q_i^1(o_i, .) (Sec. 4, "sampling-based ... iteratively
  refit a Gaussian"): ``zeroth_order_search``. From N(mu, sigma), mu_0 = ``omar_mu`` (0),
  sigma_0 = ``omar_sigma`` (2.0), draw ``omar_samples`` actions clipped to [-1, 1] and refit
  for ``omar_iters`` iterations, either ``scheme = 'softmax'`` (OMAR's MPE branch: mu <-
  sum_k softmax_k(Q_k) a_k, sigma <- sqrt(mean_k (a_k - mu)^2); 3 iterations of 10 samples) or
  ``'elites'`` (its MaMuJoCo branch: the top ``omar_elites`` of the samples plus the previous
  elites, mu <- their mean, sigma <- their std; 2 iterations, 20 samples, 5 elites). The
  candidate is the best action of the last iteration.
- Rectified target (code): a^_i = argmax over {mu_i(o_i), candidate} of Q_i^1(o_i, .).
- Actor loss (Sec. 4, the objective with coefficient tau = ``omar_coe``):
  L_i = tau ||mu_i(o_i) - a^_i||^2 / A_i - (1 - tau) Q_i^1(o_i, mu_i(o_i)) + 1e-3 ||mu_i||^2 / A_i:
  ``OMAR.actor_objective`` (+ ``action_l2`` in `offline_common`). omar_coe and cql_alpha per
  task / dataset quality: OMAR's ``env_config_map``, in gin/experiments/omar_omar_<task>_<quality>.gin.

Readings (configurable): ``omar_init = 'fixed'`` starts the search at the constant
(omar_mu, omar_sigma) as OMAR's code does; ``'policy'`` centres it at mu_i(o_i) (the
"sampling around the policy action" reading). One dataset batch serves all agents.
"""
from __future__ import annotations

from collections.abc import Callable

import gin
import torch
from torch import Tensor

from dmarl.algorithms.baselines.macql import ConservativeTD3
from dmarl.algorithms.baselines.offline_common import masked_mse
from dmarl.data.batch import Batch
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError
from dmarl.registry import register_algorithm

SCHEMES = ("softmax", "elites")
INITS = ("fixed", "policy")


@torch.no_grad()
def zeroth_order_search(
    q_fn: Callable[[Tensor], Tensor],
    mu: Tensor,
    sigma: Tensor,
    action_mask: Tensor,
    *,
    iters: int,
    n_samples: int,
    n_elites: int,
    scheme: str,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """OMAR's sampling optimiser of ``q_fn`` (actions [B, K, N, A] -> Q [B, K, N]) from
    N(mu, sigma) (each [B, N, A]). Returns the best action of the last iteration [B, N, A]
    and its Q [B, N]."""
    last_q = last_a = None
    for it in range(iters):
        noise = torch.randn((mu.shape[0], n_samples, *mu.shape[1:]), generator=generator, device=mu.device)
        samples = (mu.unsqueeze(1) + sigma.unsqueeze(1) * noise).clamp(-1.0, 1.0) * action_mask
        q = q_fn(samples)  # [B, K, N]
        if scheme == "elites":
            if it > 0:
                q, samples = torch.cat([q, last_q], 1), torch.cat([samples, last_a], 1)
            top = q.topk(n_elites, dim=1).indices  # [B, E, N]
            last_a = samples.gather(1, top.unsqueeze(-1).expand(-1, -1, -1, samples.shape[-1]))
            last_q = q.gather(1, top)
            mu, sigma = last_a.mean(1), last_a.std(1)
        else:
            w = torch.softmax(q, dim=1).unsqueeze(-1)  # [B, K, N, 1]
            mu = (w * samples).sum(1)
            sigma = ((samples - mu.unsqueeze(1)) ** 2).mean(1).sqrt()
    best = q.argmax(1)  # [B, N]
    action = samples.gather(1, best[:, None, :, None].expand(-1, 1, -1, samples.shape[-1])).squeeze(1)
    return action, q.gather(1, best.unsqueeze(1)).squeeze(1)


@register_algorithm("omar", kind="offline", paper="OMAR: Actor Rectification (Pan et al., ICML 2022)")
@gin.configurable
class OMAR(ConservativeTD3):
    """MA-CQL critics + zeroth-order actor rectification (module docstring)."""

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        omar_coe: float = 1.0,
        omar_iters: int = 3,
        omar_samples: int = 10,
        omar_elites: int = 10,
        omar_mu: float = 0.0,
        omar_sigma: float = 2.0,
        omar_scheme: str = "softmax",
        omar_init: str = "fixed",
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
        if omar_scheme not in SCHEMES or omar_init not in INITS:
            raise UserError(f"OMAR.omar_scheme must be one of {SCHEMES} and omar_init one of {INITS}, got "
                            f"{omar_scheme!r}, {omar_init!r}")
        if not 0.0 <= omar_coe <= 1.0 or omar_iters < 1 or omar_samples < 1 or not omar_sigma > 0:
            raise UserError(f"OMAR: need 0 <= omar_coe <= 1, omar_iters >= 1, omar_samples >= 1, omar_sigma > 0, got "
                            f"{omar_coe}, {omar_iters}, {omar_samples}, {omar_sigma}")
        if omar_scheme == "elites" and not 1 <= omar_elites <= omar_samples:
            raise UserError(f"OMAR.omar_elites must be in [1, omar_samples = {omar_samples}], got {omar_elites}")
        self.omar_coe, self.omar_iters, self.omar_samples, self.omar_elites = omar_coe, omar_iters, omar_samples, omar_elites
        self.omar_mu, self.omar_sigma, self.omar_scheme, self.omar_init = omar_mu, omar_sigma, omar_scheme, omar_init
        super().__init__(
            spec, device, cql_alpha=cql_alpha, cql_samples=cql_samples, cql_temperature=cql_temperature,
            cql_noise=cql_noise, cql_proposals=cql_proposals, hidden=hidden, activation=activation,
            actor_lr=actor_lr, critic_lr=critic_lr, gamma=gamma, polyak=polyak, policy_noise=policy_noise,
            noise_clip=noise_clip, policy_delay=policy_delay, action_l2=action_l2, expl_noise=expl_noise,
            grad_clip=grad_clip,
        )

    def rectified_target(self, obs: Tensor, action: Tensor, q_policy: Tensor) -> Tensor:
        """a^ = argmax_{a in {mu(o), search candidate}} Q^1(o, a), ``[B, N, A]`` (ties: mu(o))."""
        def q_fn(samples: Tensor) -> Tensor:  # [B, K, N, A] -> Q^1 [B, K, N]
            return self.critic.first(obs.unsqueeze(1).expand(-1, samples.shape[1], -1, -1), samples)

        mu = action if self.omar_init == "policy" else torch.full_like(action, self.omar_mu)
        sigma = torch.full_like(action, self.omar_sigma)
        candidate, q_candidate = zeroth_order_search(
            q_fn, mu, sigma, self.action_mask, iters=self.omar_iters, n_samples=self.omar_samples,
            n_elites=self.omar_elites, scheme=self.omar_scheme,
        )
        keep = (q_policy >= q_candidate).unsqueeze(-1)
        return torch.where(keep, action, candidate)

    def actor_objective(self, batch: Batch, action: Tensor) -> tuple[Tensor, dict[str, float]]:
        q = self.critic.first(batch.obs, action)  # [B, N]
        target = self.rectified_target(batch.obs, action.detach(), q.detach())
        mimic = masked_mse(action, target, self.action_mask)
        loss = self.omar_coe * mimic - (1.0 - self.omar_coe) * q.mean(0)
        return loss, {"train/omar_mimic": mimic.mean().item(), "train/q_policy": q.mean().item()}
