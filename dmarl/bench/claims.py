"""The claims page: paper claims, the numbers a benchmark measured for them, and a verdict
computed from those numbers.

A claim is a paper, what it reports (a number or a direction), a benchmark gin that measures
it on a CPU, and a verdict rule evaluated on the measured numbers. A benchmark gin declares
its claims beside its comparisons; one generator writes the page::

    benchmark.claims = [@omsd_t1/claim()]
    omsd_t1/claim.id = 'omsd-table1-omsd'
    omsd_t1/claim.paper = 'OMSD (004) Table 1'
    omsd_t1/claim.statement = 'OMSD finds the optimal joint action of the bandit'
    omsd_t1/claim.reported = '1 +- 0'
    omsd_t1/claim.rule = "at_least('omsd', 0.95)"

A rule is one call, with literal arguments, to a rule below; a label is an algorithm label
of the benchmark (``'label@task'`` when the label ran on several tasks). Scores are the
per-seed ``final/return_mean`` of each cell's run (as in the leaderboard); another metric is
the mean of that metric's logged history per run. Intervals are the 95 % percentile bootstrap
of :mod:`dmarl.bench.stats` (fixed seed: same numbers, same verdict).

================================  ==================================================================
rule                              verdict (reproduced / direction only / not reproduced)
================================  ==================================================================
``at_least(label, value)``        seed mean >= value: reproduced; else not reproduced
``at_most(label, value)``         seed mean <= value: reproduced; else not reproduced
``better(a, b)``                  95 % CI of mean(a) - mean(b) above 0: reproduced; mean
                                  difference > 0 but CI includes 0: direction only; else not
``worse(a, b)``                   ``better(b, a)``, shown as stated
``similar(a, b, tol)``            CI of the difference inside [-tol, tol]: reproduced;
                                  |difference| <= tol but CI wider: direction only; else not
``ratio(a, b, low, high,          CI of mean(a) / mean(b) inside [low, high]: reproduced; ratio
metric='time/update_ms')``        inside but CI wider: direction only; else not reproduced
``check(function, relation,       a function of :mod:`dmarl.bench.claim_checks` returns (value,
tol=0)``                          reference, se); '<=': value <= reference + tol reproduced,
                                  within 3 se more direction only; '==': |value - reference| <=
                                  tol + 3 se reproduced; else not reproduced
================================  ==================================================================

A claim whose labels have no finished run is "not run". Every rule but ``check`` takes an
optional ``metric=`` (default ``final/return_mean``). Each claims benchmark writes its section
as ``<out>/<benchmark>.json``; the page (``index.md``, ``index.html``) is assembled from every
section present, so claims gins run separately and later algorithms add their own.
"""
from __future__ import annotations

import ast
import datetime as dt
import html
import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import gin

from dmarl.errors import UserError

if TYPE_CHECKING:
    from dmarl.bench.spec import Benchmark

FINAL_METRIC = "final/return_mean"  # dmarl.bench.leaderboard.FINAL_METRIC
TIME_METRIC = "time/update_ms"  # logged by the online and offline runners per update window
REPRODUCED, DIRECTION, NOT_REPRODUCED, NOT_RUN = "reproduced", "direction only", "not reproduced", "not run"
VERDICTS = (REPRODUCED, DIRECTION, NOT_REPRODUCED, NOT_RUN)
SE_SLACK = 3.0  # Monte Carlo standard errors a check's value may sit past its reference


@dataclass(frozen=True)
class Claim:
    """One paper claim: where it comes from, what the paper reports and the verdict rule."""

    id: str
    paper: str
    statement: str
    reported: str
    rule: str
    command: str = ""
    note: str = ""


