"""The Algorithm protocol every algorithm module implements."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from dmarl.data.batch import Batch


@runtime_checkable
class Algorithm(Protocol):
    """Decentralised actors + whatever training machinery the paper needs.

    ``act`` receives padded observations ``[E, N, O_max]`` (agent i may only look at
    ``obs[:, i]``) and returns actions ``[E, N, A_max]`` in [-1, 1] as a numpy array.
    ``update`` performs one update step and returns scalar metrics named ``train/<loss>`` etc.
    ``state_dict`` / ``load_state_dict``: everything a resumed run needs to continue bit for bit;
    `dmarl.algorithms.state.Checkpointed` derives both from the attributes a class declares.
    """

    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray: ...

    def update(self, batch: Batch) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
