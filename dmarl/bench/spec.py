"""Benchmark declarations: a benchmark gin file -> the cells of a sweep.

A benchmark is a list of comparisons; a comparison crosses algorithms x tasks x seeds under
one budget. Algorithms and tasks are named by their gin files, so a new algorithm joins a
benchmark by adding its gin file, without code changes::

    # gin/benchmarks/example.gin
    benchmark.name = 'example'
    benchmark.comparisons = [@online/comparison(), @offline/comparison()]

    comparison.seeds = 3                                  # unscoped: shared by all comparisons
    online/comparison.algorithms = ['omad', 'hasac']      # gin/algorithms/<name>.gin
    online/comparison.tasks = ['mpe_simple_spread_n3']    # gin/tasks/<name>.gin
    online/comparison.budget = {'OnlineRunner.total_env_steps': 20000}
    online/comparison.evaluation = {'OnlineRunner.eval_interval': 2000, 'OnlineRunner.eval_episodes': 10}
    online/comparison.baselines = ['hasac']

    offline/comparison.algorithms = {'omsd': 'omsd', 'bc': 'gin/algorithms/bc.gin'}
    offline/comparison.tasks = {'bandit-mixed': ['toy_bandit', "run.dataset = 'toy/bandit/mixed'"]}

An algorithm or task entry is a gin file reference (a bare name looked up in
``gin/algorithms`` or ``gin/tasks``, or a path), or, in dict form, ``label -> reference``
or ``label -> [references and bindings]`` (a string containing ``=`` is a binding). A cell's
training config is its algorithm files, then its task files, then the comparison's
``bindings``, ``budget``, ``evaluation``, the entries' own bindings and ``run.seed``.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import gin

from dmarl.bench import claims as _claims  # noqa: F401 (registers claim() for benchmark gins)
from dmarl.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# (kind, subdirectory of a gin root) for bare-name references.
_KIND_DIRS = {"algorithm": "algorithms", "task": "tasks"}


@dataclass(frozen=True)
class Entry:
    """An algorithm or task of a comparison: its label, gin files and extra bindings."""

    label: str
    files: tuple[str, ...]
    bindings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Comparison:
    """Algorithms x tasks x seeds under one budget (one block of a benchmark)."""

    name: str
    algorithms: tuple[Any, ...]
    tasks: tuple[Any, ...]
    seeds: tuple[int, ...]
    budget: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    bindings: tuple[str, ...] = ()
    baselines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Benchmark:
    """A named list of comparisons, as declared in a benchmark gin file."""

    name: str
    comparisons: tuple[Comparison, ...]
    description: str = ""
    source: str = ""
    claims: tuple[Any, ...] = ()  # dmarl.bench.claims.Claim: paper claims this benchmark measures


@dataclass(frozen=True)
class Cell:
    """One training run of a sweep: (algorithm, task, seed) with its full configuration."""

    key: str
    comparison: str
    algorithm: str
    task: str
    seed: int
    config_files: tuple[str, ...]
    bindings: tuple[str, ...]
    budget: dict[str, Any]
    config_hash: str

    @property
    def run_name(self) -> str:
        return f"{self.algorithm}/{self.task}/seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "comparison": self.comparison,
            "algorithm": self.algorithm,
            "task": self.task,
            "seed": self.seed,
            "config_files": list(self.config_files),
            "bindings": list(self.bindings),
            "budget": dict(self.budget),
            "config_hash": self.config_hash,
        }


def cell_key(algorithm: str, task: str, seed: int) -> str:
    """The stable key that identifies a cell across invocations (MLflow tag ``dmarl.cell``)."""
    return f"{algorithm}|{task}|{seed}"


@gin.configurable("comparison")
def comparison(
    algorithms: Sequence[str] | Mapping[str, Any] = gin.REQUIRED,
    tasks: Sequence[str] | Mapping[str, Any] = gin.REQUIRED,
    seeds: int | Sequence[int] = 3,
    budget: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    bindings: Sequence[str] = (),
    baselines: Sequence[str] = (),
    name: str | None = None,
) -> Comparison:
    """Declare a comparison.

    Args:
        algorithms: gin file references (label = file stem) or ``{label: reference(s)}``.
        tasks: the same for tasks (a dataset is a task entry with a dataset binding).
        seeds: a count (seeds 0..n-1) or an explicit list.
        budget: ``{binding: value}`` applied to every cell (e.g. total env steps).
        evaluation: ``{binding: value}`` for evaluation settings (interval, episodes).
        bindings: extra gin bindings for every cell.
        baselines: algorithm labels that set the sample-efficiency target.
        name: defaults to the gin scope the comparison is declared in (or ``main``).
    """
    seed_list = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"comparison.seeds must be a positive count or distinct seeds, got {seeds!r}")
    return Comparison(
        name=name or gin.current_scope_str() or "main",
        algorithms=_as_tuple(algorithms),
        tasks=_as_tuple(tasks),
        seeds=seed_list,
        budget=dict(budget or {}),
        evaluation=dict(evaluation or {}),
        bindings=tuple(bindings),
        baselines=tuple(baselines),
    )


@gin.configurable("benchmark")
def benchmark(
    comparisons: Sequence[Comparison] = gin.REQUIRED,
    name: str | None = None,
    description: str = "",
    claims: Sequence[Any] = (),
) -> Benchmark:
    """Declare a benchmark: its name (default: the gin file's stem), its comparisons and the
    paper claims it measures (``@scope/claim()``, see dmarl.bench.claims)."""
    comps = tuple(comparisons)
    if not comps:
        raise ValueError("benchmark.comparisons is empty")
    names = [c.name for c in comps]
    if len(set(names)) != len(names):
        raise ValueError(f"comparison names must be distinct (use gin scopes), got {names}")
    return Benchmark(name=name or "", comparisons=comps, description=description, claims=tuple(claims))


def _as_tuple(entries: Sequence[str] | Mapping[str, Any]) -> tuple[Any, ...]:
    if isinstance(entries, str):
        return (entries,)
    if isinstance(entries, Mapping):
        return tuple((str(label), value) for label, value in entries.items())
    return tuple(entries)


def load_benchmark(path: str | Path, bindings: Sequence[str] = ()) -> Benchmark:
    """Parse a benchmark gin file (plus extra bindings) into a :class:`Benchmark`.

    Gin's global config is cleared before and after, so this never leaks bindings.
    """
    file = Path(path)
    if not file.is_file():
        raise UserError(f"benchmark file not found: {path}")
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(file)], list(bindings), finalize_config=False)
        declared = benchmark()
    except UserError:
        raise
    except Exception as err:  # gin reports parse errors with the file and line
        raise UserError(f"{file}: {err}") from err
    finally:
        gin.clear_config()
    name = declared.name or file.stem
    if not _NAME.match(name):
        raise UserError(f"{file}: benchmark name {name!r} may use only letters, digits, '_', '-' and '.'")
    return Benchmark(
        name=name,
        comparisons=declared.comparisons,
        description=declared.description,
        source=str(file.resolve()),
        claims=declared.claims,
    )


def gin_roots(benchmark_source: str | Path | None) -> list[Path]:
    """Directories searched for ``algorithms/`` and ``tasks/`` gin files, in order."""
    roots: list[Path] = []
    if benchmark_source:
        roots.append(Path(benchmark_source).resolve().parent.parent)
    roots += [Path.cwd() / "gin", REPO_ROOT / "gin"]
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def resolve_gin_file(reference: str, kind: str, roots: Sequence[Path], base: Path | None) -> Path:
    """A bare name -> ``<root>/<kind dir>/<name>.gin``; a path -> itself (cwd, then ``base``)."""
    if reference.endswith(".gin") or "/" in reference:
        candidates = [Path(reference)]
        if base is not None and not Path(reference).is_absolute():
            candidates.append(base / reference)
        candidates += [root.parent / reference for root in roots]
        for candidate in candidates:
            if candidate.is_file():
                return candidate.resolve()
        raise UserError(f"{kind} gin file not found: {reference}")
    subdir = _KIND_DIRS[kind]
    for root in roots:
        candidate = root / subdir / f"{reference}.gin"
        if candidate.is_file():
            return candidate.resolve()
    known = sorted({p.stem for root in roots for p in (root / subdir).glob("*.gin")})
    near = difflib.get_close_matches(reference, known, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    where = ", ".join(str(root / subdir) for root in roots)
    raise UserError(
        f"unknown {kind} {reference!r}{hint} (looked in {where}; known: {', '.join(known) or 'none'})"
    )


def _entry(raw: Any, kind: str, roots: Sequence[Path], base: Path | None) -> Entry:
    if isinstance(raw, str):
        path = resolve_gin_file(raw, kind, roots, base)
        return Entry(label=path.stem, files=(str(path),))
    if not (isinstance(raw, tuple) and len(raw) == 2):
        raise UserError(f"{kind} entry must be a gin file reference or label -> references, got {raw!r}")
    label, value = raw
    if "|" in label or not label:
        raise UserError(f"{kind} label {label!r} must be non-empty and may not contain '|'")
    items = [value] if isinstance(value, str) else list(value)
    files = tuple(str(resolve_gin_file(i, kind, roots, base)) for i in items if "=" not in i)
    binds = tuple(i for i in items if "=" in i)
    if not files:
        raise UserError(f"{kind} {label!r} names no gin file (got {items})")
    return Entry(label=label, files=files, bindings=binds)


def _bindings(mapping: Mapping[str, Any]) -> list[str]:
    return [f"{name} = {value!r}" for name, value in mapping.items()]


def _display_path(path: str, roots: Sequence[Path]) -> str:
    """Path used in the config hash: relative to the gin root when inside one."""
    for root in roots:
        try:
            return str(Path(path).relative_to(root.parent))
        except ValueError:
            continue
    return path


def expand(bench: Benchmark) -> list[Cell]:
    """All cells of a benchmark, in declaration order; checks files and unique labels."""
    roots = gin_roots(bench.source)
    base = Path(bench.source).parent if bench.source else None
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    for comp in bench.comparisons:
        algorithms = [_entry(raw, "algorithm", roots, base) for raw in comp.algorithms]
        tasks = [_entry(raw, "task", roots, base) for raw in comp.tasks]
        for kind, entries in (("algorithm", algorithms), ("task", tasks)):
            labels = [e.label for e in entries]
            if len(set(labels)) != len(labels):
                raise UserError(f"comparison {comp.name!r}: duplicate {kind} labels {labels}")
        unknown = set(comp.baselines) - {a.label for a in algorithms}
        if unknown:
            raise UserError(f"comparison {comp.name!r}: baselines {sorted(unknown)} are not among its algorithms")
        shared = list(comp.bindings) + _bindings(comp.budget) + _bindings(comp.evaluation)
        for algo in algorithms:
            for task in tasks:
                for seed in comp.seeds:
                    key = cell_key(algo.label, task.label, seed)
                    if key in seen:
                        raise UserError(
                            f"cell {key} is declared by comparisons {seen[key]!r} and {comp.name!r}"
                        )
                    seen[key] = comp.name
                    files = algo.files + task.files
                    bindings = tuple(shared) + algo.bindings + task.bindings + (f"run.seed = {seed}",)
                    digest = json.dumps(
                        {"files": [_display_path(f, roots) for f in files], "bindings": bindings},
                        sort_keys=True,
                    )
                    cells.append(
                        Cell(
                            key=key,
                            comparison=comp.name,
                            algorithm=algo.label,
                            task=task.label,
                            seed=seed,
                            config_files=files,
                            bindings=bindings,
                            budget=dict(comp.budget),
                            config_hash=hashlib.sha256(digest.encode()).hexdigest()[:12],
                        )
                    )
    return cells


def describe(bench: Benchmark, cells: Sequence[Cell]) -> dict[str, Any]:
    """JSON-ready description of a benchmark and its cells (the parent run's artifact)."""
    return {
        "name": bench.name,
        "description": bench.description,
        "source": bench.source,
        "comparisons": [
            {"name": c.name, "seeds": list(c.seeds), "budget": c.budget,
             "evaluation": c.evaluation, "baselines": list(c.baselines)}
            for c in bench.comparisons
        ],
        "cells": [cell.to_dict() for cell in cells],
    }
