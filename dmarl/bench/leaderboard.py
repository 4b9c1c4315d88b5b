"""Leaderboards from the runs of one MLflow experiment.

``collect`` reads the cells' runs (the latest FINISHED run of each cell key, else its latest
run) and the planned cells from the parent runs; ``compute`` turns them into per-task and
aggregate statistics; ``write`` produces ``leaderboard.md``, ``leaderboard.csv``,
``aggregate.csv``, a self-contained sortable ``index.html``, learning-curve PNGs in
``curves/`` and ``marl_eval.json`` (marl-eval's raw-data layout). Papers' reported numbers
are shown beside the measured ones in their own, labelled columns and never enter a statistic.
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


@dataclass(frozen=True)
class AggregateRow:
    algorithm: str
    tasks: int
    iqm: stats.Estimate
    mean: float


@dataclass
class Leaderboard:
    experiment: str
    tracking_uri: str
    generated: str
    references: References
    tasks: list[TaskBoard]
    aggregate: list[AggregateRow]
    aggregate_tasks: list[str]
    improvement: dict[tuple[str, str], stats.Estimate]
    issues: list[Issue]
    runs: list[RunRecord]


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
            )
        )
    return ExperimentData(experiment, uri, records, issues, baselines)


# --------------------------------------------------------------------------- statistics


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
    """Per-task tables, aggregate normalised IQM, probability of improvement, sample
    efficiency and learning curves from the collected runs."""
    by_task: dict[str, list[RunRecord]] = {}
    for run in data.runs:
        by_task.setdefault(run.task, []).append(run)
    registry_baselines: set[str] | None = None
    boards: list[TaskBoard] = []
    normalised: dict[str, dict[str, list[float]]] = {}  # algorithm -> task -> scores
    raw: dict[str, dict[str, list[float]]] = {}
    for task, runs in sorted(by_task.items()):
        first = runs[0]
        ref = references.lookup(task, first.task_name, first.dataset)
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
            raw.setdefault(algo, {})[task] = [float(r.final) for r in algo_runs]
        efficiency = stats.sample_efficiency(
            {a: (c.steps, c.mean) for a, c in curves.items()}, finals, sorted(task_baselines & set(by_algo))
        )
        rows = []
        for algo, algo_runs in by_algo.items():
            scores = tuple(float(r.final) for r in algo_runs)
            norm = None
            if ref is not None:
                norm_scores = [float(stats.normalise(s, ref.random, ref.expert)) for s in scores]
                norm = stats.summarize(norm_scores, boot)
                normalised.setdefault(algo, {})[task] = norm_scores
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
                    reported=tuple(
                        r for r in reported
                        if _matches(r, task, first.task_name) and r.algorithm.lower() in names
                    ),
                )
            )
        rows.sort(key=lambda r: r.summary.mean, reverse=True)
        used = {id(r) for row in rows for r in row.reported}
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
            )
        )
    aggregate_tasks = sorted({t for per in normalised.values() for t in per})
    aggregate = sorted(
        (
            AggregateRow(
                algorithm=algo,
                tasks=len(per),
                iqm=stats.aggregate_iqm([per[t] for t in sorted(per)], boot),
                mean=float(np.mean([np.mean(v) for v in per.values()])),
            )
            for algo, per in normalised.items()
        ),
        key=lambda a: a.iqm.value,
        reverse=True,
    )
    improvement: dict[tuple[str, str], stats.Estimate] = {}
    for x in sorted(raw):
        for y in sorted(raw):
            common = sorted(set(raw[x]) & set(raw[y]))
            if x != y and common:
                improvement[(x, y)] = stats.probability_of_improvement(
                    [raw[x][t] for t in common], [raw[y][t] for t in common], boot
                )
    return Leaderboard(
        experiment=data.experiment,
        tracking_uri=data.tracking_uri,
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        references=references,
        tasks=boards,
        aggregate=aggregate,
        aggregate_tasks=aggregate_tasks,
        improvement=improvement,
        issues=sorted(data.issues, key=lambda i: (i.state, i.key)),
        runs=list(data.runs),
    )


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


def _task_cells(row: Row, has_target: bool) -> list[str]:
    norm = row.normalised
    return [
        row.algorithm + (" (baseline)" if row.baseline else ""),
        str(row.summary.n),
        fmt(row.summary.mean),
        fmt(row.summary.std),
        fmt(row.summary.iqm),
        fmt_ci(row.summary.ci_low, row.summary.ci_high),
        fmt(norm.mean) if norm else "–",
        fmt_ci(norm.ci_low, norm.ci_high) if norm else "–",
        fmt_steps(row.steps_to_target) if has_target else "–",
        f"{row.speedup:.2f}x" if row.speedup else "–",
        _reported_text(row) or "–",
    ]


def _efficiency_note(board: TaskBoard) -> str:
    eff = board.efficiency
    if eff is None:
        return "Sample efficiency: no baseline with a learning curve on this task (declare `baselines` or pass --baseline)."
    return (
        f"Sample efficiency: target = final score of the best baseline `{eff.reference}` ({eff.target:.4g}); "
        f"steps = first evaluation where the seed-mean curve reaches it; speed-up = {eff.reference}'s steps / steps."
    )


def _issue_lines(board: Leaderboard) -> list[str]:
    return [
        f"{i.key}: {i.state}{f' — {i.detail}' if i.detail else ''}{f' (run {i.run_id})' if i.run_id else ''}"
        for i in board.issues
    ]


def markdown(board: Leaderboard) -> str:
    """The leaderboard as a markdown page."""
    out = [
        f"# Leaderboard: {board.experiment}",
        "",
        f"Generated {board.generated} from MLflow experiment `{board.experiment}` ({len(board.runs)} finished runs). "
        f"Scores are `{FINAL_METRIC}` per seed; intervals are 95 % percentile bootstraps over seeds "
        f"(scipy, fixed seed). Normalised = 100 (score - random) / (expert - random) with the fixed "
        f"references of `{Path(board.references.path).name}` version {board.references.version}.",
        "",
    ]
    if board.issues:
        out += ["## Missing or failed cells", ""] + [f"- {line}" for line in _issue_lines(board)] + [""]
    out += ["## Aggregate", ""]
    if board.aggregate:
        out += [
            f"IQM of normalised scores pooled over the tasks with references ({', '.join(board.aggregate_tasks)}), "
            "with a stratified bootstrap interval.",
            "",
            "| algorithm | tasks | normalised IQM | 95% CI | mean normalised |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| {_md(a.algorithm)} | {a.tasks} | {fmt(a.iqm.value)} | {fmt_ci(a.iqm.ci_low, a.iqm.ci_high)} | {fmt(a.mean)} |"
            for a in board.aggregate
        ]
        out += ["", "![aggregate](aggregate.png)", ""]
    else:
        out += ["No finished run on a task with a reference score: no aggregate.", ""]
    if board.improvement:
        algos = sorted({x for x, _ in board.improvement})
        out += [
            "Probability of improvement P(row > column): the chance that a run of the row algorithm "
            "scores higher than a run of the column algorithm, averaged over the tasks both ran.",
            "",
            "| | " + " | ".join(map(_md, algos)) + " |",
            "|---" * (len(algos) + 1) + "|",
        ]
        for x in algos:
            cells = []
            for y in algos:
                est = board.improvement.get((x, y))
                cells.append("–" if est is None else f"{est.value:.2f} {fmt_ci(est.ci_low, est.ci_high)}")
            out.append(f"| {_md(x)} | " + " | ".join(cells) + " |")
        out.append("")
    for task in board.tasks:
        out += [f"## {task.task}", "", task.reference_note + ".", "", _efficiency_note(task), ""]
        out += ["| " + " | ".join(TASK_COLUMNS) + " |", "|---" * len(TASK_COLUMNS) + "|"]
        out += ["| " + " | ".join(map(_md, _task_cells(row, task.efficiency is not None))) + " |" for row in task.rows]
        if task.reported_only:
            out += ["", "Reported in papers for algorithms not run here (not measured):", "",
                    "| algorithm | mean | std | steps | source |", "|---|---|---|---|---|"]
            out += [
                f"| {_md(r.algorithm)} | {fmt(r.mean)} | {fmt(r.std)} | {_md(r.steps)} | {_md(r.source)} |"
                for r in task.reported_only
            ]
        out += ["", f"![learning curves](curves/{slug(task.task)}.png)", ""]
    return "\n".join(out)


CSV_COLUMNS = (
    "task", "algorithm", "baseline", "seeds", "mean", "std", "iqm", "ci_low", "ci_high", "normalised_mean",
    "normalised_iqm", "normalised_ci_low", "normalised_ci_high", "target", "steps_to_target", "speedup",
    "reported_mean", "reported_std", "reported_steps", "reported_source", "scores",
)


def _csv_rows(board: Leaderboard) -> list[dict[str, Any]]:
    rows = []
    for task in board.tasks:
        for row in task.rows:
            norm = row.normalised
            rep = row.reported[0] if row.reported else None
            rows.append({
                "task": row.task, "algorithm": row.algorithm, "baseline": row.baseline, "seeds": row.summary.n,
                "mean": row.summary.mean, "std": row.summary.std, "iqm": row.summary.iqm,
                "ci_low": row.summary.ci_low, "ci_high": row.summary.ci_high,
                "normalised_mean": norm.mean if norm else "", "normalised_iqm": norm.iqm if norm else "",
                "normalised_ci_low": norm.ci_low if norm else "", "normalised_ci_high": norm.ci_high if norm else "",
                "target": task.efficiency.target if task.efficiency else "",
                "steps_to_target": "" if row.steps_to_target is None else row.steps_to_target,
                "speedup": "" if row.speedup is None else row.speedup,
                "reported_mean": rep.mean if rep else "", "reported_std": rep.std if rep else "",
                "reported_steps": rep.steps if rep else "", "reported_source": rep.source if rep else "",
                "scores": " ".join(f"{s:.6g}" for s in row.scores),
            })
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def marl_eval(board: Leaderboard) -> dict[str, Any]:
    """marl-eval's raw-data layout: env -> task -> algorithm -> run_k -> step_i / absolute_metrics.

    The environment level is the experiment name; each metric list holds the run's
    evaluation mean (per-episode returns are not logged).
    """
    tasks: dict[str, Any] = {}
    for run in sorted(board.runs, key=lambda r: (r.task, r.algorithm, r.seed)):
        algo = tasks.setdefault(run.task, {}).setdefault(run.algorithm, {})
        entry: dict[str, Any] = {
            f"step_{i}": {"step_count": int(step), "return": [value]}
            for i, (step, value) in enumerate(sorted(run.curve.items()))
        }
        entry["absolute_metrics"] = {"return": [run.final]}
        algo[f"run_{len(algo)}"] = entry
    return {board.experiment: tasks}


def curve_figure(task: TaskBoard) -> Figure:
    """Learning curves of one task: seed mean and 95 % interval against env steps."""
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
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"{EVAL_METRIC} (last point: {FINAL_METRIC})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def aggregate_figure(board: Leaderboard) -> Figure:
    """Normalised IQM per algorithm with its interval."""
    from matplotlib.figure import Figure

    rows = board.aggregate[::-1]
    fig = Figure(figsize=(6.4, 0.5 * len(rows) + 1.2), dpi=100)
    ax = fig.add_subplot()
    values = np.array([a.iqm.value for a in rows])
    low = np.array([a.iqm.ci_low for a in rows])
    high = np.array([a.iqm.ci_high for a in rows])
    err = np.where(np.isfinite(low), np.vstack([values - low, high - values]), 0.0)
    ax.barh([a.algorithm for a in rows], values, xerr=err, color="tab:blue", alpha=0.7, capsize=3)
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
        f'Click a column header to sort. <span class="reported">Shaded italic cells are numbers reported in '
        f"papers, not measured here.</span></p>",
    ]
    if board.issues:
        parts.append("<h2>Missing or failed cells</h2><ul class=\"issues\">"
                     + "".join(f"<li>{e(line)}</li>" for line in _issue_lines(board)) + "</ul>")
    parts.append("<h2>Aggregate</h2>")
    if board.aggregate:
        parts.append(f'<p class="note">IQM of normalised scores pooled over {e(", ".join(board.aggregate_tasks))} '
                     "(stratified bootstrap interval).</p>")
        parts.append(_table(
            ["algorithm", "tasks", "normalised IQM", "95% CI", "mean normalised"],
            (
                "<tr>" + _td(a.algorithm) + _td(str(a.tasks), a.tasks) + _td(fmt(a.iqm.value), a.iqm.value)
                + _td(fmt_ci(a.iqm.ci_low, a.iqm.ci_high), a.iqm.ci_low) + _td(fmt(a.mean), a.mean) + "</tr>"
                for a in board.aggregate
            ),
        ))
        parts.append(_img(images["aggregate.png"], "aggregate normalised IQM"))
    else:
        parts.append('<p class="note">No finished run on a task with a reference score: no aggregate.</p>')
    if board.improvement:
        algos = sorted({x for x, _ in board.improvement})
        body = []
        for x in algos:
            cells = _td(x)
            for y in algos:
                est = board.improvement.get((x, y))
                cells += _td("–" if est is None else f"{est.value:.2f} {fmt_ci(est.ci_low, est.ci_high)}",
                             None if est is None else est.value)
            body.append(f"<tr>{cells}</tr>")
        parts.append("<h3>Probability of improvement P(row &gt; column)</h3>" + _table(["", *algos], body))
    for task in board.tasks:
        parts.append(f"<h2>{e(task.task)}</h2><p class=\"note\">{e(task.reference_note)}. {e(_efficiency_note(task))}</p>")
        body = []
        for row in task.rows:
            texts = _task_cells(row, task.efficiency is not None)
            norm = row.normalised
            sorts = [None, row.summary.n, row.summary.mean, row.summary.std, row.summary.iqm, row.summary.ci_low,
                     norm.mean if norm else None, norm.ci_low if norm else None, row.steps_to_target, row.speedup,
                     row.reported[0].mean if row.reported else None]
            cells = "".join(_td(t, s, "reported" if i == len(texts) - 1 else "")
                            for i, (t, s) in enumerate(zip(texts, sorts)))
            body.append(f"<tr>{cells}</tr>")
        parts.append(_table(TASK_COLUMNS, body))
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
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Leaderboard: {e(board.experiment)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts) + f"<script>{_JS}</script></body></html>\n"
    )


AGGREGATE_COLUMNS = ("algorithm", "tasks", "normalised_iqm", "ci_low", "ci_high", "normalised_mean")


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
    rows = _csv_rows(board)
    _write_csv(out / "leaderboard.csv", rows, CSV_COLUMNS)
    _write_csv(
        out / "aggregate.csv",
        [
            {"algorithm": a.algorithm, "tasks": a.tasks, "normalised_iqm": a.iqm.value, "ci_low": a.iqm.ci_low,
             "ci_high": a.iqm.ci_high, "normalised_mean": a.mean}
            for a in board.aggregate
        ],
        AGGREGATE_COLUMNS,
    )
    (out / "index.html").write_text(html_page(board, images))
    (out / "marl_eval.json").write_text(json.dumps(marl_eval(board), indent=1) + "\n")
    written += [out / n for n in ("leaderboard.md", "leaderboard.csv", "aggregate.csv", "index.html", "marl_eval.json")]
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
