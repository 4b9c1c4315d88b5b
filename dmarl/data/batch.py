"""The one transition layout read by every algorithm, online and offline."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Batch:
    """A batch of B joint transitions (see DESIGN.md, "Batch").

    ``terminated`` is the termination flag: the bootstrap mask is ``1 - terminated``;
    truncation (time limits) is *not* termination.
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

    def to(self, device: torch.device | str) -> "Batch":
        return replace(
            self,
            **{f.name: getattr(self, f.name).to(device) for f in fields(self) if getattr(self, f.name) is not None},
        )

    def __len__(self) -> int:
        return int(self.reward.shape[0])
