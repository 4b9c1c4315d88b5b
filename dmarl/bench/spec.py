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

Every cell is resolved in the driver before anything runs (:func:`expand`): its files and
bindings are parsed with the same checks as ``dmarl train`` (file/line, nearest valid names),
and the result fixes two things:

* **Its configuration hash** (``Cell.config_hash``): the SHA-256 of the resolved gin config
  (``gin.config_str()``: every bound value after includes, macros and overrides) plus the seed.
  Editing a value in any file a cell reads changes it; editing a comment or moving a file
  does not. The sweep refuses to mix runs of one cell made with different hashes.
* **Its effective budget** (``Cell.budget``): the resolved ``OnlineRunner.total_env_steps``
  or ``OfflineRunner.total_updates``, with where it came from (``Cell.budget_source``). Rule
  (the binding order above): an entry's own binding wins; else the comparison's ``budget``;
  else the comparison's ``bindings``; else **the algorithm entry's files win over the task files** (an experiment gin such
  as ``hasac_simple_spread_cpu.gin`` binds a CPU-scale budget, the task gin it is crossed with
  binds the paper's 1e7: the cell gets the experiment's value through an explicit binding,
  where gin's file order alone would give the task's); else the task files; else the
  runner's default. The dry-run prints the value and its source for every cell.

Gin keeps the last of two equal keys of a dict literal: a benchmark file whose algorithm or
task dict repeats a label is refused with the file and line (:func:`duplicate_dict_keys`).
"""
from __future__ import annotations

import ast
import difflib
import hashlib
import inspect
import io
import json
import logging
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import gin

from dmarl import resources
from dmarl.bench import claims as _claims  # noqa: F401 (registers claim() for benchmark gins)
from dmarl.errors import UserError

REPO_ROOT = resources.DATA_ROOT  # the repository root, or the installed package (dmarl.resources)
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
    budget_source: str = ""

    @property
    def run_name(self) -> str:
        """``ALGORITHM-TASK-sSEED`` with the comparison's labels (as `dmarl train` names runs)."""
        return f"{self.algorithm}-{self.task}-s{self.seed}"

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
            "budget_source": self.budget_source,
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
    seed_list = _seed_list(seeds)
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
        raise UserError("benchmark.comparisons is empty; expected at least one @comparison()")
    names = [c.name for c in comps]
    if len(set(names)) != len(names):
        raise UserError(f"benchmark.comparisons: comparison names must be distinct (use gin scopes), got {names}")
    return Benchmark(name=name or "", comparisons=comps, description=description, claims=tuple(claims))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seed_list(seeds: Any) -> tuple[int, ...]:
    """``comparison.seeds`` (a positive count or a list of distinct ints) -> the seeds."""
    if _is_int(seeds):
        if seeds < 1:
            raise UserError(f"comparison.seeds: expected a positive count or a list of ints, got {seeds!r}")
        return tuple(range(seeds))
    if not isinstance(seeds, (list, tuple)) or not all(_is_int(s) for s in seeds):
        raise UserError(f"comparison.seeds: expected an int or a list of ints, got {seeds!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"comparison.seeds: expected a non-empty list of distinct seeds, got {list(seeds)!r}")
    return tuple(seeds)


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
    from dmarl.config import _friendly_gin_error

    file = Path(path) if Path(path).is_file() else resources.find(path)  # else the shipped gin files
    if file is None:
        raise UserError(f"benchmark file not found: {path} (looked in {Path.cwd()} and {resources.DATA_ROOT})")
    check_duplicate_keys(file, bindings)
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(file)], list(bindings), finalize_config=False)
        declared = benchmark()
    except UserError as err:
        raise UserError(f"{file}: {_strip_gin_context(err)}") from None
    except RecursionError:
        raise UserError(f"{file}: the include statements form a cycle") from None
    except Exception as err:  # gin reports parse errors with the file and line
        raise UserError(f"{file}: {_friendly_gin_error(err)}") from None
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


def _strip_gin_context(err: BaseException) -> str:
    """The message without the ``In call to configurable ...`` lines gin appends."""
    return "\n".join(line for line in str(err).splitlines() if not line.strip().startswith("In call to configurable"))