@gin.configurable("claim")
def claim(
    id: str = gin.REQUIRED,  # noqa: A002 (the claim's id, as written in gin)
    paper: str = gin.REQUIRED,
    statement: str = gin.REQUIRED,
    reported: str = gin.REQUIRED,
    rule: str = gin.REQUIRED,
    command: str = "",
    note: str = "",
) -> Claim:
    """Declare a claim (see the module docstring); the rule is parsed now, so a typo fails
    when the benchmark gin is loaded."""
    made = Claim(id=id, paper=paper, statement=statement, reported=reported, rule=rule, command=command, note=note)
    parse_rule(made)
    return made


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Sample:
    """Per-seed values of one label and metric, with their summary."""

    label: str
    metric: str
    values: tuple[float, ...]

    def summary(self) -> dict[str, Any]:
        from dmarl.bench import stats

        s = stats.summarize(self.values)
        return {"label": self.label, "metric": self.metric, "n": s.n, "mean": s.mean, "std": s.std,
                "ci_low": s.ci_low, "ci_high": s.ci_high, "values": list(self.values)}


@dataclass(frozen=True)
class Evaluation:
    """A rule's verdict, the measured samples it used and a sentence on the comparison."""

    verdict: str
    measured: list[dict[str, Any]] = field(default_factory=list)
    comparison: str = ""


Data = dict[str, dict[str, tuple[float, ...]]]  # label -> metric -> per-seed values


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def _fmt(x: float) -> str:
    return "–" if not _finite(x) else f"{x:.4g}"


def _ci(low: float, high: float) -> str:
    return "–" if not (_finite(low) and _finite(high)) else f"[{low:.4g}, {high:.4g}]"


@dataclass(frozen=True)
class Rule(ABC):
    """Base of the verdict rules: the labels it reads and its evaluation on measured data."""

    def labels(self) -> tuple[str, ...]:
        return ()

    def metric_names(self) -> tuple[str, ...]:
        return (getattr(self, "metric", FINAL_METRIC),) if self.labels() else ()

    def samples(self, data: Data) -> list[Sample] | None:
        """The samples of every label, or None when one has no finished run."""
        metric = getattr(self, "metric", FINAL_METRIC)
        out = []
        for label in self.labels():
            values = data.get(label, {}).get(metric, ())
            if not values:
                return None
            out.append(Sample(label, metric, tuple(values)))
        return out

    @abstractmethod
    def evaluate(self, data: Data) -> Evaluation:
        """The verdict of this rule on the measured data."""


@dataclass(frozen=True)
class Threshold(Rule):
    """``at_least`` / ``at_most``: the seed mean of one label against a fixed value."""

    label: str
    value: float
    above: bool
    metric: str = FINAL_METRIC

    def labels(self) -> tuple[str, ...]:
        return (self.label,)

    def evaluate(self, data: Data) -> Evaluation:
        samples = self.samples(data)
        if samples is None:
            return Evaluation(NOT_RUN)
        summary = samples[0].summary()
        mean = summary["mean"]
        ok = mean >= self.value if self.above else mean <= self.value
        sign = ">=" if self.above else "<="
        return Evaluation(
            REPRODUCED if ok else NOT_REPRODUCED, [summary],
            f"mean {_fmt(mean)} {'' if ok else 'not '}{sign} {self.value:g}",
        )


@dataclass(frozen=True)
class Difference(Rule):
    """``better`` / ``worse`` / ``similar``: the difference of two labels' seed means."""

    a: str
    b: str
    kind: str  # "better" | "similar"
    tol: float = 0.0
    metric: str = FINAL_METRIC
    shown: str = ""  # how the rule was written (worse(a, b) is better(b, a))

    def labels(self) -> tuple[str, ...]:
        return (self.a, self.b)

    def evaluate(self, data: Data) -> Evaluation:
        from dmarl.bench import stats

        samples = self.samples(data)
        if samples is None:
            return Evaluation(NOT_RUN)
        x, y = samples
        diff = float(sum(x.values) / len(x.values) - sum(y.values) / len(y.values))
        low, high = stats.DEFAULT_BOOTSTRAP.ci([x.values, y.values], _mean_difference)
        p = stats.probability_of_improvement([x.values], [y.values])
        text = (f"mean({self.a}) - mean({self.b}) = {_fmt(diff)}, 95% CI {_ci(low, high)}; "
                f"P({self.a} > {self.b}) = {p.value:.2f}")
        ci_known = _finite(low) and _finite(high)
        if self.kind == "better":
            if ci_known and low > 0:
                verdict = REPRODUCED
            elif diff > 0:
                verdict = DIRECTION
            else:
                verdict = NOT_REPRODUCED
        else:
            if ci_known and -self.tol <= low and high <= self.tol:
                verdict = REPRODUCED
            elif abs(diff) <= self.tol:
                verdict = DIRECTION
            else:
                verdict = NOT_REPRODUCED
            text += f"; tolerance ±{self.tol:g}"
        measured = [s.summary() for s in samples]
        if self.shown == "worse":  # keep the page in the order the rule was written
            measured = measured[::-1]
        return Evaluation(verdict, measured, text)


