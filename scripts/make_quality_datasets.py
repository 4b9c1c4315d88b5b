"""Make the random / medium / medium-replay / expert datasets of DOM2's (and OMAR's) setting on
the suite's own tasks, with provenance, in one command::

    OMP_NUM_THREADS=1 python scripts/make_quality_datasets.py                  # both tasks
    OMP_NUM_THREADS=1 python scripts/make_quality_datasets.py --task mpe/simple_spread_n3

Recipe (per task; OMAR's qualities, arXiv 2111.11188 Sec. 5, at CPU scale):

- ``expert``: episodes of a HASAC run trained for ``expert_steps`` env steps (deterministic policy);
- ``medium``: episodes of a second HASAC run stopped early, after ``medium_steps`` env steps
  (about half way from random to expert: the measured returns are printed and kept in the
  provenance, so the "half" can be checked);
- ``medium-replay``: every complete episode in that medium run's replay buffer (its random
  warm-up included), i.e. what the agent saw until it reached medium performance;
- ``random``: uniform actions in [-1, 1].

Runs are tracked in ``--tracking-uri`` (default ``sqlite:///datasets/quality/mlflow.db``,
experiment ``dmarl-quality``) under the names ``quality-<task>-<role>``; a FINISHED run of that
name is reused, so a second call only re-collects (``--force`` overwrites datasets). Datasets are
written in the native format to ``datasets/quality/<task>/<quality>`` (gitignored: the recipe is
committed, the data is not); each one's ``metadata.json`` holds the provenance (policy run,
its final evaluation return, training config and bindings, collection seed, package versions)
and ``datasets/quality/<task>/summary.json`` the return statistics of the four qualities.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
QUALITIES = ("random", "medium", "medium-replay", "expert")
EXPERIMENT = "dmarl-quality"


@dataclass(frozen=True)
class Recipe:
    """How one task's behaviour policies are trained and how many episodes are collected."""

    config: str
    bindings: tuple[str, ...]
    medium_steps: int
    expert_steps: int
    episodes: int
    num_envs: int


RECIPES = {
    # Measured 2026-12-02 (seed 0, 2 loaded cores; training 39 s + 153 s): medium run -69.4, expert
    # run -58.3; datasets: random -76.9, medium -67.7 (47 % of the way), medium-replay -73.6
    # (320 episodes), expert -57.3 (return means).
    "mpe/simple_spread_n3": Recipe(
        "gin/experiments/hasac_simple_spread_cpu.gin", (), medium_steps=8000, expert_steps=40000,
        episodes=1000, num_envs=50,
    ),
    # HARL's HalfCheetah 2x3 HASAC settings with hatd3_halfcheetah_2x3_cpu.gin's CPU scale.
    # Measured 2026-12-02 (training 111 s + 1360 s under load): at this budget HASAC only learns to
    # stand still (small control cost): random -274.9, medium -10.8, medium-replay -185.6, expert
    # -41.3, so "expert" is NOT better than "medium" here; a real expert needs ~1e6 env steps.
    "mamujoco/halfcheetah_2x3": Recipe(
        "gin/experiments/hasac_mamujoco_halfcheetah_2x3.gin",
        (
            "HASAC.hidden = (64, 64)", "OnlineRunner.num_envs = 4", "OnlineRunner.batch_size = 256",
            "OnlineRunner.random_steps = 5000", "OnlineRunner.learning_starts = 5000",
            "OnlineRunner.updates_per_env_step = 0.25", "OnlineRunner.eval_interval = 10000",
            "OnlineRunner.eval_episodes = 4", "OnlineRunner.eval_num_envs = 4",
            "OnlineRunner.checkpoint_interval = 10000", "OnlineRunner.log_interval = 2000",
        ),
        medium_steps=10000, expert_steps=30000, episodes=20, num_envs=4,
    ),
}


def slug(task: str) -> str:
    return task.replace("/", "_")


def trained_run(task: str, role: str, steps: int, recipe: Recipe, uri: str, checkpoints: Path) -> tuple[str, float]:
    """The FINISHED run ``quality-<task>-<role>`` (trained now if there is none): id, final return."""
    from mlflow.tracking import MlflowClient

    from dmarl.train import run_training

    name = f"quality-{slug(task)}-{role}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        found = client.search_runs(
            [exp.experiment_id], f"tags.mlflow.runName = '{name}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )
        if found:
            print(f"{name}: reusing run {found[0].info.run_id}")
            return found[0].info.run_id, float(found[0].data.metrics["final/return_mean"])
    bindings = [*recipe.bindings, f"OnlineRunner.total_env_steps = {steps}", f"run.checkpoint_dir = '{checkpoints}'"]
    start = time.perf_counter()
    result = run_training([str(REPO / recipe.config)], bindings, tracking_uri=uri, experiment=EXPERIMENT,
                          run_name=name, progress=False)
    if result.status != "FINISHED" or result.final_score is None:
        raise SystemExit(f"{name}: training ended {result.status}; see run {result.run_id}")
    print(f"{name}: trained run {result.run_id} in {time.perf_counter() - start:.0f} s, final return {result.final_score:.2f}")
    return result.run_id, float(result.final_score)


