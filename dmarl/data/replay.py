"""A preallocated ring replay buffer of joint transitions in the Batch layout."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dmarl.data.batch import Batch

_FIELDS = ("obs", "state", "actions", "reward", "next_obs", "next_state", "terminated")


class ReplayBuffer:
    """Stores ``capacity`` transitions; ``add`` takes a vector of E transitions at once."""

    def __init__(self, capacity: int, n_agents: int, obs_dim: int, action_dim: int, state_dim: int) -> None:
        shapes = {
            "obs": (n_agents, obs_dim),
            "state": (state_dim,),
            "actions": (n_agents, action_dim),
            "reward": (),
            "next_obs": (n_agents, obs_dim),
            "next_state": (state_dim,),
            "terminated": (),
        }
        self.capacity = int(capacity)
        self.arrays = {k: np.zeros((self.capacity, *s), dtype=np.float32) for k, s in shapes.items()}
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, **transitions: np.ndarray) -> None:
        """Add E transitions: every field of the Batch layout with leading dim E."""
        n = len(transitions["reward"])
        idx = (self.pos + np.arange(n)) % self.capacity
        for key in _FIELDS:
            self.arrays[key][idx] = transitions[key]
        self.pos = int((self.pos + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device) -> Batch:
        idx = rng.integers(0, self.size, size=batch_size)
        return Batch(**{k: torch.as_tensor(self.arrays[k][idx], device=device) for k in _FIELDS})

    def filled(self, key: str) -> np.ndarray:
        """The stored rows of one field (for metrics such as state coverage)."""
        return self.arrays[key][: self.size]

    def state_dict(self) -> dict[str, Any]:
        data = {k: torch.from_numpy(v[: self.size].copy()) for k, v in self.arrays.items()}
        return {"pos": self.pos, "size": self.size, "data": data}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pos, self.size = int(state["pos"]), int(state["size"])
        for key, value in state["data"].items():
            self.arrays[key][: self.size] = value.numpy()
