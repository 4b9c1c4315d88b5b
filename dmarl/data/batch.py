"""The one transition layout read by every algorithm, online and offline."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Batch:
    """A batch of B joint transitions (see DESIGN.md, "Batch").

    ``terminated`` is the termination flag: the bootstrap mask is ``1 - terminated``;
    truncation (time limits) is *not* termination. ``reward`` may be an n-step discounted
    sum (`dmarl.data.replay`); then ``discount`` holds gamma^m and ``next_*`` the state m
    steps on: targets are ``reward + batch.bootstrap_discount(gamma) (1 - terminated) V'``.
    """

    obs: torch.Tensor  # [B, N, O]
    state: torch.Tensor  # [B, S]
    actions: torch.Tensor  # [B, N, A] in [-1, 1]
    reward: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, N, O]
    next_state: torch.Tensor  # [B, S]
    terminated: torch.Tensor  # [B] float 0/1
    episode_id: torch.Tensor | None = None  # [B] int64
    return_to_go: torch.Tensor | None = None  # [B]
    agent_mask: torch.Tensor | None = None  # [B, N] float 0/1
    discount: torch.Tensor | None = None  # [B] bootstrap discount gamma^m of n-step samples

    def bootstrap_discount(self, gamma: float) -> torch.Tensor | float:
        """The factor of the bootstrap term: ``discount`` (n-step replay) or else ``gamma``."""
        return gamma if self.discount is None else self.discount

    def to(self, device: torch.device | str) -> "Batch":
        return replace(
            self,
            **{f.name: getattr(self, f.name).to(device) for f in fields(self) if getattr(self, f.name) is not None},
        )

    def __len__(self) -> int:
        return int(self.reward.shape[0])