@dataclass(frozen=True)
class Ratio(Rule):
    """``ratio``: mean(a) / mean(b) of a metric (e.g. update time) inside [low, high]."""

    a: str
    b: str
    low: float
    high: float
    metric: str = TIME_METRIC

    def labels(self) -> tuple[str, ...]:
        return (self.a, self.b)

    def evaluate(self, data: Data) -> Evaluation:
        from dmarl.bench import stats

        samples = self.samples(data)
        if samples is None:
            return Evaluation(NOT_RUN)
        x, y = samples
        mean_y = sum(y.values) / len(y.values)
        value = (sum(x.values) / len(x.values)) / mean_y if mean_y else math.nan
        lo, hi = stats.DEFAULT_BOOTSTRAP.ci([x.values, y.values], _mean_ratio)
        inside = _finite(value) and self.low <= value <= self.high
        if inside and _finite(lo) and _finite(hi) and self.low <= lo and hi <= self.high:
            verdict = REPRODUCED
        elif inside:
            verdict = DIRECTION
        else:
            verdict = NOT_REPRODUCED
        return Evaluation(
            verdict, [s.summary() for s in samples],
            f"mean({self.a}) / mean({self.b}) of {self.metric} = {_fmt(value)}, 95% CI {_ci(lo, hi)}; "
            f"expected in [{self.low:g}, {self.high:g}]",
        )


@dataclass(frozen=True)
class Check(Rule):
    """``check``: a computation of :mod:`dmarl.bench.claim_checks` instead of training."""

    function: str
    relation: str = "<="
    tol: float = 0.0

    def evaluate(self, data: Data) -> Evaluation:
        from dmarl.bench.claim_checks import CHECKS

        got = CHECKS[self.function]()
        slack = SE_SLACK * got.se
        gap = got.value - got.reference
        if self.relation == "<=":
            verdict = REPRODUCED if gap <= self.tol else DIRECTION if gap <= self.tol + slack else NOT_REPRODUCED
        elif self.relation == ">=":
            verdict = REPRODUCED if gap >= -self.tol else DIRECTION if gap >= -self.tol - slack else NOT_REPRODUCED
        else:
            verdict = REPRODUCED if abs(gap) <= self.tol + slack else NOT_REPRODUCED
        se = f" ± {got.se:.2g} (MC s.e.)" if got.se else ""
        tol = f" (tolerance {self.tol:g})" if self.tol else ""
        return Evaluation(
            verdict,
            [{"label": self.function, "metric": "check", "value": got.value, "se": got.se,
              "reference": got.reference, "detail": got.detail}],
            f"{self.function}: {got.value:.6g}{se} {self.relation} {got.reference:.6g}{tol}",
        )


def _mean_difference(x: Any, y: Any, axis: int = -1) -> Any:
    return x.mean(axis=axis) - y.mean(axis=axis)


def _mean_ratio(x: Any, y: Any, axis: int = -1) -> Any:
    return x.mean(axis=axis) / y.mean(axis=axis)


def _at_least(label: str, value: float, metric: str = FINAL_METRIC) -> Rule:
    return Threshold(str(label), float(value), True, str(metric))


def _at_most(label: str, value: float, metric: str = FINAL_METRIC) -> Rule:
    return Threshold(str(label), float(value), False, str(metric))


def _better(a: str, b: str, metric: str = FINAL_METRIC) -> Rule:
    return Difference(str(a), str(b), "better", metric=str(metric), shown="better")