def duplicate_dict_keys(text: str) -> list[tuple[str, int]]:
    """``(key, line)`` of every string key repeated inside one dict literal of gin ``text``.

    Gin (like Python) keeps the last of two equal keys, silently; this reads the tokens.
    Text that does not tokenize yields nothing (gin then reports the syntax error)."""
    repeated: list[tuple[str, int]] = []
    stack: list[tuple[str, set[str]]] = []
    previous: tokenize.TokenInfo | None = None
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return []
    for token in tokens:
        if token.type == tokenize.OP and token.string in "([{":
            stack.append((token.string, set()))
        elif token.type == tokenize.OP and token.string in ")]}":
            if stack:
                stack.pop()
        elif (token.type == tokenize.OP and token.string == ":" and stack and stack[-1][0] == "{"
              and previous is not None and previous.type == tokenize.STRING):
            try:
                key = ast.literal_eval(previous.string)
            except (ValueError, SyntaxError):
                key = previous.string
            if key in stack[-1][1]:
                repeated.append((str(key), previous.start[0]))
            stack[-1][1].add(key)
        if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
            previous = token
    return repeated


def check_duplicate_keys(file: Path, bindings: Sequence[str] = ()) -> None:
    """Refuse a benchmark file (or --bind) whose dict literal repeats a key, naming file and line."""
    from dmarl.config import _all_files

    sources = [(f'file "{f}"', f.read_text(errors="replace")) for f in _all_files([str(file)])]
    sources += [(f"--bind '{b}'", b) for b in bindings]
    for where, text in sources:
        repeated = duplicate_dict_keys(text)
        if repeated:
            key, line = repeated[0]
            raise UserError(
                f"{where}, line {line}: label {key!r} appears twice in one dict; gin would keep only "
                "the last entry. Expected distinct labels (rename one, e.g. 'hasac_b')."
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
    """A bare name -> ``<root>/<kind dir>/<name>.gin``; a path -> itself (cwd, then ``base``); a
    task's registry name (``mpe/simple_spread_n3``) -> its gin file (``tasks/mpe_simple_spread_n3.gin``)."""
    if kind == "task" and not reference.endswith(".gin") and reference.count("/") == 1:
        spelled = reference.replace("/", "_")
        if any((root / _KIND_DIRS[kind] / f"{spelled}.gin").is_file() for root in roots):
            reference = spelled
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


# The budget parameter of each kind of algorithm: (configurable, parameter). On-policy runs
# read OnlineRunner's env-step budget (dmarl/runners/onpolicy.py).
BUDGET_PARAMS = {
    "online": ("OnlineRunner", "total_env_steps"), "onpolicy": ("OnlineRunner", "total_env_steps"),
    "offline": ("OfflineRunner", "total_updates"),
}


@dataclass(frozen=True)
class _Resolved:
    """What the driver learns from parsing one cell's config."""

    config: str
    kind: str
    budget: Any  # the value bound to the kind's budget parameter, or None


def _parse_isolated(files: Sequence[str], bindings: Sequence[str], *, strict: bool) -> dict[str, Any]:
    """Parse into gin's global config, read what we need, clear it again.

    ``strict``: the checks of ``dmarl train`` (dmarl.config.parse); else a plain gin parse that
    skips unknown names (only used on files that already passed a strict parse)."""
    from dmarl import config, registry
    import dmarl.train  # noqa: F401  (registers run.* and the runners)

    registry.load_all()
    prefixes = list(gin.config._LOCATION_PREFIXES)
    try:
        if strict:
            config.parse(list(files), list(bindings))
        else:
            gin.clear_config()
            gin.add_config_file_search_path(str(config.PROJECT_ROOT))
            quiet = config._DropGinPathProbes()
            logging.getLogger().addFilter(quiet)
            try:
                gin.parse_config_files_and_bindings(
                    list(files), list(bindings), finalize_config=False, skip_unknown=True
                )
            finally:
                logging.getLogger().removeFilter(quiet)
        values = {f"{sel}.{param}": config.bound_value(sel, param) for sel, param in BUDGET_PARAMS.values()}
        values["run.algorithm"] = config.bound_value("run", "algorithm")
        values["run.task"] = config.bound_value("run", "task")
        values["config"] = gin.config_str()
        return values
    finally:
        gin.clear_config()
        gin.config._LOCATION_PREFIXES[:] = prefixes


def _resolve(files: Sequence[str], bindings: Sequence[str], what: str) -> _Resolved:
    """Parse a cell's config with train's checks; one UserError naming the cell otherwise."""
    from dmarl import registry

    try:
        values = _parse_isolated(files, bindings, strict=True)
    except UserError as err:
        raise UserError(f"{what}: {err}") from None
    if not values["run.algorithm"] or not values["run.task"]:
        raise UserError(f"{what}: the config must set run.algorithm and run.task (files: {', '.join(files)})")
    try:
        entry = registry.get_algorithm(values["run.algorithm"])
        registry.get_task(values["run.task"])
    except registry.UnknownNameError as err:
        raise UserError(f"{what}: {err}") from None
    selector, param = BUDGET_PARAMS[entry.kind]
    return _Resolved(values["config"], entry.kind, values[f"{selector}.{param}"])


def _runner_default(kind: str) -> Any:
    from dmarl.runners.offline import OfflineRunner
    from dmarl.runners.online import OnlineRunner

    runner = OfflineRunner if kind == "offline" else OnlineRunner
    return inspect.signature(runner).parameters[BUDGET_PARAMS[kind][1]].default


def _binds(bindings: Sequence[str], selector: str, param: str) -> bool:
    pattern = re.compile(rf"^\s*(?:[\w/]+/)?(?:[\w.]*\.)?{selector}\.{param}\s*=")
    return any(pattern.match(b) for b in bindings)


def _effective_budget(
    comp: Comparison, algo: Entry, files: tuple[str, ...], own: Sequence[str], kind: str,
    algo_values: dict[tuple[str, ...], Any],
) -> tuple[tuple[str, ...], str]:
    """The extra binding (if any) that makes the budget rule of the module docstring hold, and
    the budget's source."""
    selector, param = BUDGET_PARAMS[kind]
    name = f"{selector}.{param}"
    if _binds(own, selector, param):
        return (), "entry binding"
    if name in comp.budget:
        return (), "comparison budget"
    if _binds(comp.bindings, selector, param):
        return (), "comparison binding"
    if algo.files not in algo_values:
        algo_values[algo.files] = _parse_isolated(algo.files, (), strict=False)[name]
    from_algo = algo_values[algo.files]
    from_files = _parse_isolated(files, (), strict=False)[name]
    if from_algo is not None and from_algo != from_files:
        shown = f"{from_files:,}" if isinstance(from_files, int) else repr(from_files)
        return (f"{name} = {from_algo!r}",), f"algorithm gin, over the task gin's {shown}"
    if from_algo is not None:
        return (), "algorithm gin"
    return (), "task gin" if from_files is not None else "runner default"


def expand(bench: Benchmark) -> list[Cell]:
    """All cells of a benchmark, in declaration order.

    Checks files, labels and baselines, and resolves every (algorithm, task) config with the
    checks of ``dmarl train``: its configuration hash and effective budget (module docstring)."""
    roots = gin_roots(bench.source)
    base = Path(bench.source).parent if bench.source else None
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    algo_values: dict[tuple[str, ...], Any] = {}
    for comp in bench.comparisons:
        algorithms = [_entry(raw, "algorithm", roots, base) for raw in comp.algorithms]
        tasks = [_entry(raw, "task", roots, base) for raw in comp.tasks]
        for kind, entries in (("algorithm", algorithms), ("task", tasks)):
            labels = [e.label for e in entries]
            if len(set(labels)) != len(labels):
                raise UserError(f"comparison {comp.name!r}: duplicate {kind} labels {labels}")
        labels = [a.label for a in algorithms]
        unknown = [b for b in comp.baselines if b not in labels]
        if unknown:
            near = difflib.get_close_matches(unknown[0], labels, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise UserError(
                f"comparison {comp.name!r}: baselines {unknown} are not among its algorithms{hint} "
                f"(valid labels: {', '.join(labels)})"
            )
        shared = tuple(comp.bindings) + tuple(_bindings(comp.budget)) + tuple(_bindings(comp.evaluation))
        for algo in algorithms:
            for task in tasks:
                what = f"comparison {comp.name!r}, cell {algo.label}|{task.label}"
                files = algo.files + task.files
                own = algo.bindings + task.bindings
                resolved = _resolve(files, shared + own, what)
                extra, source = _effective_budget(comp, algo, files, own, resolved.kind, algo_values)
                bindings = shared + extra + own
                if extra:
                    resolved = _resolve(files, bindings, what)
                kind = resolved.kind
                budget_name = ".".join(BUDGET_PARAMS[kind])
                value = resolved.budget if resolved.budget is not None else _runner_default(kind)
                for seed in comp.seeds:
                    key = cell_key(algo.label, task.label, seed)
                    if key in seen:
                        raise UserError(
                            f"cell {key} is declared by comparisons {seen[key]!r} and {comp.name!r}"
                        )
                    seen[key] = comp.name
                    digest = json.dumps({"config": resolved.config, "seed": seed}, sort_keys=True)
                    cells.append(
                        Cell(
                            key=key,
                            comparison=comp.name,
                            algorithm=algo.label,
                            task=task.label,
                            seed=seed,
                            config_files=files,
                            bindings=bindings + (f"run.seed = {seed}",),
                            budget={budget_name: value},
                            config_hash=hashlib.sha256(digest.encode()).hexdigest()[:16],
                            budget_source=source,
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
