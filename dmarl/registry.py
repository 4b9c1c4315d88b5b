"""Name -> factory registries for tasks and algorithms (what `dmarl info` lists).

Environment and algorithm modules register themselves on import; heavy third-party imports
(mujoco, mpe2, jax) happen inside the factories, so listing names stays cheap.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

# Packages whose modules register tasks / algorithms on import. Every public module in them is
# imported (no list to edit): a new algorithm is one module plus one gin file, a new task one
# adapter entry in an env module.
TASK_PACKAGES = ("dmarl.envs",)
ALGORITHM_PACKAGES = ("dmarl.algorithms", "dmarl.algorithms.baselines")


def _modules(packages: tuple[str, ...]) -> tuple[str, ...]:
    """The public modules (no leading underscore, no subpackages) of ``packages``, sorted."""
    names: list[str] = []
    for package in packages:
        path = importlib.import_module(package).__path__
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules(path) if not m.ispkg and not m.name.startswith("_")]
    return tuple(sorted(names))

class UnknownNameError(ValueError):
    """An unknown task or algorithm name; the message lists the nearest valid names."""


@dataclass(frozen=True)
class TaskEntry:
    name: str
    family: str
    factory: Callable[..., Any]  # (num_envs: int, **kwargs) -> MultiAgentVecEnv
    kwargs: dict[str, Any]
    description: str


@dataclass(frozen=True)
class AlgorithmEntry:
    name: str
    cls: type
    kind: str  # "online" | "offline" | "onpolicy" (replay, dataset, or on-policy rollouts)
    paper: str


TASKS: dict[str, TaskEntry] = {}
ALGORITHMS: dict[str, AlgorithmEntry] = {}


def register_task(name: str, family: str, factory: Callable[..., Any], description: str = "", **kwargs: Any) -> None:
    if name in TASKS:
        raise ValueError(f"task {name!r} registered twice")
    TASKS[name] = TaskEntry(name, family, factory, dict(kwargs), description)


def register_algorithm(name: str, *, kind: str, paper: str) -> Callable[[type], type]:
    if kind not in ("online", "offline", "onpolicy"):
        raise ValueError(f"algorithm {name!r}: kind must be 'online', 'offline' or 'onpolicy', got {kind!r}")

    def wrap(cls: type) -> type:
        if name in ALGORITHMS:
            raise ValueError(f"algorithm {name!r} registered twice")
        ALGORITHMS[name] = AlgorithmEntry(name, cls, kind, paper)
        return cls

    return wrap


def _import_all(modules: tuple[str, ...]) -> None:
    for module in modules:
        importlib.import_module(module)


def load_all() -> None:
    """Import every registering module (idempotent)."""
    _import_all(_modules(TASK_PACKAGES))
    _import_all(_modules(ALGORITHM_PACKAGES))


def _unknown(kind: str, name: str, known: list[str]) -> UnknownNameError:
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return UnknownNameError(f"unknown {kind} {name!r}{hint} (valid: {', '.join(sorted(known))})")


def get_task(name: str) -> TaskEntry:
    _import_all(_modules(TASK_PACKAGES))
    if name not in TASKS:
        raise _unknown("task", name, list(TASKS))
    return TASKS[name]


def get_algorithm(name: str) -> AlgorithmEntry:
    _import_all(_modules(ALGORITHM_PACKAGES))
    if name not in ALGORITHMS:
        raise _unknown("algorithm", name, list(ALGORITHMS))
    return ALGORITHMS[name]
