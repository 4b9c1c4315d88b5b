"""Leaderboards from the runs of one MLflow experiment.

``collect`` reads the cells' runs (the latest FINISHED run of each cell key, else its latest
run) and the planned cells from the parent runs; ``compute`` turns them into per-task and
aggregate statistics; ``write`` produces ``leaderboard.md``, ``leaderboard.csv``,
``aggregate.csv``, a self-contained sortable ``index.html``, learning-curve PNGs in
``curves/`` and ``marl_eval.json`` (marl-eval's raw-data layout). Papers' reported numbers
are shown beside the measured ones in their own, labelled columns and never enter a statistic.

Honesty rules (each a choice, stated on the page too):

* **Comparison blocks.** Algorithms are ranked against each other only inside a block: the
  benchmark's ``comparison`` (tag ``dmarl.bench.comparison``, else the planned cell's), or, for
  runs outside a benchmark, the task family (``mpe``, ``toy``, ...). A block's aggregate pools
  only the tasks (with a reference score) that *every* algorithm of the block finished; tasks
  some algorithm lacks are listed as excluded. P(improvement) is computed for pairs of one block,
  over the tasks both ran. Algorithms of different blocks never share a ranking.
* **Offline runs** (a ``dataset`` tag) log against gradient updates: their curves are labelled
  "updates" and have no "steps to target" (a sample-efficiency figure would be meaningless).
* **Few seeds.** With fewer than 5 seeds the std, interval and P(improvement) cells carry
  :func:`dmarl.bench.stats.seed_caveat` (e.g. "n=3 seeds: CI unreliable").
* **Plain runs.** An experiment without benchmark cells (``dmarl train`` runs) is ranked from its
  runs' ``algorithm``/``task``/``seed`` tags (the latest finished run per triple); an experiment
  with no finished run to rank raises :class:`NothingToRank` (``dmarl leaderboard`` exits 2,
  ``dmarl bench`` reports it beside the failed cells), never an empty board.
* A task run by several comparison blocks names each row's block beside the algorithm.
* **marl-eval.** The environment level of ``marl_eval.json`` is the task family (split per
  comparison block when a family spans several, since marl-eval requires one algorithm set per
  environment); :func:`marl_eval_problems` re-checks the layout the way marl-eval's
  ``DiagnoseData`` does.
"""
from __future__ import annotations

import base64
import csv
import datetime as dt
import difflib
import html
import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from dmarl.bench import stats
from dmarl.bench.references import References, Reported, load_references, load_reported
from dmarl.bench.sweep import (
    ALGORITHM_TAG,
    BENCH_TAG,
    CELL_TAG,
    COMPARISON_TAG,
    FAILURE_TAG,
    ROLE_TAG,
    SEED_TAG,
    SPEC_ARTIFACT,
    TASK_TAG,
    all_runs,
    mlflow_client,
    resolve_tracking_uri,
    store_exists,
)
from dmarl.errors import UserError

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient

EVAL_METRIC = "eval/return_mean"
FINAL_METRIC = "final/return_mean"
SHIFT_PREFIX = "final/shift"  # dmarl.runners.evaluation.SHIFT_PREFIX (kept torch-free here)


@dataclass(frozen=True)
class RunRecord:
    """One cell's run as the leaderboard sees it."""

    run_id: str
    key: str
    algorithm: str
    task: str
    seed: int
    final: float
    curve: dict[int, float]
    algorithm_name: str = ""  # the run's own `algorithm` tag (registry name)
    task_name: str = ""  # the run's own `task` tag
    dataset: str = ""
    comparison: str = ""  # the benchmark comparison the cell belongs to ("" outside a benchmark)
    shifts: tuple[tuple[str, float], ...] = ()  # (shift name, final/shift/<name>/return_mean) of run.shifts
    rates: tuple[tuple[str, float], ...] = ()  # (name, final/<name>) of per-episode flag rates, e.g. win_rate

    @property
    def offline(self) -> bool:
        """Offline runs train from ``run.dataset`` (required offline, unused online) and log
        against gradient updates."""
        return bool(self.dataset)

    @property
    def family(self) -> str:
        """The task's environment family: ``mpe`` for ``mpe/simple_spread_n3``."""
        name = self.task_name or self.task
        return name.split("/", 1)[0] if "/" in name else name.split("_", 1)[0]

    @property
    def block(self) -> str:
        """The comparison block this run is ranked in (see the module docstring)."""
        return self.comparison or self.family


@dataclass(frozen=True)
class Issue:
    """A cell without a usable result, and why."""

    key: str
    state: str  # "missing" | "failed" | "interrupted" | "no score"
    detail: str = ""
    run_id: str = ""


@dataclass
class ExperimentData:
    """Everything the leaderboard needs from MLflow."""

    experiment: str
    tracking_uri: str
    runs: list[RunRecord]
    issues: list[Issue]
    baselines: dict[str, set[str]] = field(default_factory=dict)  # task -> declared baselines
    source: str = "benchmark"  # "benchmark": cell runs; "runs": plain runs grouped by their tags


@dataclass(frozen=True)
class Row:
    """Measured results of one algorithm on one task (plus the paper's number, if any)."""

    task: str
    algorithm: str
    scores: tuple[float, ...]
    summary: stats.Summary
    normalised: stats.Summary | None
    steps_to_target: float | None
    speedup: float | None
    baseline: bool
    reported: tuple[Reported, ...]
    block: str = ""
    rates: tuple[tuple[str, float], ...] = ()  # (name, seed mean of final/<name>), e.g. win_rate


@dataclass(frozen=True)
class Curve:
    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass
class TaskBoard:
    task: str
    rows: list[Row]
    reference_note: str
    efficiency: stats.Efficiency | None
    curves: dict[str, Curve]
    reported_only: list[Reported]
    offline: bool = False  # every run is offline: x-axis in updates, no steps to target
    x_label: str = "env steps"
    several_blocks: bool = False  # rows from more than one comparison block: each row names its block


@dataclass(frozen=True)
class AggregateRow:
    algorithm: str
    tasks: int
    iqm: stats.Estimate
    mean: float
    block: str = ""


@dataclass
class Block:
    """One comparison block: its algorithms, the tasks its aggregate pools (every algorithm
    finished them and they have a reference), the tasks left out, its aggregate rows (best
    first) and P(row > column) for its pairs."""

    name: str
    algorithms: list[str]
    tasks: list[str]
    excluded: list[str]
    aggregate: list[AggregateRow]
    improvement: dict[tuple[str, str], stats.Estimate]


@dataclass
class Leaderboard:
    experiment: str
    tracking_uri: str
    generated: str
    references: References
    tasks: list[TaskBoard]
    blocks: list[Block]
    issues: list[Issue]
    runs: list[RunRecord]
    source: str = "benchmark"

    @property
    def aggregate(self) -> list[AggregateRow]:
        """Every block's aggregate rows, block by block."""
        return [row for block in self.blocks for row in block.aggregate]


# --------------------------------------------------------------------------- reading MLflow


def _curve(client: MlflowClient, run_id: str) -> dict[int, float]:
    """``eval/return_mean`` by env step, ending with the final evaluation at its own step."""
    points: dict[int, float] = {}
    for name in (EVAL_METRIC, FINAL_METRIC):
        latest: dict[int, tuple[int, float]] = {}
        for metric in client.get_metric_history(run_id, name):
            if metric.step not in latest or metric.timestamp >= latest[metric.step][0]:
                latest[metric.step] = (metric.timestamp, metric.value)
        points.update({step: value for step, (_, value) in latest.items()})
    return dict(sorted(points.items()))


def _planned(client: MlflowClient, parents: Sequence[Any]) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
    """Planned cells and declared baselines per task, from each benchmark's latest parent run."""
    from mlflow.exceptions import MlflowException

    cells: dict[str, dict[str, Any]] = {}
    baselines: dict[str, set[str]] = {}
    seen: set[str] = set()
    for parent in sorted(parents, key=lambda r: r.info.start_time or 0, reverse=True):
        name = parent.data.tags.get(BENCH_TAG, "")
        if name in seen:
            continue
        seen.add(name)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = client.download_artifacts(parent.info.run_id, SPEC_ARTIFACT, tmp)
            except (MlflowException, OSError):  # a parent without the artifact plans nothing
                continue
            spec = json.loads(Path(path).read_text())
        declared = {c["name"]: set(c.get("baselines", [])) for c in spec.get("comparisons", [])}
        for cell in spec.get("cells", []):
            cells.setdefault(cell["key"], cell)
            baselines.setdefault(cell["task"], set()).update(declared.get(cell["comparison"], set()))
    return cells, baselines


