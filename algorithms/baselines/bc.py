"""BC — independent per-agent behaviour cloning, the first baseline of OMAR's and OMSD's tables.

Papers: the BC rows of OMAR's result tables (Pan et al., ICML 2022) and of paper 004 (Table 2);
behaviour cloning as the TD3+BC paper's BC term (Fujimoto & Gu 2021, Sec. 5, without the Q term).

Equation map
- BC loss, per agent i: L_i = E_(o_i, a_i)~D ||mu_i(o_i) - a_i||^2 / A_i (the MSE term of
  TD3+BC's objective, Sec. 5): ``BC.update`` -> `offline_common.masked_mse`; the total loss is sum_i L_i
  (each agent has its own weights, so it gets exactly its own gradient).

Choices (configurable in gin/algorithms/bc.gin): a deterministic tanh actor per agent
(`dmarl.nn.per_agent.PerAgentActor`), not a Gaussian: the evaluation protocol acts
deterministically, the MA-TD3+BC BC term is this MSE, and the datasets' actions are boxed in
[-1, 1] so a tanh mean is the natural regressor. Width and batch are OMAR's MPE values (hidden 64,
batch 1024); the lr is 1e-3, not OMAR's 0.01 (that is for its TD3 agents), since neither paper
lists BC's own hyperparameters.
"""
from __future__ import annotations

import gin
import torch

from dmarl.algorithms.baselines.offline_common import PerAgentPolicy, masked_mse
from dmarl.data.batch import Batch
from dmarl.envs.base import EnvSpec
from dmarl.registry import register_algorithm


@register_algorithm("bc", kind="offline", paper="BC (per-agent behaviour cloning; OMAR's tables' baseline)")
@gin.configurable
class BC(PerAgentPolicy):
    """Per-agent deterministic behaviour cloning by MSE on the dataset actions."""

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "relu",
        actor_lr: float = 1e-3,
        expl_noise: float = 0.1,
        grad_clip: float | None = None,
    ) -> None:
        super().__init__(
            spec, device, hidden=hidden, activation=activation, actor_lr=actor_lr,
            expl_noise=expl_noise, grad_clip=grad_clip,
        )

    def loss(self, batch: Batch) -> torch.Tensor:
        """Per-agent BC loss ``[N]``."""
        return masked_mse(self.actor(batch.obs), batch.actions, self.action_mask)

    def update(self, batch: Batch) -> dict[str, float]:
        self.updates += 1
        per_agent = self.loss(batch)
        self._step(self.actor_optim, per_agent.sum(), self.actor)
        return {"train/bc_loss": per_agent.mean().item()}