def _worse(a: str, b: str, metric: str = FINAL_METRIC) -> Rule:
    return Difference(str(b), str(a), "better", metric=str(metric), shown="worse")


def _similar(a: str, b: str, tol: float, metric: str = FINAL_METRIC) -> Rule:
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    return Difference(str(a), str(b), "similar", float(tol), str(metric), shown="similar")


def _ratio(a: str, b: str, low: float, high: float, metric: str = TIME_METRIC) -> Rule:
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got [{low}, {high}]")
    return Ratio(str(a), str(b), float(low), float(high), str(metric))


def _check(function: str, relation: str = "<=", tol: float = 0.0) -> Rule:
    from dmarl.bench.claim_checks import CHECKS

    if function not in CHECKS:
        raise ValueError(f"unknown check {function!r} (known: {', '.join(sorted(CHECKS))})")
    if relation not in ("<=", ">=", "=="):
        raise ValueError(f"relation must be '<=', '>=' or '==', got {relation!r}")
    return Check(str(function), relation, float(tol))


RULES = {
    "at_least": _at_least, "at_most": _at_most, "better": _better, "worse": _worse,
    "similar": _similar, "ratio": _ratio, "check": _check,
}


def parse_rule(item: Claim) -> Rule:
    """The rule of a claim: one call of a known rule with literal arguments."""
    where = f"claim {item.id!r}: rule {item.rule!r}"
    try:
        node = ast.parse(item.rule.strip(), mode="eval").body
    except SyntaxError as err:
        raise UserError(f"{where} is not a call like at_least('label', 0.95) ({err.msg})") from err
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise UserError(f"{where} must be one call like at_least('label', 0.95)")
    name = node.func.id
    if name not in RULES:
        raise UserError(f"{where}: unknown rule {name!r} (known: {', '.join(RULES)})")
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
    except ValueError as err:
        raise UserError(f"{where}: arguments must be literals (strings, numbers)") from err
    try:
        return RULES[name](*args, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: {err}") from err


# --------------------------------------------------------------------------- labels and data


def known_labels(bench: Benchmark) -> set[str]:
    """Labels a rule may name: algorithm labels (when they ran on one task) and 'label@task'."""
    from dmarl.bench.spec import expand

    tasks: dict[str, set[str]] = {}
    for cell in expand(bench):
        tasks.setdefault(cell.algorithm, set()).add(cell.task)
    labels = {f"{a}@{t}" for a, ts in tasks.items() for t in ts}
    labels |= {a for a, ts in tasks.items() if len(ts) == 1}
    return labels


def validate_claims(bench: Benchmark) -> list[tuple[Claim, Rule]]:
    """Parse every claim's rule and check the labels it names; UserError naming the claim."""
    claims = list(getattr(bench, "claims", ()) or ())
    ids = [c.id for c in claims]
    duplicate = sorted({i for i in ids if ids.count(i) > 1})
    if duplicate:
        raise UserError(f"{bench.source or bench.name}: claim ids must be distinct, repeated: {duplicate}")
    known = known_labels(bench) if any(parse_rule(c).labels() for c in claims) else set()
    parsed = []
    for item in claims:
        rule = parse_rule(item)
        for label in rule.labels():
            if label not in known:
                import difflib

                near = difflib.get_close_matches(label, sorted(known), n=3, cutoff=0.4)
                hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
                raise UserError(
                    f"{bench.source or bench.name}: claim {item.id!r}: rule {item.rule!r} names label {label!r}, "
                    f"which no comparison of benchmark {bench.name!r} declares{hint} "
                    f"(labels: {', '.join(sorted(known)) or 'none'})"
                )
        parsed.append((item, rule))
    return parsed


def _history_mean(client: Any, run_id: str, metric: str) -> float | None:
    values = [m.value for m in client.get_metric_history(run_id, metric) if math.isfinite(m.value)]
    return sum(values) / len(values) if values else None


def collect_data(experiment: str, metrics: Sequence[str], tracking_uri: str | None = None) -> tuple[Data, list[str]]:
    """Per-seed values of each metric by label (and 'label@task') from the experiment's
    finished cell runs (:func:`dmarl.bench.leaderboard.collect`), and its issues as lines."""
    from dmarl.bench.leaderboard import collect
    from dmarl.bench.sweep import mlflow_client

    found = collect(experiment, tracking_uri)
    client = mlflow_client(found.tracking_uri)
    tasks: dict[str, set[str]] = {}
    for run in found.runs:
        tasks.setdefault(run.algorithm, set()).add(run.task)
    data: Data = {}
    for run in sorted(found.runs, key=lambda r: (r.algorithm, r.task, r.seed)):
        values = {}
        for metric in metrics:
            value = run.final if metric == FINAL_METRIC else _history_mean(client, run.run_id, metric)
            if value is not None:
                values[metric] = value
        names = [f"{run.algorithm}@{run.task}"] + ([run.algorithm] if len(tasks[run.algorithm]) == 1 else [])
        for name in names:
            for metric, value in values.items():
                data.setdefault(name, {}).setdefault(metric, ())
                data[name][metric] = data[name][metric] + (float(value),)
    issues = [f"{i.key}: {i.state}{f' — {i.detail}' if i.detail else ''}" for i in found.issues]
    return data, issues


def evaluate_claims(parsed: Sequence[tuple[Claim, Rule]], data: Data, command: str) -> list[dict[str, Any]]:
    """Each claim with its verdict, measured numbers and command, JSON-ready."""
    out = []
    for item, rule in parsed:
        result = rule.evaluate(data)
        out.append({**asdict(item), "command": item.command or command, "verdict": result.verdict,
                    "measured": result.measured, "comparison": result.comparison})
    return out


def bench_command(bench: Benchmark, binds: Sequence[str] = (), experiment: str | None = None) -> str:
    """The ``dmarl bench`` command line that measured the claims: the gin path relative to the
    working directory (else the repository) when inside it, with the extra ``--bind``s."""
    import shlex

    from dmarl.bench.spec import REPO_ROOT

    path = Path(bench.source).resolve() if bench.source else Path(f"{bench.name}.gin")
    for root in (Path.cwd(), REPO_ROOT):
        try:
            path = path.relative_to(root)
            break
        except ValueError:
            continue
    def quote(arg: str) -> str:  # bindings hold single quotes: prefer "..." to shlex's '"'"'
        if shlex.quote(arg) == arg or any(c in arg for c in '"$`\\!'):
            return shlex.quote(arg)
        return f'"{arg}"'

    parts = ["dmarl", "bench", str(path)] + [x for b in binds for x in ("--bind", b)]
    if experiment and experiment != bench.name:
        parts += ["--experiment", experiment]
    return " ".join(quote(p) for p in parts)


def write_claims(
    bench: Benchmark,
    experiment: str,
    out_dir: str | Path,
    *,
    tracking_uri: str | None = None,
    wall_s: float | None = None,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Evaluate the benchmark's claims on its experiment's runs, write its section
    ``<out_dir>/<benchmark>.json`` and re-assemble the page from every section there.
    ``command``: the command line that ran the benchmark (default: ``dmarl bench <gin>``)."""
    parsed = validate_claims(bench)
    command = command or bench_command(bench, experiment=experiment)
    metrics = sorted({m for _, rule in parsed for m in rule.metric_names()})
    data: Data = {}
    issues: list[str] = []
    if any(rule.labels() for _, rule in parsed):
        try:
            data, issues = collect_data(experiment, metrics, tracking_uri)
        except UserError as err:  # no store or experiment yet: its training claims are "not run"
            issues = [f"no runs: {err}; run `{command}`"]
    results = evaluate_claims(parsed, data, command)
    section = {
        "benchmark": bench.name,
        "description": bench.description,
        "source": bench_command(bench).split(" ", 2)[-1],
        "command": command,
        "experiment": experiment,
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": wall_s,
        "issues": issues,
        "claims": results,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{bench.name}.json").write_text(json.dumps(section, indent=1, default=float) + "\n")
    write_page(out)
    return results


# --------------------------------------------------------------------------- the page


def load_sections(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every claims section in ``out_dir`` (one JSON per claims benchmark), by name."""
    sections = []
    for path in sorted(Path(out_dir).glob("*.json")):
        try:
            section = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not a claims section ({err})") from err
        if isinstance(section, dict) and "claims" in section:
            sections.append(section)
    return sections


def measured_text(entry: dict[str, Any]) -> str:
    """One measured sample as text: mean ± std, 95% CI, n seeds and the per-seed values (up to
    10), or a check's value."""
    if entry.get("metric") == "check":
        se = f" ± {entry['se']:.2g}" if entry.get("se") else ""
        return f"{entry['value']:.6g}{se} (reference {entry['reference']:.6g}); {entry.get('detail', '')}"
    metric = "" if entry["metric"] == FINAL_METRIC else f" {entry['metric']}"
    values = entry.get("values", [])
    per_seed = f" ({', '.join(_fmt(v) for v in values)})" if 0 < len(values) <= 10 else ""
    return (f"{entry['label']}{metric}: {_fmt(entry['mean'])} ± {_fmt(entry['std'])}, "
            f"95% CI {_ci(entry['ci_low'], entry['ci_high'])}, n = {entry['n']} seeds{per_seed}")


def _counts(sections: Sequence[dict[str, Any]]) -> str:
    claims = [c for s in sections for c in s["claims"]]
    return ", ".join(f"{sum(c['verdict'] == v for c in claims)} {v}" for v in VERDICTS)


def _wall(section: dict[str, Any]) -> str:
    wall = section.get("wall_s")
    return f"; sweep wall time {wall / 60:.1f} min (its parent run's first start to last end)" if wall else ""


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(sections: Sequence[dict[str, Any]]) -> str:
    """The claims page as markdown."""
    out = [
        "# Paper claims measured on a CPU",
        "",
        "Each claim: the paper and what it reports, what this suite measured (per-seed "
        f"`{FINAL_METRIC}` unless another metric is named: mean ± std, 95 % bootstrap CI of the mean, "
        "seeds), and a verdict computed by the claim's rule from those numbers "
        "(`dmarl/bench/claims.py`): reproduced / direction only / not reproduced / not run.",
        "",
        f"Verdicts: {_counts(sections)}.",
        "",
        "| claim | paper | paper reports | verdict | benchmark |",
        "|---|---|---|---|---|",
    ]
    for section in sections:
        for c in section["claims"]:
            out.append(f"| [{_md(c['id'])}](#{c['id']}) | {_md(c['paper'])} | {_md(c['reported'])} | "
                       f"**{c['verdict']}** | {_md(section['benchmark'])} |")
    for section in sections:
        out += ["", f"## {section['benchmark']}", "",
                f"{section.get('description', '')} Generated {section['generated']} from MLflow experiment "
                f"`{section['experiment']}` (`{section['source']}`){_wall(section)}. "
                f"Command: `{section.get('command', '')}`", ""]
        if section.get("issues"):
            out += ["Missing or failed cells:", ""] + [f"- {_md(i)}" for i in section["issues"]] + [""]
        for c in section["claims"]:
            out += [
                f'### <a id="{c["id"]}"></a>{c["id"]}: {c["verdict"]}',
                "",
                f"- **Paper:** {c['paper']}: {c['statement']}",
                f"- **Paper reports:** {c['reported']}",
                "- **Measured:** " + ("not run (no finished run of its labels)" if not c["measured"] else
                                      "; ".join(measured_text(m) for m in c["measured"])),
            ]
            if c.get("comparison"):
                out.append(f"- **Comparison:** {c['comparison']}")
            out += [f"- **Rule:** `{c['rule']}` → **{c['verdict']}**", f"- **Command:** `{c['command']}`"]
            if c.get("note"):
                out.append(f"- **Note:** {c['note']}")
            out.append("")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f2f2f2}.note{color:#555}code{background:#f6f6f6;padding:0 .2em}
.v{font-weight:bold;padding:.1em .4em;border-radius:3px}.reproduced{background:#d9f2d9}
.direction-only{background:#fff3cd}.not-reproduced{background:#f8d7da}.not-run{background:#e2e3e5}
dl{margin:.3em 0 1.2em}dt{font-weight:bold;float:left;clear:left;width:9em}dd{margin-left:9.5em}
"""


def _verdict_html(verdict: str) -> str:
    return f'<span class="v {verdict.replace(" ", "-")}">{html.escape(verdict)}</span>'


def html_page(sections: Sequence[dict[str, Any]]) -> str:
    """The claims page as one self-contained HTML file."""
    e = html.escape
    rows = "".join(
        f'<tr><td><a href="#{e(c["id"])}">{e(c["id"])}</a></td><td>{e(c["paper"])}</td><td>{e(c["reported"])}</td>'
        f"<td>{_verdict_html(c['verdict'])}</td><td>{e(s['benchmark'])}</td></tr>"
        for s in sections for c in s["claims"]
    )
    parts = [
        "<h1>Paper claims measured on a CPU</h1>",
        f'<p class="note">Measured: per-seed <code>{FINAL_METRIC}</code> unless another metric is named; '
        "mean ± std, 95 % bootstrap CI of the mean, seeds. Verdicts are computed by each claim's rule "
        f"(<code>dmarl/bench/claims.py</code>). {e(_counts(sections))}.</p>",
        "<table><thead><tr><th>claim</th><th>paper</th><th>paper reports</th><th>verdict</th><th>benchmark</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>",
    ]
    for s in sections:
        parts.append(f"<h2>{e(s['benchmark'])}</h2><p class=\"note\">{e(s.get('description', ''))} Generated "
                     f"{e(s['generated'])} from MLflow experiment <code>{e(s['experiment'])}</code> "
                     f"(<code>{e(s['source'])}</code>){e(_wall(s))}. Command: "
                     f"<code>{e(s.get('command', ''))}</code></p>")
        if s.get("issues"):
            parts.append("<p>Missing or failed cells:</p><ul>" + "".join(f"<li>{e(i)}</li>" for i in s["issues"]) + "</ul>")
        for c in s["claims"]:
            measured = ("not run (no finished run of its labels)" if not c["measured"]
                        else "<br>".join(e(measured_text(m)) for m in c["measured"]))
            items = [("Paper", e(f"{c['paper']}: {c['statement']}")), ("Paper reports", e(c["reported"])),
                     ("Measured", measured)]
            if c.get("comparison"):
                items.append(("Comparison", e(c["comparison"])))
            items += [("Rule", f"<code>{e(c['rule'])}</code> → {_verdict_html(c['verdict'])}"),
                      ("Command", f"<code>{e(c['command'])}</code>")]
            if c.get("note"):
                items.append(("Note", e(c["note"])))
            parts.append(f'<h3 id="{e(c["id"])}">{e(c["id"])} {_verdict_html(c["verdict"])}</h3><dl>'
                         + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Paper claims</title>"
            f"<style>{_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")


def write_page(out_dir: str | Path) -> list[Path]:
    """(Re)write ``index.md`` and ``index.html`` from every section in ``out_dir``."""
    out = Path(out_dir)
    sections = load_sections(out)
    (out / "index.md").write_text(markdown(sections) + "\n")
    (out / "index.html").write_text(html_page(sections))
    return [out / "index.md", out / "index.html"]


def sweep_wall_s(experiment: str, bench_name: str, tracking_uri: str | None = None) -> float | None:
    """Seconds between the benchmark's parent run's start and end (its latest invocation)."""
    from dmarl.bench.sweep import BENCH_TAG, ROLE_TAG, mlflow_client, resolve_tracking_uri, store_exists

    uri = resolve_tracking_uri(tracking_uri)
    if not store_exists(uri):  # do not create a store just to look
        return None
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'parent' and tags.`{BENCH_TAG}` = '{bench_name}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not found or not found[0].info.end_time:
        return None
    return (found[0].info.end_time - found[0].info.start_time) / 1000.0
