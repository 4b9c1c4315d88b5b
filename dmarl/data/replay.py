"""A preallocated ring replay buffer of joint transitions in the Batch layout, with optional
n-step returns (HARL's ``n_step``, `harl/common/buffers/off_policy_buffer_ep.py`).

Layout: ``add`` writes the E transitions of one vector step to E consecutive rows, so the
next transition of the same env copy lies E rows later (mod capacity) -- a *stream*.

n-step returns (``n_step = n > 1``): a sampled row t becomes
  reward   = sum_{k<m} gamma^k r_{t+k}
  next_*   = next_obs / next_state / terminated of row t+m-1
  discount = gamma^m                                     (Batch.discount)
with m = n, or fewer where the episode ends first (a row flagged ``done``: termination *or*
truncation) or where the stream's newest row is reached (the episode is still running).
The bootstrap y = reward + discount (1 - terminated) V(next) then stops at a termination and
bootstraps from the state where a truncated episode stopped (its stored ``next_obs``). With
``n_step = 1`` the samples are the stored transitions and ``Batch.discount`` is None (the
algorithm's own gamma), exactly as before.

Absent agents (``agent_mask``, e.g. SMAX's dead allies): each row keeps a float 0/1 mask
``[N]``, 1 where the agent is present in that row's ``obs`` (the state where the action was
taken; ``add(agent_mask=None)``: every agent present). ``sample`` returns the drawn rows' masks
in ``Batch.agent_mask`` only when one of them has an absent agent, else None (an all-ones mask
says nothing more): algorithms that ignore the field, and every env without absent agents, see
the batches they saw before, and the draws are the same. With n-step returns the mask is row t's.

Checkpoints: ``state_dict`` marks the rows as append-only (``dmarl.runners.checkpoint``
writes each row once into a chunk file), counting the rows ever added (row i sits at ring
position i mod capacity) and the first row changed since the last checkpoint.
"""
from __future__ import annotations

from typing import Any

import gin
import numpy as np
import torch

from dmarl.data.batch import Batch
from dmarl.errors import UserError
from dmarl.runners.checkpoint import CHUNKED_ROWS

_FIELDS = ("obs", "state", "actions", "reward", "next_obs", "next_state", "terminated")


