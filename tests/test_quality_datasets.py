"""scripts/make_quality_datasets.py: medium-replay episodes rebuilt from a real replay buffer."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np

from conftest import REPO
from dmarl.data.replay import ReplayBuffer


def _script():
    spec = importlib.util.spec_from_file_location("make_quality_datasets", REPO / "scripts/make_quality_datasets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_replay_episodes_are_whole_contiguous_and_in_end_order() -> None:
    """Two env streams: stream 0 ends episodes after 2 and 3 steps, stream 1 after 4 steps and then
    runs on unfinished; rewards encode (stream, step) so the rebuilt order can be read back."""
    buffer = ReplayBuffer(100, n_agents=2, obs_dim=3, action_dim=2, state_dim=4, n_step=1)  # gin may bind n_step
    done = {0: {1, 4}, 1: {3}}
    for t in range(6):
        reward = np.array([10 * s + t for s in (0, 1)], np.float32)
        buffer.add(
            obs=np.zeros((2, 2, 3)), state=np.zeros((2, 4)), actions=np.zeros((2, 2, 2)), reward=reward,
            next_obs=np.zeros((2, 2, 3)), next_state=np.zeros((2, 4)), terminated=np.zeros(2),
            done=np.array([t in done[s] for s in (0, 1)], np.float32),
        )
    state = buffer.state_dict()
    arrays, lengths = _script().replay_episodes({k: v.numpy() for k, v in state["data"].items()}, state["num_streams"])
    assert lengths.tolist() == [2, 4, 3]  # ended at steps 1 (stream 0), 3 (stream 1), 4 (stream 0)
    assert arrays["reward"].tolist() == [0, 1, 10, 11, 12, 13, 2, 3, 4]  # stream 0's step 5 is unfinished
    assert arrays["obs"].shape == (9, 2, 3)
