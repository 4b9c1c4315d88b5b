"""Update-time and acting-speed figures for online algorithms, measured in one run (not a test).

1. Time of one `update` on a replay batch, for each experiment gin (default: the HASAC
   and OMAD CPU-scale simple_spread configs), measured in interleaved blocks (``--block``
   updates of each algorithm in turn, ``--pairs`` rounds): the median ms per update and the
   median over rounds of each one's ratio to the first (robust to load on a shared machine).
   Both use the fused Adam kernel (OMAD's default; bound for HASAC, ``EQUAL_KERNELS``).
2. With ``--paper-scale``: the floating-point work of one update of each (torch's
   ``FlopCounterMode``), its GFLOP/s and the fraction of a 2048 x 2048 matmul's rate measured
   in the same rounds (the matmul peak on this machine, at this moment).
3. OMAD's env steps/s (collection + updates, as logged in `time/env_steps_per_s`) on
   HalfCheetah 2x3 at CPU scale (``--halfcheetah-steps 0`` skips it).

    python scripts/bench_algorithm_speed.py [--block 40] [--pairs 7] [--paper-scale]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from dmarl.data.replay import ReplayBuffer
from dmarl.runners.online import OnlineRunner
from dmarl.train import build_algorithm, make_task_env, parse_settings, run_training

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["gin/experiments/hasac_simple_spread_cpu.gin", "gin/experiments/omad_simple_spread_cpu.gin"]
PAPER_SCALE = [
    "OMAD.critic_hidden = (2048, 2048)", "OMAD.actor_hidden = (256, 256, 256)", "OMAD.time_dim = 256",
    "HASAC.hidden = (256, 256)",
]
# OMAD's default Adam kernel for HASAC too (HASAC's default stays torch's for-loop kernel so that
# the published boards reproduce): the ratio compares the algorithms, not their optimisers.
EQUAL_KERNELS = ["HASAC.adam_implementation = 'fused'"]


def filled_buffer(env: object, size: int, rng: np.random.Generator, gamma: float | None) -> ReplayBuffer:
    spec = env.spec  # gamma: the algorithm's, for the gin's ReplayBuffer.n_step returns
    buffer = ReplayBuffer(size, spec.n_agents, spec.obs_max, spec.act_max, spec.state_dim, gamma=gamma)
    obs, state = env.reset(seed=0)
    while len(buffer) < size:
        actions = rng.uniform(-1, 1, (env.num_envs, spec.n_agents, spec.act_max)).astype(np.float32)
        next_obs, next_state, reward, terminated, _, info = env.step(actions)
        buffer.add(obs=obs, state=state, actions=actions, reward=reward, next_obs=info["final_obs"],
                   next_state=info["final_state"], terminated=terminated, done=info["done"])
        obs, state = next_obs, next_state
    return buffer


class UpdateBench:
    """One algorithm built from an experiment gin with a filled replay buffer, ready to update."""

    def __init__(self, config_file: str, bindings: list[str]) -> None:
        settings = parse_settings([str(ROOT / config_file)], bindings)
        runner = OnlineRunner()
        env = make_task_env(settings, runner.num_envs)
        self.name, self.batch_size = settings.algorithm, runner.batch_size
        self.algorithm = build_algorithm(settings, env.spec)
        self.rng = np.random.default_rng(0)
        self.buffer = filled_buffer(env, 4096, self.rng, getattr(self.algorithm, "gamma", None))
        self.device = torch.device(settings.device)
        self.block(3)  # warm-up

    def update(self) -> None:
        self.algorithm.update(self.buffer.sample(self.batch_size, self.rng, self.device))

    def block(self, updates: int) -> float:
        """Seconds per update over ``updates`` consecutive updates."""
        start = time.perf_counter()
        for _ in range(updates):
            self.update()
        return (time.perf_counter() - start) / updates

    def flops(self, updates: int = 6) -> float:
        """Floating-point operations per update (forward, backward and optimiser matmuls), the
        mean over ``updates`` consecutive updates, a multiple of OMAD's policy delay (3): an
        update with a policy step costs more (OMAD paper scale: 25.2 vs 15.6 GFLOP)."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            for _ in range(updates):
                self.update()
        return counter.get_total_flops() / updates


