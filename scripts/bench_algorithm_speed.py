"""Update-time and acting-speed figures for online algorithms, measured in one run (not a test).

1. Mean time of one `update` on a replay batch, for each experiment gin (default: the HASAC
   and OMAD CPU-scale simple_spread configs), and each one's ratio to the first.
2. OMAD's env steps/s (collection + updates, as logged in `time/env_steps_per_s`) on
   HalfCheetah 2x3 at CPU scale.

    python scripts/bench_algorithm_speed.py [--updates 30] [--paper-scale]
"""
from __future__ import annotations

import argparse
import os
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


def update_ms(config_file: str, bindings: list[str], updates: int) -> tuple[str, int, float]:
    settings = parse_settings([str(ROOT / config_file)], bindings)
    runner = OnlineRunner()
    env = make_task_env(settings, runner.num_envs)
    algorithm = build_algorithm(settings, env.spec)
    rng = np.random.default_rng(0)
    buffer = filled_buffer(env, 4096, rng, getattr(algorithm, "gamma", None))
    device = torch.device(settings.device)
    for _ in range(3):  # warm-up
        algorithm.update(buffer.sample(runner.batch_size, rng, device))
    start = time.perf_counter()
    for _ in range(updates):
        algorithm.update(buffer.sample(runner.batch_size, rng, device))
    return settings.algorithm, runner.batch_size, 1000 * (time.perf_counter() - start) / updates


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
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--paper-scale", action="store_true", help="paper network sizes (OMAD 2x2048 critic)")
    parser.add_argument("--halfcheetah-steps", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bindings = PAPER_SCALE if args.paper_scale else []
    results = [update_ms(c, bindings, args.updates) for c in CONFIGS]
    scale = "paper" if args.paper_scale else "CPU"
    print(f"update time ({scale}-scale networks, 1 thread):")
    for name, batch, ms in results:
        print(f"  {name:8s} batch {batch:4d}  {ms:8.2f} ms/update  ratio to {results[0][0]}: {ms / results[0][2]:.2f}")
    rate = omad_halfcheetah_steps_per_s(args.halfcheetah_steps)
    print(f"OMAD HalfCheetah 2x3 (CPU scale, 1 env, 1 update/env step): {rate:.1f} env steps/s")


if __name__ == "__main__":
    main()
