"""DDPL's train-step and inference time, and DDPL / DDPL-Gaussian, in one run (not a test).

Paper 002, Table 2 (JAX, RTX 5090, IsaacLab Bi-ShadowHand): DDPL 3.684 ms per training step,
DDPL-Gaussian 2.599 ms (ratio 1.42), inference 0.820 / 0.374 ms. Here: PyTorch on this
machine, paper-scale networks (gin/algorithms/ddpl.gin: 3 x 256 mish, 20 denoising steps,
K = 16 ISSM samples, batch 256) on a replay buffer of random transitions of a task. One
training step = one ``update`` (critic step, plus the policy step every ``policy_delay`` = 2
updates, as in the algorithm). Timing: interleaved blocks (diffusion, Gaussian, diffusion, ...)
so load changes hit both alike; the median block time per step is reported.

    python scripts/bench_ddpl_speed.py [--task mpe/simple_spread_n3] [--blocks 5] [--steps 10]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from dmarl.algorithms.ddpl import DDPL
from dmarl.data.replay import ReplayBuffer
from dmarl.envs.factory import make_env


def filled_buffer(task: str, size: int, rng: np.random.Generator) -> tuple[ReplayBuffer, object]:
    env = make_env(task, 8)
    spec = env.spec
    buffer = ReplayBuffer(size, spec.n_agents, spec.obs_max, spec.act_max, spec.state_dim)
    obs, state = env.reset(seed=0)
    while len(buffer) < size:
        actions = (rng.uniform(-1, 1, (env.num_envs, spec.n_agents, spec.act_max)) * spec.action_mask()).astype(np.float32)
        next_obs, next_state, reward, terminated, _, info = env.step(actions)
        buffer.add(obs=obs, state=state, actions=actions, reward=reward, next_obs=info["final_obs"],
                   next_state=info["final_state"], terminated=terminated, done=info["done"])
        obs, state = next_obs, next_state
    env.close()
    return buffer, spec


def block_ms(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return 1000.0 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mpe/simple_spread_n3")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="updates (and actions) per block")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    buffer, spec = filled_buffer(args.task, 2048, rng)
    cpu = torch.device("cpu")
    algos = {kind: DDPL(spec, cpu, policy_class=kind) for kind in ("diffusion", "gaussian")}
    obs = buffer.sample(1, rng, cpu).obs.numpy()  # one joint observation: one action per agent
    train: dict[str, list[float]] = {k: [] for k in algos}
    infer: dict[str, list[float]] = {k: [] for k in algos}
    for algo in algos.values():  # warm-up
        algo.update(buffer.sample(args.batch, rng, cpu))
        algo.act(obs, explore=True)
    for _ in range(args.blocks):
        for kind, algo in algos.items():
            train[kind].append(block_ms(lambda: algo.update(buffer.sample(args.batch, rng, cpu)), args.steps))
            infer[kind].append(block_ms(lambda: algo.act(obs, explore=True), args.steps))
    med = {k: (statistics.median(train[k]), statistics.median(infer[k])) for k in algos}
    print(f"task {args.task} ({spec.n_agents} agents), batch {args.batch}, K = {algos['diffusion'].issm_samples}, "
          f"{algos['diffusion'].schedule.num_steps} denoising steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.blocks} interleaved blocks of {args.steps}")
    for kind, (tr, inf) in med.items():
        name = "DDPL" if kind == "diffusion" else "DDPL-Gaussian"
        print(f"{name:14s} train step {tr:9.2f} ms   inference {inf:8.3f} ms per joint action "
              f"({inf / spec.n_agents:.3f} ms per agent action)")
    ratio = med["diffusion"][0] / med["gaussian"][0]
    print(f"train-step ratio DDPL / DDPL-Gaussian = {ratio:.2f} (paper, Table 2: 3.684 / 2.599 = 1.42)")
    print(f"inference ratio DDPL / DDPL-Gaussian = {med['diffusion'][1] / med['gaussian'][1]:.2f} "
          f"(paper: 0.820 / 0.374 = 2.19)")


if __name__ == "__main__":
    main()
