"""Train a small HASAC run on MPE simple_spread, then look at its policy through the Python API.

    python examples/evaluate_policy.py [--steps 2000] [--out example_out]

Everything goes to ``--out`` (MLflow store, run directory, GIF). The policy is loaded from
the MLflow artifact, as it would be on another machine (``tracking_uri=`` for a server).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import dmarl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training env steps (default: 2000)")
    parser.add_argument("--out", default="example_out", help="output folder (default: example_out)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"

    run = dmarl.train("experiments/hasac_simple_spread_cpu", tracking_uri=uri, bind=[
        f"OnlineRunner.total_env_steps = {args.steps}", "OnlineRunner.random_steps = 500",
        "OnlineRunner.learning_starts = 500", f"OnlineRunner.eval_interval = {args.steps}",
        f"OnlineRunner.checkpoint_interval = {args.steps}", f"run.checkpoint_dir = '{out / 'runs'}'",
    ])
    print(f"trained run {run.run_id}: {run.status}, final eval return {run.final_score:.2f}")

    policy = dmarl.load_policy(run.run_id, tracking_uri=uri)
    print(f"policy: {policy.manifest['algorithm']} on {policy.spec.name}, networks {policy.manifest['networks']}")
    env = policy.make_env(num_envs=2)
    obs, _ = env.reset(seed=0)
    print("actions of copy 0:\n", policy.act(obs)[0].round(2))
    env.close()

    result = dmarl.evaluate(run.run_id, episodes=10, video=out / "spread.gif", tracking_uri=uri)
    print(f"evaluation: {result.mean:.2f} +- {result.std:.2f} over {len(result.returns)} episodes; "
          f"GIF {result.video['path']} ({result.video['frames']} frames)")
    shifted = dmarl.evaluate(run.run_id, episodes=10, task_kwargs={"local_ratio": 0.9}, tracking_uri=uri)
    print(f"shifted (local_ratio 0.9): {shifted.mean:.2f} +- {shifted.std:.2f}")


if __name__ == "__main__":
    main()