def collect(experiment: str, tracking_uri: str | None = None) -> ExperimentData:
    """Read an experiment's cell runs, planned cells and declared baselines from MLflow."""
    uri = resolve_tracking_uri(tracking_uri)
    if not store_exists(uri):
        raise UserError(f"no MLflow store at {uri} (pass --tracking-uri)")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        near = difflib.get_close_matches(experiment, names, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise UserError(f"no experiment {experiment!r} in {uri}{hint} (known: {', '.join(names) or 'none'})")
    runs = all_runs(client, exp.experiment_id)
    planned, baselines = _planned(client, [r for r in runs if r.data.tags.get(ROLE_TAG) == "parent"])
    by_key: dict[str, list[Any]] = {}
    for run in runs:
        if run.data.tags.get(CELL_TAG):
            by_key.setdefault(run.data.tags[CELL_TAG], []).append(run)
    source = "benchmark"
    if not by_key and not planned:  # plain `dmarl train` runs: one "cell" per algorithm|task|seed tag triple
        source = "runs"
        for run in runs:
            tags = run.data.tags
            if tags.get(ROLE_TAG) != "parent" and tags.get("algorithm") and tags.get("task"):
                by_key.setdefault(f"{tags['algorithm']}|{tags['task']}|{tags.get('seed', '0')}", []).append(run)
    records: list[RunRecord] = []
    issues: list[Issue] = []
    for key in sorted(set(planned) - set(by_key)):
        issues.append(Issue(key, "missing", "never started"))
    for key, cell_runs in sorted(by_key.items()):
        cell_runs.sort(key=lambda r: r.info.start_time or 0, reverse=True)
        finished = [r for r in cell_runs if r.info.status == "FINISHED"]
        run = finished[0] if finished else cell_runs[0]
        tags, status = run.data.tags, run.info.status
        final = run.data.metrics.get(FINAL_METRIC)
        if status == "FAILED":
            issues.append(Issue(key, "failed", tags.get(FAILURE_TAG, "no reason recorded"), run.info.run_id))
            continue
        if status != "FINISHED":
            issues.append(Issue(key, "interrupted", f"status {status}; re-run the benchmark to resume", run.info.run_id))
            continue
        if final is None or not math.isfinite(final):
            issues.append(Issue(key, "no score", f"finished without {FINAL_METRIC}", run.info.run_id))
            continue
        algorithm, task, seed = key.split("|")
        records.append(
            RunRecord(
                run_id=run.info.run_id,
                key=key,
                algorithm=tags.get(ALGORITHM_TAG, algorithm),
                task=tags.get(TASK_TAG, task),
                seed=int(tags.get(SEED_TAG, seed)),
                final=float(final),
                curve=_curve(client, run.info.run_id),
                algorithm_name=tags.get("algorithm", run.data.params.get("algorithm", "")),
                task_name=tags.get("task", run.data.params.get("task", "")),
                dataset=tags.get("dataset", run.data.params.get("dataset", "")),
                comparison=tags.get(COMPARISON_TAG) or planned.get(key, {}).get("comparison", ""),
                shifts=shift_scores(run.data.metrics),
                rates=rate_scores(run.data.metrics),
            )
        )
    return ExperimentData(experiment, uri, records, issues, baselines, source)


def shift_scores(metrics: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """The run's final returns on shifted variants, ``final/shift/<name>/return_mean``, by name."""
    head, tail = f"{SHIFT_PREFIX}/", "/return_mean"
    return tuple(sorted((k[len(head):-len(tail)], float(v)) for k, v in metrics.items()
                        if k.startswith(head) and k.endswith(tail)))


def rate_scores(metrics: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """The run's final per-episode flag rates, ``final/<name>_rate`` (``win_rate``, ``success_rate``:
    ``dmarl.runners.evaluation.EPISODE_FLAGS``), by name."""
    head = "final/"
    return tuple(sorted((k[len(head):], float(v)) for k, v in metrics.items()
                        if k.startswith(head) and k.endswith("_rate") and "/" not in k[len(head):]))


SHIFT_COLUMNS = ("task", "algorithm", "shift", "seeds", "mean", "std", "unshifted_mean", "best", "scores")


def shift_rows(board: Leaderboard) -> list[dict[str, Any]]:
    """Per task, algorithm (and block) and shift: seed mean and std of the shifted final return,
    the unshifted mean beside it and whether the algorithm has the task's best mean on that shift."""
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for run in board.runs:
        if run.shifts:
            groups.setdefault((run.task, run.block, run.algorithm), []).append(run)
    rows = []
    for (task, _block, algorithm), runs in sorted(groups.items()):
        for name in sorted({n for r in runs for n, _ in r.shifts}):
            values = [v for r in runs for n, v in r.shifts if n == name]
            rows.append({"task": task, "algorithm": algorithm, "shift": name, "seeds": len(values),
                         "mean": float(np.mean(values)), "std": float(np.std(values)) if len(values) > 1 else "",
                         "unshifted_mean": float(np.mean([r.final for r in runs])),
                         "scores": " ".join(f"{v:.6g}" for v in values)})
    for row in rows:
        rivals = [r["mean"] for r in rows if (r["task"], r["shift"]) == (row["task"], row["shift"])]
        row["best"] = len(rivals) > 1 and row["mean"] == max(rivals)
    return rows


def _shift_lines(board: Leaderboard) -> list[str]:
    """The markdown section of the shifted-environment returns (none when no run has shifts)."""
    rows = shift_rows(board)
    if not rows:
        return []
    body = ([r["task"], r["algorithm"] + (" (best)" if r["best"] else ""), r["shift"], str(r["seeds"]),
             fmt(r["mean"]), with_caveat(fmt(r["std"]) if r["std"] != "" else "–", r["seeds"]),
             fmt(r["unshifted_mean"])] for r in rows)
    return ["## Shifted environments", "", f"Final policy evaluated on each `run.shifts` variant "
            f"(`{SHIFT_PREFIX}/<name>/return_mean`, same episodes and seeds as `{FINAL_METRIC}`); "
            "(best): highest seed mean on that task and shift.", "",
            *_md_table(["task", "algorithm", "shift", "seeds", "mean", "std", "unshifted mean"], body), ""]


# --------------------------------------------------------------------------- statistics


class NothingToRank(UserError):
    """The experiment has no finished run with a score: no board is written."""



def _registry_baselines(runs: Iterable[RunRecord]) -> set[str]:
    """Labels whose algorithm is registered from ``dmarl.algorithms.baselines``."""
    from dmarl import registry

    found: set[str] = set()
    for run in runs:
        if not run.algorithm_name:
            continue
        try:
            entry = registry.get_algorithm(run.algorithm_name)
        except registry.UnknownNameError:
            continue
        if ".baselines." in entry.cls.__module__:
            found.add(run.algorithm)
    return found


def _matches(reported: Reported, label: str, *names: str) -> bool:
    return reported.task.lower() in {n.lower() for n in (label, *names) if n}


def compute(
    data: ExperimentData,
    references: References,
    reported: Sequence[Reported] = (),
    *,
    baselines: Sequence[str] | None = None,
    boot: stats.Bootstrap = stats.DEFAULT_BOOTSTRAP,
) -> Leaderboard:
    """Per-task tables, per-block aggregate normalised IQM and probability of improvement,
    sample efficiency (online tasks) and learning curves from the collected runs.

    Raises `UserError` when there is no finished run to rank (never an empty board)."""
    if not data.runs:
        what = "benchmark cells" if data.source == "benchmark" else "runs tagged algorithm/task"
        reasons = "; ".join(f"{i.key}: {i.state}" for i in data.issues[:5]) or f"it has no {what}"
        raise NothingToRank(
            f"experiment {data.experiment!r}: no finished run to rank ({reasons}); expected finished "
            "`dmarl bench` cells or `dmarl train` runs with a final/return_mean"
        )
    by_task: dict[str, list[RunRecord]] = {}
    for run in data.runs:
        by_task.setdefault(run.task, []).append(run)
    registry_baselines: set[str] | None = None
    boards: list[TaskBoard] = []
    normalised: dict[tuple[str, str], dict[str, list[float]]] = {}  # (block, algorithm) -> task -> scores
    raw: dict[tuple[str, str], dict[str, list[float]]] = {}
    for task, runs in sorted(by_task.items()):
        first = runs[0]
        ref = references.lookup(task, first.task_name, first.dataset)
        offline = all(r.offline for r in runs)
        if baselines is not None:
            task_baselines = set(baselines)
        elif data.baselines.get(task):
            task_baselines = data.baselines[task]
        else:
            if registry_baselines is None:
                registry_baselines = _registry_baselines(data.runs)
            task_baselines = registry_baselines
        by_algo: dict[str, list[RunRecord]] = {}
        for run in sorted(runs, key=lambda r: r.seed):
            by_algo.setdefault(run.algorithm, []).append(run)
        curves: dict[str, Curve] = {}
        finals: dict[str, float] = {}
        for algo, algo_runs in by_algo.items():
            steps, mean, low, high = stats.learning_curve([r.curve for r in algo_runs if r.curve], boot)
            curves[algo] = Curve(steps, mean, low, high)
            finals[algo] = float(np.mean([r.final for r in algo_runs]))
            raw.setdefault((algo_runs[0].block, algo), {})[task] = [float(r.final) for r in algo_runs]
        efficiency = None if offline else stats.sample_efficiency(
            {a: (c.steps, c.mean) for a, c in curves.items()}, finals, sorted(task_baselines & set(by_algo))
        )
        rows = []
        for algo, algo_runs in by_algo.items():
            scores = tuple(float(r.final) for r in algo_runs)
            norm = None
            if ref is not None:
                norm_scores = [float(stats.normalise(s, ref.random, ref.expert)) for s in scores]
                norm = stats.summarize(norm_scores, boot)
                normalised.setdefault((algo_runs[0].block, algo), {})[task] = norm_scores
            names = {algo.lower(), algo_runs[0].algorithm_name.lower()}
            rows.append(
                Row(
                    task=task,
                    algorithm=algo,
                    scores=scores,
                    summary=stats.summarize(scores, boot),
                    normalised=norm,
                    steps_to_target=efficiency.steps.get(algo) if efficiency else None,
                    speedup=efficiency.speedup.get(algo) if efficiency else None,
                    baseline=algo in task_baselines,
                    block=algo_runs[0].block,
                    rates=tuple((name, float(np.mean([v for r in algo_runs for n, v in r.rates if n == name])))
                                for name in sorted({n for r in algo_runs for n, _ in r.rates})),
                    reported=tuple(
                        r for r in reported
                        if _matches(r, task, first.task_name) and r.algorithm.lower() in names
                    ),
                )
            )
        rows.sort(key=lambda r: r.summary.mean, reverse=True)
        used = {id(r) for row in rows for r in row.reported}
        mixed = not offline and any(r.offline for r in runs)
        boards.append(
            TaskBoard(
                task=task,
                rows=rows,
                reference_note=(
                    f"normalised with random {ref.random:g}, expert {ref.expert:g} ({ref.source})"
                    if ref else f"no reference for {task!r} in {Path(references.path).name}: no normalised score"
                ),
                efficiency=efficiency,
                curves=curves,
                reported_only=[r for r in reported if _matches(r, task, first.task_name) and id(r) not in used],
                offline=offline,
                x_label="updates" if offline else "env steps (online) / updates (offline)" if mixed else "env steps",
                several_blocks=len({r.block for r in runs}) > 1,
            )
        )
    return Leaderboard(
        experiment=data.experiment,
        tracking_uri=data.tracking_uri,
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        references=references,
        tasks=boards,
        blocks=_blocks(data.runs, normalised, raw, boot),
        issues=sorted(data.issues, key=lambda i: (i.state, i.key)),
        runs=list(data.runs),
        source=data.source,
    )


def _blocks(
    runs: Sequence[RunRecord],
    normalised: dict[tuple[str, str], dict[str, list[float]]],
    raw: dict[tuple[str, str], dict[str, list[float]]],
    boot: stats.Bootstrap,
) -> list[Block]:
    """Per comparison block: the aggregate over the reference tasks every algorithm of the block
    finished, and P(improvement) for each pair of the block over the tasks both finished."""
    members: dict[str, set[str]] = {}
    for run in runs:
        members.setdefault(run.block, set()).add(run.algorithm)
    blocks = []
    for name, algos in sorted(members.items()):
        algorithms = sorted(algos)
        per = {a: normalised.get((name, a), {}) for a in algorithms}
        with_reference = sorted({t for scores in per.values() for t in scores})
        shared = [t for t in with_reference if all(t in per[a] for a in algorithms)]
        rows = sorted(
            (
                AggregateRow(
                    algorithm=a,
                    tasks=len(shared),
                    iqm=stats.aggregate_iqm([per[a][t] for t in shared], boot),
                    mean=float(np.mean([np.mean(per[a][t]) for t in shared])),
                    block=name,
                )
                for a in algorithms
            ) if shared else (),
            key=lambda r: r.iqm.value,
            reverse=True,
        )
        improvement: dict[tuple[str, str], stats.Estimate] = {}
        for x in algorithms:
            for y in algorithms:
                common = sorted(set(raw.get((name, x), {})) & set(raw.get((name, y), {})))
                if x != y and common:
                    improvement[(x, y)] = stats.probability_of_improvement(
                        [raw[(name, x)][t] for t in common], [raw[(name, y)][t] for t in common], boot
                    )
        excluded = [t for t in with_reference if t not in shared]
        blocks.append(Block(name, algorithms, shared, excluded, list(rows), improvement))
    return blocks


# --------------------------------------------------------------------------- formatting


def fmt(x: float | None) -> str:
    """4 significant digits; a dash for missing values."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.4g}"


def fmt_ci(low: float, high: float) -> str:
    return "–" if not (math.isfinite(low) and math.isfinite(high)) else f"[{low:.4g}, {high:.4g}]"


def fmt_steps(x: float | None) -> str:
    return "not reached" if x is None else f"{x:,.0f}"


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def slug(name: str) -> str:
    """A file-name-safe version of a task name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"


def _reported_text(row: Row) -> str:
    return "; ".join(
        f"{fmt(r.mean)} ± {fmt(r.std)}{f' @ {r.steps}' if r.steps else ''} ({r.source})" for r in row.reported
    )


TASK_COLUMNS = (
    "algorithm", "seeds", "mean", "std", "IQM", "95% CI of mean", "normalised mean",
    "normalised 95% CI", "steps to target", "speed-up", "reported in paper (not measured here)",
)
_EFFICIENCY_COLUMNS = ("steps to target", "speed-up")


def task_columns(task: TaskBoard) -> list[str]:
    """The columns of a task's table: offline tasks have no steps to target or speed-up; a rate
    column (e.g. "final win rate") for each per-episode flag rate some run of the task logged."""
    columns = [c for c in TASK_COLUMNS if not (task.offline and c in _EFFICIENCY_COLUMNS)]
    rates = sorted({_rate_column(name) for row in task.rows for name, _ in row.rates})
    return columns[:-1] + rates + columns[-1:]


def _rate_column(name: str) -> str:
    return "final " + name.replace("_", " ")


def with_caveat(text: str, seeds: int) -> str:
    """``text`` followed by the small-sample caveat when ``seeds`` < 5."""
    caveat = stats.seed_caveat(seeds)
    return f"{text} ({caveat})" if caveat else text


def _task_cells(row: Row, task: TaskBoard) -> list[str]:
    norm, n = row.normalised, row.summary.n
    cells = {
        "algorithm": row.algorithm + (f" [{row.block}]" if task.several_blocks else "")
        + (" (baseline)" if row.baseline else ""),
        "seeds": str(n),
        "mean": fmt(row.summary.mean),
        "std": with_caveat(fmt(row.summary.std) if n > 1 else "–", n),
        "IQM": fmt(row.summary.iqm),
        "95% CI of mean": fmt_ci(row.summary.ci_low, row.summary.ci_high),
        "normalised mean": fmt(norm.mean) if norm else "–",
        "normalised 95% CI": fmt_ci(norm.ci_low, norm.ci_high) if norm else "–",
        "steps to target": fmt_steps(row.steps_to_target) if task.efficiency is not None else "–",
        "speed-up": f"{row.speedup:.2f}x" if row.speedup else "–",
        "reported in paper (not measured here)": _reported_text(row) or "–",
        **{_rate_column(name): fmt(value) for name, value in row.rates},
    }
    return [cells.get(c, "–") for c in task_columns(task)]


def _task_sorts(row: Row, task: TaskBoard) -> list[float | None]:
    norm = row.normalised
    sorts = {
        "seeds": row.summary.n, "mean": row.summary.mean, "std": row.summary.std, "IQM": row.summary.iqm,
        "95% CI of mean": row.summary.ci_low, "normalised mean": norm.mean if norm else None,
        "normalised 95% CI": norm.ci_low if norm else None, "steps to target": row.steps_to_target,
        "speed-up": row.speedup, "reported in paper (not measured here)": row.reported[0].mean if row.reported else None,
        **{_rate_column(name): value for name, value in row.rates},
    }
    return [sorts.get(c) for c in task_columns(task)]


def _efficiency_note(board: TaskBoard) -> str:
    if board.offline:
        return ("Curves are against gradient updates (offline: no environment samples are drawn); "
                "steps to target does not apply.")
    eff = board.efficiency
    if eff is None:
        return "Sample efficiency: no baseline with a learning curve on this task (declare `baselines` or pass --baseline)."
    return (
        f"Sample efficiency: target = final score of the best baseline `{eff.reference}` ({eff.target:.4g}); "
        f"steps = first evaluation where the seed-mean curve reaches it; speed-up = {eff.reference}'s steps / steps."
    )


AGGREGATE_HEADERS = ("algorithm", "tasks", "normalised IQM", "95% CI", "mean normalised")
BLOCKS_NOTE = (
    "Algorithms are ranked only against algorithms of the same comparison block (the benchmark's "
    "comparison; for runs outside a benchmark, the task family). A block's aggregate is the IQM of "
    "normalised scores pooled over the tasks with a reference that every algorithm of the block "
    "finished (stratified bootstrap interval); P(row > column) is the chance that a run of the row "
    "algorithm scores higher than a run of the column algorithm, averaged over the tasks both ran."
)


def _block_note(block: Block) -> str:
    text = f"Algorithms: {', '.join(block.algorithms)}. "
    if block.tasks:
        text += f"Aggregate over {', '.join(block.tasks)}."
    else:
        text += "No task with a reference score that every algorithm of this block finished: no aggregate."
    if block.excluded:
        text += f" Left out (not finished by every algorithm of the block): {', '.join(block.excluded)}."
    return text


def _aggregate_cells(a: AggregateRow) -> list[str]:
    return [a.algorithm, str(a.tasks), fmt(a.iqm.value), with_caveat(fmt_ci(a.iqm.ci_low, a.iqm.ci_high), a.iqm.seeds),
            fmt(a.mean)]


def _p_cell(est: stats.Estimate | None) -> str:
    return "–" if est is None else with_caveat(f"{est.value:.2f} {fmt_ci(est.ci_low, est.ci_high)}", est.seeds)


def _source_note(board: Leaderboard) -> str:
    if board.source == "runs":
        return (" The experiment has no benchmark cells: its `dmarl train` runs are grouped by their "
                "algorithm, task and seed tags (the latest finished run of each).")
    return ""


def _issue_lines(board: Leaderboard) -> list[str]:
    return [
        f"{i.key}: {i.state}{f' — {i.detail}' if i.detail else ''}{f' (run {i.run_id})' if i.run_id else ''}"
        for i in board.issues
    ]


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(map(_md, headers)) + " |", "|---" * len(headers) + "|"]
            + ["| " + " | ".join(map(_md, row)) + " |" for row in rows])


def markdown(board: Leaderboard) -> str:
    """The leaderboard as a markdown page."""
    out = [
        f"# Leaderboard: {board.experiment}",
        "",
        f"Generated {board.generated} from MLflow experiment `{board.experiment}` ({len(board.runs)} finished runs). "
        f"Scores are `{FINAL_METRIC}` per seed; intervals are 95 % percentile bootstraps over seeds "
        f"(scipy, fixed seed). Normalised = 100 (score - random) / (expert - random) with the fixed "
        f"references of `{Path(board.references.path).name}` version {board.references.version}. "
        f"Fewer than {stats.MIN_RELIABLE_SEEDS} seeds: intervals are unreliable (marked).{_source_note(board)}",
        "",
    ]
    if board.issues:
        out += ["## Missing or failed cells", ""] + [f"- {line}" for line in _issue_lines(board)] + [""]
    out += ["## Aggregate by comparison block", "", BLOCKS_NOTE, ""]
    for block in board.blocks:
        out += [f"### {block.name}", "", _block_note(block), ""]
        if block.aggregate:
            out += _md_table(AGGREGATE_HEADERS, (_aggregate_cells(a) for a in block.aggregate)) + [""]
        if block.improvement:
            algos = block.algorithms
            out += ["P(row > column):", ""]
            out += _md_table(["", *algos], ([x, *(_p_cell(block.improvement.get((x, y))) for y in algos)] for x in algos))
            out.append("")
    if board.aggregate:
        out += ["![aggregate](aggregate.png)", ""]
    for task in board.tasks:
        out += [f"## {task.task}", "", task.reference_note + ".", "", _efficiency_note(task), ""]
        out += _md_table(task_columns(task), (_task_cells(row, task) for row in task.rows))
        if task.reported_only:
            out += ["", "Reported in papers for algorithms not run here (not measured):", "",
                    "| algorithm | mean | std | steps | source |", "|---|---|---|---|---|"]
            out += [
                f"| {_md(r.algorithm)} | {fmt(r.mean)} | {fmt(r.std)} | {_md(r.steps)} | {_md(r.source)} |"
                for r in task.reported_only
            ]
        out += ["", f"![learning curves](curves/{slug(task.task)}.png)", ""]
    return "\n".join(out + _shift_lines(board))


CSV_COLUMNS = (
    "task", "algorithm", "baseline", "seeds", "mean", "std", "iqm", "ci_low", "ci_high", "normalised_mean",
    "normalised_iqm", "normalised_ci_low", "normalised_ci_high", "target", "steps_to_target", "speedup",
    "reported_mean", "reported_std", "reported_steps", "reported_source", "x_axis", "caveat", "scores",
)


def _csv_rows(board: Leaderboard) -> list[dict[str, Any]]:
    rows = []
    for task in board.tasks:
        for row in task.rows:
            norm = row.normalised
            rep = row.reported[0] if row.reported else None
            rows.append({
                "task": row.task, "algorithm": row.algorithm, "baseline": row.baseline, "seeds": row.summary.n,
                "mean": row.summary.mean, "std": row.summary.std if row.summary.n > 1 else "",
                "iqm": row.summary.iqm,
                "ci_low": row.summary.ci_low, "ci_high": row.summary.ci_high,
                "normalised_mean": norm.mean if norm else "", "normalised_iqm": norm.iqm if norm else "",
                "normalised_ci_low": norm.ci_low if norm else "", "normalised_ci_high": norm.ci_high if norm else "",
                "target": task.efficiency.target if task.efficiency else "",
                "steps_to_target": "" if row.steps_to_target is None else row.steps_to_target,
                "speedup": "" if row.speedup is None else row.speedup,
                "reported_mean": rep.mean if rep else "", "reported_std": rep.std if rep else "",
                "reported_steps": rep.steps if rep else "", "reported_source": rep.source if rep else "",
                "x_axis": task.x_label, "caveat": stats.seed_caveat(row.summary.n),
                "scores": " ".join(f"{s:.6g}" for s in row.scores),
                **{f"final_{name}": value for name, value in row.rates},
            })
    return rows


def csv_columns(board: Leaderboard) -> list[str]:
    """``leaderboard.csv``'s columns: CSV_COLUMNS, then ``final_<name>`` (seed mean of
    ``final/<name>``, e.g. ``final_win_rate``) for each per-episode flag rate some run logged."""
    rates = sorted({name for task in board.tasks for row in task.rows for name, _ in row.rates})
    return [*CSV_COLUMNS, *(f"final_{name}" for name in rates)]


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def marl_eval_environment(runs: Sequence[RunRecord]) -> dict[str, str]:
    """marl-eval's environment name of each run (by run id): the task family, or
    ``family.block`` when the family's tasks belong to several comparison blocks (marl-eval
    expects the same algorithms on every task of an environment)."""
    blocks: dict[str, set[str]] = {}
    for run in runs:
        blocks.setdefault(run.family, set()).add(run.block)
    return {r.run_id: r.family if len(blocks[r.family]) == 1 else f"{r.family}.{r.block}" for r in runs}


def marl_eval(board: Leaderboard) -> dict[str, Any]:
    """marl-eval's raw-data layout: env -> task -> algorithm -> run_k -> step_i / absolute_metrics.

    The environment level is the task family (:func:`marl_eval_environment`), not the
    experiment; each metric list holds the run's evaluation mean (per-episode returns are not
    logged); ``step_count`` counts env steps online and gradient updates offline.
    """
    envs = marl_eval_environment(board.runs)
    out: dict[str, Any] = {}
    for run in sorted(board.runs, key=lambda r: (envs[r.run_id], r.task, r.algorithm, r.seed)):
        algo = out.setdefault(envs[run.run_id], {}).setdefault(run.task, {}).setdefault(run.algorithm, {})
        entry: dict[str, Any] = {
            f"step_{i}": {"step_count": int(step), "return": [value]}
            for i, (step, value) in enumerate(sorted(run.curve.items()))
        }
        entry["absolute_metrics"] = {"return": [run.final]}
        algo[f"run_{len(algo)}"] = entry
    return out


def marl_eval_problems(data: dict[str, Any]) -> list[str]:
    """What marl-eval's ``DiagnoseData.check_data`` (id-marl-eval 0.0.4) would reject, per
    environment: different algorithm sets across tasks, commas in algorithm names, different
    numbers of runs or of step entries, different metric names. Empty: the file is valid."""
    problems = []
    for env, tasks in data.items():
        algos = [sorted(a.lower() for a in algorithms) for algorithms in tasks.values()]
        runs = [len(r) for algorithms in tasks.values() for r in algorithms.values()]
        steps = [len(s) for algorithms in tasks.values() for r in algorithms.values() for s in r.values()]
        metrics = [sorted(set(m) - {"step_count"}) for algorithms in tasks.values() for r in algorithms.values()
                   for s in r.values() for m in s.values()]
        if any(a != algos[0] for a in algos):
            problems.append(f"{env}: the tasks have different algorithms ({'; '.join(map(', '.join, algos))})")
        if any("," in a for names in algos for a in names):
            problems.append(f"{env}: an algorithm name contains a comma")
        if len(set(runs)) > 1:
            problems.append(f"{env}: different numbers of runs (seeds) per task and algorithm: {sorted(set(runs))}")
        if len(set(steps)) > 1:
            problems.append(f"{env}: different numbers of evaluation steps per run: {sorted(set(steps))}")
        if any(m != metrics[0] for m in metrics):
            problems.append(f"{env}: different metric names across steps")
    return problems


def curve_figure(task: TaskBoard) -> Figure:
    """Learning curves of one task: seed mean and 95 % interval against env steps (online)
    or gradient updates (offline)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.add_subplot()
    for algo, curve in sorted(task.curves.items()):
        if not len(curve.steps):
            continue
        (line,) = ax.plot(curve.steps, curve.mean, label=algo, marker="." if len(curve.steps) < 30 else None)
        if np.isfinite(curve.low).all():
            ax.fill_between(curve.steps, curve.low, curve.high, color=line.get_color(), alpha=0.2, linewidth=0)
    if task.efficiency is not None:
        ax.axhline(task.efficiency.target, color="grey", linestyle=":", linewidth=1,
                   label=f"target ({task.efficiency.reference})")
    ax.set_title(task.task)
    ax.set_xlabel(task.x_label)
    ax.set_ylabel(f"{EVAL_METRIC} (last point: {FINAL_METRIC})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def aggregate_figure(board: Leaderboard) -> Figure:
    """Normalised IQM per algorithm with its interval, one group of bars per comparison block."""
    from matplotlib.figure import Figure

    rows = board.aggregate[::-1]
    several = len({a.block for a in rows}) > 1
    fig = Figure(figsize=(6.4, 0.5 * len(rows) + 1.2), dpi=100)
    ax = fig.add_subplot()
    values = np.array([a.iqm.value for a in rows])
    low = np.array([a.iqm.ci_low for a in rows])
    high = np.array([a.iqm.ci_high for a in rows])
    err = np.where(np.isfinite(low), np.vstack([values - low, high - values]), 0.0)
    labels = [f"{a.block}: {a.algorithm}" if several else a.algorithm for a in rows]
    colors = [f"C{sorted({r.block for r in rows}).index(a.block)}" for a in rows]
    ax.barh(labels, values, xerr=err, color=colors, alpha=0.7, capsize=3)
    ax.set_xlabel("IQM of normalised score (0 = random, 100 = expert)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f2f2f2;cursor:pointer;user-select:none}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
.reported{background:#fff8e1;font-style:italic}.note{color:#555}.issues li{color:#a00}
img{max-width:100%;border:1px solid #eee}
"""

_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = !th.classList.contains('asc');
    table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
    th.classList.add(asc ? 'asc' : 'desc');
    var key = function(row){
      var cell = row.cells[col], v = cell.getAttribute('data-sort');
      if (v === null) v = cell.textContent;
      var n = parseFloat(v);
      return isNaN(n) ? v.toLowerCase() : n;
    };
    Array.from(body.rows).sort(function(a, b){
      var x = key(a), y = key(b);
      if (typeof x !== typeof y) return typeof x === 'number' ? -1 : 1;
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    }).forEach(function(row){ body.appendChild(row); });
  });
});
"""


def _td(text: str, sort: float | None = None, cls: str = "") -> str:
    attrs = ""
    if sort is not None and math.isfinite(sort):
        attrs += f' data-sort="{sort!r}"'
    if cls:
        attrs += f' class="{cls}"'
    return f"<td{attrs}>{html.escape(text)}</td>"


def _table(headers: Sequence[str], rows: Iterable[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def html_page(board: Leaderboard, images: dict[str, bytes]) -> str:
    """A self-contained page: inline CSS/JS, sortable tables, plots as base64 PNG."""
    e = html.escape
    parts = [
        f"<h1>Leaderboard: {e(board.experiment)}</h1>",
        f'<p class="note">Generated {e(board.generated)} from MLflow experiment <code>{e(board.experiment)}</code> '
        f"({len(board.runs)} finished runs). Scores are <code>{FINAL_METRIC}</code> per seed; intervals are 95 % "
        f"percentile bootstraps over seeds. Normalised = 100 (score − random) / (expert − random), references "
        f"<code>{e(Path(board.references.path).name)}</code> version {e(board.references.version)}. "
        f"Fewer than {stats.MIN_RELIABLE_SEEDS} seeds: intervals are unreliable (marked).{e(_source_note(board))} "
        f'Click a column header to sort. <span class="reported">Shaded italic cells are numbers reported in '
        f"papers, not measured here.</span></p>",
    ]
    if board.issues:
        parts.append("<h2>Missing or failed cells</h2><ul class=\"issues\">"
                     + "".join(f"<li>{e(line)}</li>" for line in _issue_lines(board)) + "</ul>")
    parts.append(f'<h2>Aggregate by comparison block</h2><p class="note">{e(BLOCKS_NOTE)}</p>')
    for block in board.blocks:
        parts.append(f'<h3>{e(block.name)}</h3><p class="note">{e(_block_note(block))}</p>')
        if block.aggregate:
            parts.append(_table(AGGREGATE_HEADERS, (
                "<tr>" + "".join(_td(t, s) for t, s in zip(
                    _aggregate_cells(a), (None, a.tasks, a.iqm.value, a.iqm.ci_low, a.mean))) + "</tr>"
                for a in block.aggregate
            )))
        if block.improvement:
            algos = block.algorithms
            body = []
            for x in algos:
                ests = [block.improvement.get((x, y)) for y in algos]
                body.append("<tr>" + _td(x) + "".join(_td(_p_cell(est), None if est is None else est.value)
                                                      for est in ests) + "</tr>")
            parts.append("<p>P(row &gt; column)</p>" + _table(["", *algos], body))
    if board.aggregate:
        parts.append(_img(images["aggregate.png"], "aggregate normalised IQM"))
    for task in board.tasks:
        parts.append(f"<h2>{e(task.task)}</h2><p class=\"note\">{e(task.reference_note)}. {e(_efficiency_note(task))}</p>")
        columns = task_columns(task)
        body = []
        for row in task.rows:
            cells = "".join(_td(t, s, "reported" if c.startswith("reported") else "")
                            for c, t, s in zip(columns, _task_cells(row, task), _task_sorts(row, task)))
            body.append(f"<tr>{cells}</tr>")
        parts.append(_table(columns, body))
        if task.reported_only:
            parts.append('<p class="note">Reported in papers for algorithms not run here (not measured):</p>')
            parts.append(_table(
                ["algorithm", "mean", "std", "steps", "source"],
                (
                    "<tr>" + _td(r.algorithm, cls="reported") + _td(fmt(r.mean), r.mean, "reported")
                    + _td(fmt(r.std), r.std, "reported") + _td(r.steps, cls="reported")
                    + _td(r.source, cls="reported") + "</tr>"
                    for r in task.reported_only
                ),
            ))
        parts.append(_img(images[f"curves/{slug(task.task)}.png"], f"learning curves {task.task}"))
    shift_md = _shift_lines(board)
    if shift_md:
        parts.append(f"<h2>Shifted environments</h2><p class=\"note\">{e(shift_md[2])}</p>" + _table(
            list(SHIFT_COLUMNS[:-1]), ("<tr>" + "".join(_td(str(r[c]) if not isinstance(r[c], float) else fmt(r[c]))
                                            for c in SHIFT_COLUMNS[:-1]) + "</tr>" for r in shift_rows(board))))
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Leaderboard: {e(board.experiment)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts) + f"<script>{_JS}</script></body></html>\n"
    )


AGGREGATE_COLUMNS = ("comparison", "algorithm", "tasks", "normalised_iqm", "ci_low", "ci_high", "normalised_mean",
                     "min_seeds", "caveat")


def write(board: Leaderboard, out_dir: str | Path) -> list[Path]:
    """Write every leaderboard file into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    (out / "curves").mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {f"curves/{slug(t.task)}.png": _png(curve_figure(t)) for t in board.tasks}
    if board.aggregate:
        images["aggregate.png"] = _png(aggregate_figure(board))
    written = []
    for name, png in images.items():
        (out / name).write_bytes(png)
        written.append(out / name)
    (out / "leaderboard.md").write_text(markdown(board) + "\n")
    _write_csv(out / "leaderboard.csv", _csv_rows(board), csv_columns(board))
    _write_csv(
        out / "aggregate.csv",
        [
            {"comparison": a.block, "algorithm": a.algorithm, "tasks": a.tasks, "normalised_iqm": a.iqm.value,
             "ci_low": a.iqm.ci_low, "ci_high": a.iqm.ci_high, "normalised_mean": a.mean, "min_seeds": a.iqm.seeds,
             "caveat": stats.seed_caveat(a.iqm.seeds)}
            for a in board.aggregate
        ],
        AGGREGATE_COLUMNS,
    )
    (out / "index.html").write_text(html_page(board, images))
    (out / "marl_eval.json").write_text(json.dumps(marl_eval(board), indent=1) + "\n")
    written += [out / n for n in ("leaderboard.md", "leaderboard.csv", "aggregate.csv", "index.html", "marl_eval.json")]
    if any(run.shifts for run in board.runs):
        _write_csv(out / "shifts.csv", shift_rows(board), SHIFT_COLUMNS)
        written.append(out / "shifts.csv")
    return written


def build_leaderboard(
    experiment: str,
    out_dir: str | Path,
    *,
    tracking_uri: str | None = None,
    references: str | Path | None = None,
    reported_dir: str | Path | None = None,
    baselines: Sequence[str] | None = None,
    boot: stats.Bootstrap = stats.DEFAULT_BOOTSTRAP,
) -> Leaderboard:
    """Read an experiment from MLflow and write its leaderboard into ``out_dir``."""
    refs = load_references(references)
    reported = load_reported(reported_dir)
    board = compute(collect(experiment, tracking_uri), refs, reported, baselines=baselines, boot=boot)
    write(board, out_dir)
    return board
