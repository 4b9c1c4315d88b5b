"""dmarl: a benchmark suite for diffusion-policy multi-agent reinforcement learning.

The Python API (defined in `dmarl.api`, imported on first use so ``import dmarl`` stays fast)::

    dmarl.train(config, bind=[...])        one run, as `dmarl train`
    dmarl.bench(benchmark, bind=[...])     a benchmark sweep and its leaderboard, as `dmarl bench`
    dmarl.leaderboard(experiment)          leaderboard files from MLflow, as `dmarl leaderboard`
    dmarl.load_config(config, bind=[...])  parse and check a config; returns its run.* settings
    dmarl.make_env(task, num_envs)         a vectorised multi-agent environment
    dmarl.load_policy(run_id)              a trained run's policy from MLflow (.act(obs), .make_env())
    dmarl.evaluate(run_id, episodes=10)    evaluate it (optionally a GIF), as `dmarl evaluate`
    dmarl.list_tasks(), dmarl.list_algorithms(), dmarl.list_configs()
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = (
    "train", "bench", "leaderboard", "load_config", "make_env", "list_tasks", "list_algorithms", "list_configs",
    "load_policy", "evaluate",
)
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """Lazy re-export of `dmarl.api` (PEP 562)."""
    if name in _API:
        from dmarl import api

        return getattr(api, name)
    raise AttributeError(f"module 'dmarl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
