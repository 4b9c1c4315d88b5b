"""scripts/make_quality_datasets.py: medium-replay episodes rebuilt from a real replay buffer."""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable

import numpy as np

from conftest import REPO
from dmarl.data.replay import ReplayBuffer


def _script():
    spec = importlib.util.spec_from_file_location("make_quality_datasets", REPO / "scripts/make_quality_datasets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _two_stream_episodes(agent_mask: Callable[[int], np.ndarray | None]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Two env streams: stream 0 ends episodes after 2 and 3 steps, stream 1 after 4 steps and then
    runs on unfinished; rewards encode (stream, step) so the rebuilt order can be read back;
    ``agent_mask(t)`` is the mask stored at step t."""
    buffer = ReplayBuffer(100, n_agents=2, obs_dim=3, action_dim=2, state_dim=4, n_step=1)  # gin may bind n_step
    done = {0: {1, 4}, 1: {3}}
    for t in range(6):
        reward = np.array([10 * s + t for s in (0, 1)], np.float32)
        buffer.add(
            obs=np.zeros((2, 2, 3)), state=np.zeros((2, 4)), actions=np.zeros((2, 2, 2)), reward=reward,
            next_obs=np.zeros((2, 2, 3)), next_state=np.zeros((2, 4)), terminated=np.zeros(2),
            done=np.array([t in done[s] for s in (0, 1)], np.float32), agent_mask=agent_mask(t),
        )
    state = buffer.state_dict()
    return _script().replay_episodes({k: v.numpy() for k, v in state["data"].items()}, state["num_streams"])


def test_replay_episodes_are_whole_contiguous_and_in_end_order() -> None:
    arrays, lengths = _two_stream_episodes(lambda t: None)
    assert lengths.tolist() == [2, 4, 3]  # ended at steps 1 (stream 0), 3 (stream 1), 4 (stream 0)
    assert arrays["reward"].tolist() == [0, 1, 10, 11, 12, 13, 2, 3, 4]  # stream 0's step 5 is unfinished
    assert arrays["obs"].shape == (9, 2, 3)
    assert "agent_mask" not in arrays  # every agent present: the dataset has no mask


def test_replay_episodes_keep_the_rows_agent_mask_where_an_agent_is_absent() -> None:
    """Stream 1's agent 1 is dead from step 2 on: its rows carry the mask in the rebuilt order."""
    arrays, _ = _two_stream_episodes(lambda t: np.array([[1, 1], [1, t < 2]], np.float32))
    assert arrays["agent_mask"][:, 0].tolist() == [1] * 9
    assert arrays["agent_mask"][:, 1].tolist() == [1, 1, 1, 1, 0, 0, 1, 1, 1]  # rows 10-13 are stream 1's
