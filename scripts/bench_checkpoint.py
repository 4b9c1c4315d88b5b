"""Checkpoint cost vs replay-buffer size (issue 16): seconds and bytes written per checkpoint.

For buffers of 1e4, 1e5 and 1e6 transitions (MaMuJoCo-Ant-like widths: 2 agents, 54-d
observations, 4-d actions, 105-d state; float32 rows), each filled to capacity:
  full   the previous format: the whole buffer copied and written into checkpoint.pt;
  first  the first chunked checkpoint (every row once: the same order of cost as ``full``);
  next   the following checkpoint after ``--new`` more transitions (one checkpoint_interval):
         only those rows are written, so its cost does not grow with the buffer.
Each figure is the median of ``--repeats`` checkpoints. Also checks that the chunked
checkpoint loads back to the same buffer.

Usage: OMP_NUM_THREADS=1 python scripts/bench_checkpoint.py [--sizes 1e4 1e5 1e6] [--new 10000]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dmarl.data.replay import ReplayBuffer
from dmarl.runners import checkpoint

N_AGENTS, OBS_DIM, ACT_DIM, STATE_DIM = 2, 54, 4, 105
BLOCK = 10_000  # rows per add while filling


def add_rows(buffer: ReplayBuffer, n: int, value: float) -> None:
    """Add ``n`` transitions whose fields are all ``value`` (their content does not matter)."""
    while n > 0:
        e = min(n, BLOCK)
        buffer.add(
            obs=np.full((e, N_AGENTS, OBS_DIM), value, np.float32), state=np.full((e, STATE_DIM), value, np.float32),
            actions=np.full((e, N_AGENTS, ACT_DIM), value, np.float32), reward=np.full(e, value, np.float32),
            next_obs=np.full((e, N_AGENTS, OBS_DIM), value, np.float32),
            next_state=np.full((e, STATE_DIM), value, np.float32), terminated=np.zeros(e, np.float32),
        )
        n -= e


def written_bytes(path: Path) -> int:
    """Bytes of the payload plus its row chunks."""
    folder = checkpoint.rows_dir(path)
    chunks = sum(f.stat().st_size for f in folder.iterdir()) if folder.is_dir() else 0
    return path.stat().st_size + chunks


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(capacity: int, new: int, repeats: int, root: Path) -> dict[str, float]:
    buffer = ReplayBuffer(capacity, N_AGENTS, OBS_DIM, ACT_DIM, STATE_DIM)
    add_rows(buffer, capacity, 1.0)
    full_path, path = root / f"full{capacity}" / "checkpoint.pt", root / f"chunked{capacity}" / "checkpoint.pt"

    def save_full() -> None:  # what every checkpoint cost before: a copy of the buffer, then torch.save
        state = buffer.state_dict()
        data = {k: v.clone() for k, v in state["data"].items()}
        checkpoint.save(full_path, {"buffer": {"pos": state["pos"], "size": state["size"], "data": data}})

    full = statistics.median(timed(save_full) for _ in range(repeats))
    full_bytes = written_bytes(full_path)
    first = timed(lambda: checkpoint.save(path, {"buffer": buffer.state_dict()}))
    first_bytes = written_bytes(path)
    nexts, next_bytes = [], []
    for r in range(repeats):
        add_rows(buffer, new, float(r + 2))
        before = {f.name for f in checkpoint.rows_dir(path).iterdir()}
        nexts.append(timed(lambda: checkpoint.save(path, {"buffer": buffer.state_dict()})))
        fresh = [f for f in checkpoint.rows_dir(path).iterdir() if f.name not in before]
        next_bytes.append(path.stat().st_size + sum(f.stat().st_size for f in fresh))
    copy = ReplayBuffer(capacity, N_AGENTS, OBS_DIM, ACT_DIM, STATE_DIM)
    copy.load_state_dict(checkpoint.load(path)["buffer"])
    same = all(np.array_equal(copy.arrays[k], buffer.arrays[k]) for k in buffer.arrays) and copy.pos == buffer.pos
    row_bytes = sum(a[0].nbytes for a in buffer.arrays.values())
    return {"capacity": capacity, "row_bytes": row_bytes, "full_s": full, "full_MB": full_bytes / 1e6,
            "first_s": first, "first_MB": first_bytes / 1e6, "next_s": statistics.median(nexts),
            "next_MB": statistics.median(next_bytes) / 1e6, "same": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    parser.add_argument("--new", type=int, default=10_000, help="transitions added between checkpoints")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"rows: {N_AGENTS} agents, obs {OBS_DIM}, act {ACT_DIM}, state {STATE_DIM}; "
          f"{args.new} transitions between checkpoints; median of {args.repeats}")
    print(f"{'capacity':>9} {'full s':>8} {'full MB':>9} {'first s':>8} {'first MB':>9} "
          f"{'next s':>8} {'next MB':>8} {'full/next':>9} load==saved")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            r = bench(int(size), args.new, args.repeats, Path(tmp))
            print(f"{r['capacity']:>9d} {r['full_s']:>8.3f} {r['full_MB']:>9.1f} {r['first_s']:>8.3f} "
                  f"{r['first_MB']:>9.1f} {r['next_s']:>8.3f} {r['next_MB']:>8.1f} "
                  f"{r['full_s'] / r['next_s']:>8.1f}x {r['same']}", flush=True)


if __name__ == "__main__":
    main()
