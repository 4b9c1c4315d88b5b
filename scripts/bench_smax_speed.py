"""Env steps/s of continuous SMAX (``smax/*``) with E = 1 and E = 20 copies under random actions.

One jitted, vmapped step serves all E copies, so E = 20 should step many times more env steps per
second than E = 1; the script prints both and their ratio per map (compilation is excluded: the
first step is a warm-up). Each (map, E) compiles anew (tens of seconds per compile on a loaded CPU).
Usage: ``python scripts/bench_smax_speed.py [--seconds 5] [--envs 1 20] [--maps 3s_vs_5z 6h_vs_8z]``
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench_env_speed import steps_per_second  # noqa: E402  (same folder: python scripts/bench_smax_speed.py)

from dmarl.envs.smax import SMAX_MAPS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="stepping time per (map, E)")
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 20], help="numbers of copies E")
    parser.add_argument("--maps", nargs="+", default=list(SMAX_MAPS), choices=SMAX_MAPS)
    args = parser.parse_args()
    print(f"{'task':16s} {'E':>4s} {'env steps/s':>12s}")
    for name in args.maps:
        rates = {}
        for num_envs in args.envs:
            rates[num_envs] = steps_per_second(f"smax/{name}", num_envs, args.seconds)
            print(f"{'smax/' + name:16s} {num_envs:4d} {rates[num_envs]:12,.0f}", flush=True)
        low, high = min(args.envs), max(args.envs)
        if low != high:
            print(f"smax/{name}: E={high} / E={low} = {rates[high] / rates[low]:.1f}x env steps/s")


if __name__ == "__main__":
    main()
