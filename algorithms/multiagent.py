"""Padding helpers shared by algorithms: agent i's true obs/action slices of the padded
``[B, N, O_max]`` / ``[B, N, A_max]`` tensors, and the joint action vector for critics."""
from __future__ import annotations

import torch

from dmarl.envs.base import EnvSpec


class AgentSlices:
    """Maps between padded per-agent tensors and each agent's true dims."""

    def __init__(self, spec: EnvSpec) -> None:
        self.obs_dims, self.action_dims, self.act_max = spec.obs_dims, spec.action_dims, spec.act_max

    def obs(self, obs: torch.Tensor, i: int) -> torch.Tensor:
        """Agent i's own observation ``[..., O_i]`` (decentralised input)."""
        return obs[..., i, : self.obs_dims[i]]

    def joint_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Padded ``[..., N, A_max]`` -> concatenated true actions ``[..., sum_i A_i]``."""
        return torch.cat([actions[..., i, :d] for i, d in enumerate(self.action_dims)], dim=-1)

    def pad_actions(self, actions: list[torch.Tensor]) -> torch.Tensor:
        """Per-agent ``[..., A_i]`` -> padded ``[..., N, A_max]`` (zeros in the padding)."""
        return torch.stack([torch.nn.functional.pad(a, (0, self.act_max - a.shape[-1])) for a in actions], dim=-2)
