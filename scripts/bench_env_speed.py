"""Env steps/s (E copies x batched steps) of every registered task under random actions.

Also prints the JaxMARL / mpe2 speed ratio on simple_spread (N=3), both measured in this run.
Usage: ``python scripts/bench_env_speed.py [--seconds 2] [--envs 8] [--jax-envs 1024] [--only mpe/]``
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from dmarl.envs.factory import make_env  # noqa: E402
from dmarl.registry import TASKS, get_task  # noqa: E402

VECTORISED_FAMILIES = ("jaxmarl", "toy")  # one array op steps all copies: use --jax-envs copies


def steps_per_second(task: str, num_envs: int, seconds: float) -> float:
    """Env steps/s of ``task`` with ``num_envs`` copies over about ``seconds`` of stepping."""
    env = make_env(task, num_envs)
    spec = env.spec
    rng = np.random.default_rng(0)
    pool = rng.uniform(-1, 1, (8, num_envs, spec.n_agents, spec.act_max)).astype(np.float32)
    env.reset(seed=0)
    env.step(pool[0])  # warm-up (JaxMARL compiles here)
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        env.step(pool[steps % len(pool)])
        steps += 1
    env.close()
    return num_envs * steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="stepping time per task")
    parser.add_argument("--envs", type=int, default=8, help="copies for Python-loop families (mpe, mamujoco)")
    parser.add_argument("--jax-envs", type=int, default=1024, help="copies for vectorised families (jaxmarl, toy)")
    parser.add_argument("--only", default="", help="only tasks whose name starts with this prefix")
    args = parser.parse_args()

    get_task("toy/bandit")  # imports every task module
    rates: dict[str, float] = {}
    print(f"{'task':30s} {'E':>5s} {'env steps/s':>12s}")
    for task in sorted(t for t in TASKS if t.startswith(args.only)):
        num_envs = args.jax_envs if TASKS[task].family in VECTORISED_FAMILIES else args.envs
        rates[task] = steps_per_second(task, num_envs, args.seconds)
        print(f"{task:30s} {num_envs:5d} {rates[task]:12,.0f}", flush=True)
    jax_rate, mpe_rate = rates.get("jaxmarl/simple_spread_n3"), rates.get("mpe/simple_spread_n3")
    if jax_rate and mpe_rate:
        print(
            f"simple_spread N=3: JaxMARL (E={args.jax_envs}) {jax_rate:,.0f} / mpe2 (E={args.envs}) "
            f"{mpe_rate:,.0f} env steps/s = {jax_rate / mpe_rate:.1f}x"
        )


if __name__ == "__main__":
    main()
