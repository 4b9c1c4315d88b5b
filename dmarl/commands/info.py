"""`dmarl info`: registered environments/tasks and algorithms."""
from __future__ import annotations

import argparse

from dmarl import registry


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info", help="list registered tasks and algorithms",
        description="List every registered task (grouped by environment family) and algorithm.",
    )
    parser.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    registry.load_all()
    print("Tasks:")
    for family in sorted({t.family for t in registry.TASKS.values()}):
        print(f"  [{family}]")
        for task in sorted((t for t in registry.TASKS.values() if t.family == family), key=lambda t: t.name):
            print(f"    {task.name:32s} {task.description}")
    print("  Not available: IsaacLab ShadowHandOver (DDPL's Bi-ShadowHand task) needs an NVIDIA GPU "
          "(Isaac Sim); out of scope for this CPU suite.")
    print("Algorithms:")
    for algo in sorted(registry.ALGORITHMS.values(), key=lambda a: a.name):
        print(f"  {algo.name:12s} {algo.kind:8s} {algo.paper}")
    return 0
