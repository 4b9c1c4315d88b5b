"""Speed and memory of the native dataset format (not a test).

Writes a simple_spread-sized native dataset (3 agents, obs 18, actions 5, state 54, 25-step
episodes; 1,000,000 transitions by default) with random contents, then, in a fresh process,
measures: load time, resident memory (RSS) against the raw array bytes, and batches of 512
sampled per second (uniform and return-weighted) on the chosen device.

    OMP_NUM_THREADS=1 python scripts/bench_dataset_io.py [--transitions 1000000] [--dir DIR] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_AGENTS, OBS, ACT, STATE, EPISODE = 3, 18, 5, 54, 25


def create(path: Path, transitions: int) -> None:
    """A random native dataset of ``transitions`` rows in 25-step episodes."""
    import numpy as np

    from dmarl.data.offline import EpisodeIndex, OfflineDataset
    from dmarl.envs.datasets.native import write_native

    rng = np.random.default_rng(0)
    t = transitions
    lengths = np.full(t // EPISODE, EPISODE)
    if t % EPISODE:
        lengths = np.append(lengths, t % EPISODE)
    reward = rng.normal(size=t).astype(np.float32)
    arrays = {
        "obs": rng.standard_normal((t, N_AGENTS, OBS), dtype=np.float32),
        "next_obs": rng.standard_normal((t, N_AGENTS, OBS), dtype=np.float32),
        "state": rng.standard_normal((t, STATE), dtype=np.float32),
        "next_state": rng.standard_normal((t, STATE), dtype=np.float32),
        "actions": rng.uniform(-1, 1, size=(t, N_AGENTS, ACT)).astype(np.float32),
        "reward": reward,
        "terminated": np.zeros(t, np.float32),
    }
    returns = np.add.reduceat(reward.astype(np.float64), np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    dataset = OfflineDataset(
        arrays,
        EpisodeIndex.from_lengths(lengths, returns),
        metadata={"provenance": {"policy": "synthetic (bench_dataset_io.py)"}},
    )
    write_native(dataset, path, force=True)


def measure(path: Path, device: str, seconds: float) -> dict[str, float]:
    """Load and sample in this (fresh) process; RSS from psutil."""
    import numpy as np
    import psutil
    import torch

    from dmarl.data.offline import ReturnWeightedSampler, UniformSampler
    from dmarl.envs.datasets import load_dataset

    proc = psutil.Process()
    baseline = proc.memory_info().rss
    start = time.perf_counter()
    dataset = load_dataset(path)
    load_s = time.perf_counter() - start
    after_load = proc.memory_info().rss
    out = {
        "transitions": len(dataset),
        "raw_bytes": dataset.nbytes,
        "load_s": load_s,
        "rss_baseline": baseline,
        "rss_after_load": after_load,
    }
    rng = np.random.default_rng(0)
    for name, sampler in (
        ("uniform", UniformSampler(dataset)),
        ("return_weighted", ReturnWeightedSampler(dataset, copies=5, threshold=0.8)),
    ):
        sampler.sample(512, rng, device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            sampler.sample(512, rng, device)
            count += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out[f"{name}_batches_per_s"] = count / (time.perf_counter() - start)
    out["rss_after_sampling"] = proc.memory_info().rss
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the dataset (default: a temp dir)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=3.0, help="sampling time per sampler")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.device, args.seconds)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "spread_native"
        start = time.perf_counter()
        create(path, args.transitions)
        write_s = time.perf_counter() - start
        cmd = [
            sys.executable,
            __file__,
            "--measure",
            str(path),
            "--device",
            args.device,
            "--seconds",
            str(args.seconds),
        ]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    mib = 2**20
    print(
        f"native dataset: {r['transitions']:,} transitions ({N_AGENTS} agents, obs {OBS}, act {ACT}, state {STATE}); "
        f"raw array bytes {r['raw_bytes'] / mib:.0f} MiB; written in {write_s:.1f} s"
    )
    print(f"load (memory-mapped, all files checked for NaN/Inf, warm page cache): {r['load_s']:.2f} s")
    for key in ("rss_after_load", "rss_after_sampling"):
        delta = r[key] - r["rss_baseline"]
        print(
            f"RSS {key[4:].replace('_', ' ')}: {r[key] / mib:.0f} MiB total = {r[key] / r['raw_bytes']:.2f}x raw; "
            f"{delta / mib:.0f} MiB over the {r['rss_baseline'] / mib:.0f} MiB interpreter+torch baseline "
            f"= {delta / r['raw_bytes']:.2f}x raw"
        )
    print(
        f"batches of 512 on {args.device}: uniform {r['uniform_batches_per_s']:.0f}/s, "
        f"return-weighted {r['return_weighted_batches_per_s']:.0f}/s"
    )


if __name__ == "__main__":
    main()