def replay_dataset(run_id: str, uri: str, spec: Any) -> Any:
    """Every complete episode of a finished online run's replay buffer (its last checkpoint),
    in the order the episodes ended; an episode still running at the end is dropped."""
    from dmarl.data.offline import EpisodeIndex, OfflineDataset
    from dmarl.envs.datasets.common import episode_returns
    from dmarl.runners import checkpoint
    from dmarl.train import saved_run_dir

    path = saved_run_dir(run_id, uri) / checkpoint.CHECKPOINT_FILE
    buffer = checkpoint.load(path)["buffer"]
    if int(buffer["size"]) != int(buffer["pos"]):
        raise SystemExit(f"{path}: the replay buffer wrapped around (size {buffer['size']}); raise its capacity")
    arrays, lengths = replay_episodes({k: v.numpy() for k, v in buffer["data"].items()}, int(buffer["num_streams"]))
    metadata = {"format": "collected", "task": spec.name, "reward_convention": spec.reward_convention,
                "true_dims_known": True, "provenance": {"env": spec.name, "family": spec.family,
                                                        "policy": f"replay:{run_id}", "versions": spec.versions}}
    return OfflineDataset(arrays, EpisodeIndex.from_lengths(lengths, episode_returns(arrays["reward"], lengths)),
                          obs_dims=spec.obs_dims, action_dims=spec.action_dims, metadata=metadata)


def replay_episodes(data: dict[str, np.ndarray], streams: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Complete episodes of an unwrapped replay buffer (row r belongs to env stream r mod E;
    ``done`` ends an episode), contiguous and ordered by the row they ended at (with
    ``agent_mask`` where an agent is absent somewhere); the lengths."""
    size = len(data["reward"])
    episodes: list[tuple[int, np.ndarray]] = []  # (row the episode ended at, its rows)
    for s in range(streams):
        rows = np.arange(s, size, streams)
        ends = rows[data["done"][rows] > 0]
        first = 0
        for end in ends:
            last = int(np.searchsorted(rows, end))
            episodes.append((int(end), rows[first : last + 1]))
            first = last + 1
    episodes.sort(key=lambda e: e[0])
    order = np.concatenate([rows for _, rows in episodes])
    keys = ("obs", "state", "actions", "reward", "next_obs", "next_state", "terminated")
    arrays = {k: data[k][order] for k in keys}
    if "agent_mask" in data and not data["agent_mask"][order].all():  # absent agents (SMAX's dead allies)
        arrays["agent_mask"] = data["agent_mask"][order]
    return arrays, np.array([len(rows) for _, rows in episodes], dtype=np.int64)


def make_task(task: str, out_root: Path, uri: str, seed: int, force: bool) -> dict[str, Any]:
    """Train (or reuse) the task's two runs and write its four datasets; returns the summary."""
    from dmarl.envs.datasets import write_dataset
    from dmarl.envs.datasets.collect import collect, random_policy, run_policy
    from dmarl.envs.factory import make_env

    recipe = RECIPES[task]
    folder = out_root / slug(task)
    runs = {role: trained_run(task, role, steps, recipe, uri, out_root / "runs")
            for role, steps in (("medium", recipe.medium_steps), ("expert", recipe.expert_steps))}
    summary: dict[str, Any] = {"task": task, "recipe": {**recipe.__dict__, "bindings": list(recipe.bindings)},
                               "runs": {r: {"run_id": i, "final_return_mean": f} for r, (i, f) in runs.items()}}
    for quality in QUALITIES:
        start = time.perf_counter()
        env = make_env(task, recipe.num_envs)
        try:
            if quality == "random":
                dataset = collect(env, random_policy(env, seed), recipe.episodes, seed=seed, policy_name="random")
            elif quality == "medium-replay":
                dataset = replay_dataset(runs["medium"][0], uri, env.spec)
            else:
                run_id = runs[quality][0]
                dataset = collect(env, run_policy(run_id, uri, env), recipe.episodes, seed=seed, policy_name=f"run:{run_id}")
        finally:
            env.close()
        source = runs["medium" if quality == "medium-replay" else quality] if quality != "random" else None
        dataset.metadata["provenance"].update(
            quality=quality, task=task, recipe="scripts/make_quality_datasets.py", tracking_uri=uri,
            source_run=None if source is None else source[0],
            source_run_final_return=None if source is None else source[1],
            train_config=None if source is None else recipe.config,
            train_bindings=None if source is None else [*recipe.bindings, "OnlineRunner.total_env_steps = "
                                                        f"{recipe.medium_steps if 'medium' in quality else recipe.expert_steps}"],
        )
        out = write_dataset(dataset, folder / quality, "native", force=force)
        stats = dataset.return_stats()
        summary[quality] = {"path": str(out), "transitions": len(dataset), **stats}
        print(f"{task} {quality:>13}: {len(dataset.episodes):5d} episodes, {len(dataset):7d} transitions, return "
              f"mean {stats['mean']:9.2f} std {stats['std']:8.2f} ({time.perf_counter() - start:.0f} s) -> {out}")
    low, high = summary["random"]["mean"], summary["expert"]["mean"]
    for quality in QUALITIES:
        summary[quality]["normalised"] = 100.0 * (summary[quality]["mean"] - low) / (high - low)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", choices=sorted(RECIPES), help="task(s) to make (default: all)")
    parser.add_argument("--out", default="datasets/quality", help="output root (default: datasets/quality)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store of the behaviour runs "
                        "(default: sqlite:///<out>/mlflow.db)")
    parser.add_argument("--seed", type=int, default=0, help="collection seed (default: 0)")
    parser.add_argument("--force", action="store_true", help="overwrite datasets this script wrote before")
    args = parser.parse_args(argv)
    out_root = Path(args.out).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or f"sqlite:///{out_root / 'mlflow.db'}"
    for task in args.task or sorted(RECIPES, reverse=True):
        summary = make_task(task, out_root, uri, args.seed, args.force)
        print(json.dumps({q: round(summary[q]["normalised"], 1) for q in QUALITIES}), "(normalised return)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
