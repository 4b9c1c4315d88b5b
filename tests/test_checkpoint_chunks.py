"""Append-only replay-buffer chunks in checkpoints (issue 16): every checkpoint writes only the
rows added (or changed) since the previous one, loads back to the identical buffer through ring
wrap-around, and refuses missing or altered chunks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dmarl.data.replay import ReplayBuffer
from dmarl.errors import UserError
from dmarl.runners import checkpoint

CAPACITY, STREAMS = 20, 3


def _buffer() -> ReplayBuffer:
    return ReplayBuffer(CAPACITY, n_agents=2, obs_dim=3, action_dim=2, state_dim=4)


def _add(buffer: ReplayBuffer, rng: np.random.Generator) -> None:
    e = STREAMS
    buffer.add(
        obs=rng.normal(size=(e, 2, 3)), state=rng.normal(size=(e, 4)), actions=rng.normal(size=(e, 2, 2)),
        reward=rng.normal(size=e), next_obs=rng.normal(size=(e, 2, 3)), next_state=rng.normal(size=(e, 4)),
        terminated=(rng.random(e) < 0.2).astype(np.float32),
    )


def _loaded(path: Path) -> ReplayBuffer:
    copy = _buffer()
    copy.load_state_dict(checkpoint.load(path)["buffer"])
    return copy


def _assert_same(a: ReplayBuffer, b: ReplayBuffer) -> None:
    assert (a.pos, a.size, a.added, a.num_streams) == (b.pos, b.size, b.added, b.num_streams)
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key], err_msg=key)


def _chunk_rows(path: Path) -> list[tuple[int, int]]:
    listed = torch.load(path, weights_only=True)["buffer"][checkpoint.CHUNKED_ROWS]["chunks"]
    return [(c["start"], c["stop"]) for c in listed]


def test_each_checkpoint_writes_only_new_rows_and_loads_identically_through_wraparound(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "checkpoint.pt"
    buffer = _buffer()
    for segment, steps in enumerate([2, 3, 1, 4, 5, 2, 9, 1]):  # 81 rows through a 20-row ring
        before = buffer.added
        for _ in range(steps):
            _add(buffer, rng)
        buffer.mark_episode_end()  # changes the newest rows only: no older row is rewritten
        checkpoint.save(path, {"buffer": buffer.state_dict(), "step": torch.tensor(segment)})
        rows = _chunk_rows(path)
        assert rows[-1] == (max(before, buffer.added - CAPACITY), buffer.added)  # the new chunk: new rows only
        assert all(stop > buffer.added - CAPACITY for _, stop in rows)  # overwritten chunks are dropped
        files = sorted(f.name for f in checkpoint.rows_dir(path).iterdir())
        assert files == sorted(c["file"] for c in torch.load(path, weights_only=True)["buffer"]["chunked_rows"]["chunks"])
        _assert_same(_loaded(path), buffer)
    assert buffer.added > 4 * CAPACITY


def test_rows_changed_after_a_checkpoint_are_rewritten(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "checkpoint.pt"
    buffer = _buffer()
    for _ in range(3):
        _add(buffer, rng)
    checkpoint.save(path, {"buffer": buffer.state_dict()})
    buffer.mark_episode_end()  # flags rows the checkpoint already holds
    checkpoint.save(path, {"buffer": buffer.state_dict()})
    assert _chunk_rows(path) == [(0, 9), (6, 9)]
    _assert_same(_loaded(path), buffer)
    assert _loaded(path).arrays["done"][6:9].tolist() == [1.0, 1.0, 1.0]


def test_resumed_buffer_continues_the_chunk_list_and_a_copy_elsewhere_rewrites_its_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = tmp_path / "run" / "checkpoint.pt"
    buffer = _buffer()
    for _ in range(4):
        _add(buffer, rng)
    checkpoint.save(path, {"buffer": buffer.state_dict()})
    resumed = _loaded(path)
    twin = np.random.default_rng()
    twin.bit_generator.state = rng.bit_generator.state
    _add(buffer, rng)
    _add(resumed, twin)  # the same transition
    checkpoint.save(path, {"buffer": resumed.state_dict()})
    assert _chunk_rows(path) == [(0, 12), (12, 15)]
    _assert_same(_loaded(path), buffer)

    good = checkpoint.load(path)
    checkpoint.save(path, {**good, "note": "re-saved"})  # in place a loaded payload reuses the chunks
    assert _chunk_rows(path) == [(0, 12), (12, 15)]
    other = tmp_path / "other" / "checkpoint.pt"  # saved to another folder it carries its rows along
    checkpoint.save(other, good)
    assert _chunk_rows(other) == [(0, 15)]
    _assert_same(_loaded(other), buffer)


def test_missing_or_altered_chunk_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "checkpoint.pt"
    buffer = _buffer()
    for _ in range(4):
        _add(buffer, rng)
    checkpoint.save(path, {"buffer": buffer.state_dict()})
    chunk = next(checkpoint.rows_dir(path).iterdir())
    blob = bytearray(chunk.read_bytes())
    blob[-40] ^= 1
    chunk.write_bytes(bytes(blob))
    with pytest.raises(UserError, match=r"row chunk rows-.*\.pt is corrupt"):
        checkpoint.verify(path)
    chunk.unlink()
    with pytest.raises(UserError, match=r"row chunk rows-.*\.pt is missing"):
        checkpoint.load(path)
    assert not checkpoint.is_verified(path)


def test_checkpoint_without_chunks_still_loads(tmp_path: Path) -> None:
    """A buffer saved whole (the format before chunks) loads, and its next save writes all rows."""
    rng = np.random.default_rng(4)
    buffer = _buffer()
    for _ in range(9):
        _add(buffer, rng)
    state = buffer.state_dict()
    path = tmp_path / "checkpoint.pt"
    old = {k: state[k] for k in ("pos", "size", "num_streams")} | {"data": {k: v.clone() for k, v in state["data"].items()}}
    checkpoint.save(path, {"buffer": old})
    assert not checkpoint.rows_dir(path).exists()
    resumed = _loaded(path)
    np.testing.assert_array_equal(resumed.arrays["obs"], buffer.arrays["obs"])
    checkpoint.save(path, {"buffer": resumed.state_dict()})
    assert _chunk_rows(path) == [(resumed.added - CAPACITY, resumed.added)]
    for key in buffer.arrays:
        np.testing.assert_array_equal(_loaded(path).arrays[key], buffer.arrays[key])


def test_checkpoint_files_copied_elsewhere_load_to_the_same_buffer(tmp_path: Path) -> None:
    """What `run.upload_checkpoint` logs to MLflow: payload, sidecar and row chunks, enough to load."""
    import shutil

    rng = np.random.default_rng(5)
    path = tmp_path / "run" / "checkpoint.pt"
    buffer = _buffer()
    for _ in range(3):
        for _ in range(4):
            _add(buffer, rng)
        checkpoint.save(path, {"buffer": buffer.state_dict()})
    files = checkpoint.checkpoint_files(path)
    assert [f.name for f, where in files if where == ""] == ["checkpoint.pt", "checkpoint.pt.sha256"]
    assert len([f for f, where in files if where == "checkpoint.pt.rows"]) == len(_chunk_rows(path)) == 2
    copy = tmp_path / "artifacts" / "checkpoint"
    for file, where in files:
        (copy / where).mkdir(parents=True, exist_ok=True)
        shutil.copy(file, copy / where / file.name)
    _assert_same(_loaded(copy / "checkpoint.pt"), buffer)


def test_uploaded_checkpoint_holds_its_row_chunks_and_loads(workdir: Path) -> None:
    """`run.upload_checkpoint = True`: the MLflow artifacts are a loadable checkpoint (the rows too)."""
    import os

    from mlflow.tracking import MlflowClient

    from dmarl.train import run_training

    repo = Path(__file__).resolve().parent.parent
    bindings = [
        "HASAC.hidden = (8, 8)", "OnlineRunner.total_env_steps = 240", "OnlineRunner.num_envs = 4",
        "OnlineRunner.random_steps = 100", "OnlineRunner.learning_starts = 100", "OnlineRunner.batch_size = 32",
        "OnlineRunner.eval_interval = 1000000", "OnlineRunner.eval_episodes = 1", "OnlineRunner.eval_num_envs = 1",
        "OnlineRunner.final_eval_multiplier = 1", "OnlineRunner.checkpoint_interval = 80",
        "OnlineRunner.log_interval = 100", "run.upload_checkpoint = True",
    ]
    result = run_training([str(repo / "gin/experiments/hasac_simple_spread_cpu.gin")], bindings, progress=False)
    local = workdir / "runs" / result.run_id / "checkpoint.pt"
    assert len(_chunk_rows(local)) == 3  # one chunk per checkpoint (every 80 env steps)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    copy = Path(client.download_artifacts(result.run_id, "checkpoint", str(workdir / "download"))) / "checkpoint.pt"
    saved, uploaded = checkpoint.load(local)["buffer"], checkpoint.load(copy)["buffer"]
    assert saved["size"] == uploaded["size"] == 240
    for key, value in saved["data"].items():
        assert torch.equal(value, uploaded["data"][key]), key