def matmul_seconds(size: int = 2048, repeats: int = 5) -> float:
    """Seconds of one ``size`` x ``size`` float32 matmul (best of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def interleaved(benches: list[UpdateBench], block: int, pairs: int, peak: bool) -> dict[str, list[float]]:
    """Per round: seconds per update of each bench (and a matmul's seconds with ``peak``)."""
    times: dict[str, list[float]] = {b.name: [] for b in benches}
    times["matmul"] = []
    for _ in range(pairs):
        for bench in benches:
            times[bench.name].append(bench.block(block))
        if peak:
            times["matmul"].append(matmul_seconds())
    return times


def omad_halfcheetah_steps_per_s(steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        uri = f"sqlite:///{tmp}/mlflow.db"
        result = run_training(
            [str(ROOT / "gin/experiments/omad_halfcheetah_2x3_cpu.gin")],
            [f"OnlineRunner.total_env_steps = {steps}", "OnlineRunner.random_steps = 0",
             "OnlineRunner.learning_starts = 256", "OnlineRunner.eval_interval = 1000000",
             "OnlineRunner.final_eval_multiplier = 1", "OnlineRunner.eval_episodes = 1",
             "OnlineRunner.eval_num_envs = 1"],
            tracking_uri=uri, progress=False,
        )
        history = MlflowClient(uri).get_metric_history(result.run_id, "time/env_steps_per_s")
        return float(np.mean([m.value for m in history[1:]] or [m.value for m in history]))


def main() -> None:
    parser = argparse.ArgumentParser(description="Update time ratios and OMAD env steps/s.")
    parser.add_argument("--block", type=int, default=40, help="updates per block")
    parser.add_argument("--pairs", type=int, default=7, help="rounds of interleaved blocks")
    parser.add_argument("--paper-scale", action="store_true", help="paper network sizes (OMAD 2x2048 critic)")
    parser.add_argument("--halfcheetah-steps", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bindings = [*EQUAL_KERNELS, *(PAPER_SCALE if args.paper_scale else [])]
    benches = [UpdateBench(c, bindings) for c in CONFIGS]
    times = interleaved(benches, args.block, args.pairs, args.paper_scale)
    first = benches[0].name
    scale = "paper" if args.paper_scale else "CPU"
    print(f"update time ({scale}-scale networks, 1 thread; {args.pairs} rounds of {args.block}-update blocks, "
          f"interleaved; medians):")
    for bench in benches:
        ms = 1000 * statistics.median(times[bench.name])
        ratio = statistics.median(t / f for t, f in zip(times[bench.name], times[first]))
        print(f"  {bench.name:8s} batch {bench.batch_size:4d}  {ms:8.2f} ms/update  ratio to {first}: {ratio:.2f}")
    if args.paper_scale:
        peak = 2 * 2048**3 / statistics.median(times["matmul"]) / 1e9
        print(f"  matmul 2048^2 (same rounds): {peak:.1f} GFLOP/s")
        for bench in benches:
            flops = bench.flops()
            rates = [flops / t / 1e9 for t in times[bench.name]]
            fractions = [r / (2 * 2048**3 / m / 1e9) for r, m in zip(rates, times["matmul"])]
            print(f"  {bench.name:8s} {flops / 1e9:7.2f} GFLOP/update  {statistics.median(rates):6.1f} GFLOP/s  "
                  f"{100 * statistics.median(fractions):5.1f} % of the matmul rate")
    if args.halfcheetah_steps > 0:
        rate = omad_halfcheetah_steps_per_s(args.halfcheetah_steps)
        print(f"OMAD HalfCheetah 2x3 (CPU scale, 1 env, 1 update/env step): {rate:.1f} env steps/s")


if __name__ == "__main__":
    main()