@gin.configurable(allowlist=["n_step"])
class ReplayBuffer:
    """Stores ``capacity`` transitions; ``add`` takes a vector of E transitions at once.

    ``n_step``: length of the n-step return (1 = one-step transitions); ``gamma``: the discount
    of the n-step sum, required when ``n_step > 1`` (the runner passes the algorithm's).
    """

    def __init__(
        self,
        capacity: int,
        n_agents: int,
        obs_dim: int,
        action_dim: int,
        state_dim: int,
        n_step: int = 1,
        gamma: float | None = None,
    ) -> None:
        if not isinstance(n_step, int) or isinstance(n_step, bool) or n_step < 1:
            raise UserError(f"ReplayBuffer.n_step = {n_step!r}: expected an integer >= 1")
        if n_step > 1 and (gamma is None or not 0.0 <= float(gamma) <= 1.0):
            raise UserError(f"ReplayBuffer.n_step = {n_step} needs a discount gamma in [0, 1], got {gamma!r}")
        shapes = {
            "obs": (n_agents, obs_dim),
            "state": (state_dim,),
            "actions": (n_agents, action_dim),
            "reward": (),
            "next_obs": (n_agents, obs_dim),
            "next_state": (state_dim,),
            "terminated": (),
            "done": (),  # episode ended after this transition (terminated or truncated)
            "agent_mask": (n_agents,),  # 1 where the agent is present in obs
        }
        self.capacity = int(capacity)
        self.n_step, self.gamma = n_step, None if gamma is None else float(gamma)
        self.arrays = {k: np.zeros((self.capacity, *s), dtype=np.float32) for k, s in shapes.items()}
        self.pos = 0
        self.size = 0
        self.num_streams = 0  # E, fixed by the first add
        self.added = 0  # rows ever added: row i sits at position i % capacity
        self._journal: dict[str, Any] = {"clean_until": 0, "chunks": []}  # rows already checkpointed

    def __len__(self) -> int:
        return self.size

    def add(
        self, done: np.ndarray | None = None, agent_mask: np.ndarray | None = None, **transitions: np.ndarray
    ) -> None:
        """Add E transitions: every field of the Batch layout with leading dim E, ``done``
        (episode ended: terminated or truncated; defaults to ``terminated``) and ``agent_mask``
        ``[E, N]`` (bool or 0/1: the agent is present in ``obs``; None: every agent present)."""
        n = len(transitions["reward"])
        if self.num_streams == 0:
            if n > self.capacity:
                raise UserError(f"ReplayBuffer: {n} transitions per add exceed the capacity {self.capacity}")
            self.num_streams = n
        elif n != self.num_streams and self.n_step > 1:
            raise UserError(
                f"ReplayBuffer.n_step = {self.n_step} needs the same number of envs in every add "
                f"(got {n} after {self.num_streams})"
            )
        idx = (self.pos + np.arange(n)) % self.capacity
        for key in _FIELDS:
            self.arrays[key][idx] = transitions[key]
        self.arrays["done"][idx] = transitions["terminated"] if done is None else done
        self.arrays["agent_mask"][idx] = 1.0 if agent_mask is None else self._checked_mask(agent_mask, n)
        self.pos = int((self.pos + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))
        self.added += n

    def _checked_mask(self, agent_mask: np.ndarray, n: int) -> np.ndarray:
        """``agent_mask`` as an array of shape [n, N], or one UserError."""
        mask = np.asarray(agent_mask)
        expected = (n, self.arrays["agent_mask"].shape[1])
        if mask.shape != expected:
            raise UserError(f"ReplayBuffer.add: agent_mask has shape {mask.shape}; expected {expected} (envs, agents)")
        return mask

    def mark_episode_end(self) -> None:
        """Flag the newest transition of every stream as an episode end (the runner resets the
        envs here, truncating the episodes in progress)."""
        if self.size:
            self.arrays["done"][self._newest_rows()] = 1.0
            first = self.added - self.num_streams  # these rows changed: a checkpoint rewrites them
            self._journal["clean_until"] = min(self._journal["clean_until"], first)

    def _newest_rows(self) -> np.ndarray:
        return (self.pos - 1 - np.arange(self.num_streams)) % self.capacity

    def _is_newest(self, rows: np.ndarray) -> np.ndarray:
        return (self.pos - 1 - rows) % self.capacity < self.num_streams

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device) -> Batch:
        """``batch_size`` rows drawn uniformly (n-step windows from them); ``agent_mask`` only
        where a drawn row has an absent agent (module docstring)."""
        idx = rng.integers(0, self.size, size=batch_size)
        if self.n_step == 1:
            fields = {k: self.arrays[k][idx] for k in _FIELDS}
        else:
            last, reward, steps = self.n_step_rows(idx)
            fields = {k: self.arrays[k][idx] for k in ("obs", "state", "actions")}
            fields.update({k: self.arrays[k][last] for k in ("next_obs", "next_state", "terminated")})
            fields["reward"] = reward.astype(np.float32)
            fields["discount"] = (self.gamma ** steps).astype(np.float32)
        mask = self.arrays["agent_mask"][idx]
        if not mask.all():
            fields["agent_mask"] = mask
        return Batch(**{k: torch.as_tensor(v, device=device) for k, v in fields.items()})

    def n_step_rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For start rows ``idx``: the last row of each n-step window, the discounted reward
        sum over the window (float64) and its length m (int)."""
        assert self.gamma is not None
        row = np.asarray(idx, dtype=np.int64)
        reward = np.zeros(len(row), dtype=np.float64)
        steps = np.zeros(len(row), dtype=np.int64)
        active = np.ones(len(row), dtype=bool)
        for k in range(self.n_step):
            reward[active] += self.gamma**k * self.arrays["reward"][row[active]]
            steps[active] += 1
            if k == self.n_step - 1:
                break
            ends = (self.arrays["done"][row] > 0) | self._is_newest(row)
            active &= ~ends
            row = np.where(active, (row + self.num_streams) % self.capacity, row)
        return row, reward, steps

    def filled(self, key: str) -> np.ndarray:
        """The stored rows of one field (for metrics such as state coverage)."""
        return self.arrays[key][: self.size]

    def state_dict(self) -> dict[str, Any]:
        """Counters and the stored rows as views (no copy: save them before the next ``add``);
        the ``CHUNKED_ROWS`` entry is this buffer's record of what a checkpoint already holds,
        updated in place by ``checkpoint.save``."""
        data = {k: torch.from_numpy(v[: self.size]) for k, v in self.arrays.items()}
        self._journal.update(capacity=self.capacity, added=self.added)
        return {"pos": self.pos, "size": self.size, "num_streams": self.num_streams, "data": data,
                CHUNKED_ROWS: self._journal}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pos, self.size = int(state["pos"]), int(state["size"])
        self.num_streams = int(state.get("num_streams", 0))
        info = state.get(CHUNKED_ROWS)
        if info is not None and int(info["capacity"]) != self.capacity:
            raise UserError(f"ReplayBuffer: the saved buffer holds {info['capacity']} rows; expected capacity {self.capacity}")
        if info is None:  # a checkpoint written before chunks: any count consistent with pos and size
            self.added = self.size if self.size < self.capacity else self.capacity + self.pos
            self._journal = {"clean_until": 0, "chunks": []}
        else:
            self.added = int(info["added"])
            self._journal = {"clean_until": int(info.get("clean_until", self.added)),
                             "chunks": [dict(c) for c in info["chunks"]]}
        if "agent_mask" not in state["data"]:  # saved before the buffer kept masks: every agent present
            self.arrays["agent_mask"][: self.size] = 1.0
            self._journal["clean_until"] = 0  # its row chunks lack the field: the next save rewrites every row
        for key, value in state["data"].items():
            self.arrays[key][: self.size] = value.numpy()
