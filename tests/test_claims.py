"""The claims page: verdict rules on synthetic numbers (every verdict reachable, edge cases),
rule and label errors that name the claim, the check claims, and the page written from
synthetic MLflow runs on a temporary sqlite store (several sections assembled into one page)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from dmarl.bench import claim_checks, claims, sweep
from dmarl.bench.claims import DIRECTION, NOT_REPRODUCED, NOT_RUN, REPRODUCED, Claim, parse_rule
from dmarl.bench.spec import load_benchmark
from dmarl.errors import UserError

FINAL, TIME = claims.FINAL_METRIC, claims.TIME_METRIC


def rule(text: str, name: str = "c1") -> claims.Rule:
    return parse_rule(Claim(id=name, paper="P", statement="s", reported="r", rule=text))


def data(**labels: list[float]) -> claims.Data:
    return {label.replace("_", "."): {FINAL: tuple(v)} for label, v in labels.items()}


def verdict(text: str, d: claims.Data) -> str:
    return rule(text).evaluate(d).verdict


# -- thresholds ---------------------------------------------------------------------------
def test_thresholds_read_the_seed_mean_and_include_the_boundary() -> None:
    d = data(a=[0.9, 1.0, 1.0, 0.95, 0.95])  # mean 0.96
    assert verdict("at_least('a', 0.95)", d) == REPRODUCED
    assert verdict("at_least('a', 0.97)", d) == NOT_REPRODUCED
    assert verdict("at_most('a', 0.96)", data(a=[0.96, 0.96])) == REPRODUCED  # boundary counts
    assert verdict("at_most('a', 0.6)", d) == NOT_REPRODUCED
    # a single seed above the threshold does not lift a mean below it
    assert verdict("at_least('a', 0.95)", data(a=[1.0, 1.0, 1.0, 1.0, 0.0])) == NOT_REPRODUCED
    result = rule("at_least('a', 0.95)").evaluate(d)
    (m,) = result.measured
    assert (m["n"], m["mean"], m["std"]) == (5, pytest.approx(0.96), pytest.approx(np.std([0.9, 1, 1, .95, .95], ddof=1)))
    assert m["ci_low"] <= 0.96 <= m["ci_high"]


# -- better / worse -----------------------------------------------------------------------
def test_better_reproduced_direction_only_and_not_reproduced() -> None:
    base = [0.0, 0.1, -0.1, 0.05, -0.05]
    far = [v + 1.0 for v in base]
    near = [0.3, -0.4, 0.5, -0.2, 0.1]  # mean 0.06 > 0 but the CI of the difference straddles 0
    assert verdict("better('x', 'y')", data(x=far, y=base)) == REPRODUCED
    assert verdict("better('x', 'y')", data(x=near, y=base)) == DIRECTION
    assert verdict("better('x', 'y')", data(x=base, y=far)) == NOT_REPRODUCED
    assert verdict("better('x', 'y')", data(x=base, y=base)) == NOT_REPRODUCED  # ties go against the paper
    # worse(a, b) is better(b, a), with the page listing a first as written
    assert verdict("worse('y', 'x')", data(x=far, y=base)) == REPRODUCED
    assert verdict("worse('x', 'y')", data(x=far, y=base)) == NOT_REPRODUCED
    result = rule("worse('y', 'x')").evaluate(data(x=far, y=base))
    assert [m["label"] for m in result.measured] == ["y", "x"]
    assert "mean(x) - mean(y) = 1" in result.comparison and "P(x > y) = 1.00" in result.comparison


def test_better_with_one_seed_has_no_interval_so_at_most_direction_only() -> None:
    assert verdict("better('x', 'y')", data(x=[5.0], y=[1.0])) == DIRECTION
    assert verdict("better('x', 'y')", data(x=[5.0], y=[1.0, 1.1])) == DIRECTION


def test_difference_interval_is_the_bootstrap_of_the_difference_of_means() -> None:
    from dmarl.bench import stats

    rng = np.random.default_rng(0)
    x, y = rng.normal(1.0, 1.0, 5), rng.normal(0.0, 1.0, 5)
    result = rule("better('x', 'y')").evaluate({"x": {FINAL: tuple(x)}, "y": {FINAL: tuple(y)}})
    low, high = stats.DEFAULT_BOOTSTRAP.ci([x, y], lambda a, b, axis=-1: a.mean(axis) - b.mean(axis))
    assert f"95% CI [{low:.4g}, {high:.4g}]" in result.comparison
    assert low < x.mean() - y.mean() < high


# -- similar ------------------------------------------------------------------------------
def test_similar_is_an_equivalence_test_with_a_tolerance() -> None:
    base = [-50.0, -50.5, -49.5, -50.2, -49.8]
    close = [v + 0.3 for v in base]
    noisy = [-44.0, -56.0, -47.0, -53.0, -49.0]  # mean -49.8: within tol, CI far wider
    off = [v - 5.0 for v in base]
    assert verdict("similar('x', 'y', 3.0)", data(x=close, y=base)) == REPRODUCED
    assert verdict("similar('x', 'y', 3.0)", data(x=noisy, y=base)) == DIRECTION
    assert verdict("similar('x', 'y', 3.0)", data(x=off, y=base)) == NOT_REPRODUCED
    assert verdict("similar('x', 'y', 3.0)", data(x=[v + 10 for v in base], y=base)) == NOT_REPRODUCED
    assert verdict("similar('x', 'y', 0.0)", data(x=[1.0, 1.0], y=[1.0, 1.0])) == REPRODUCED  # identical


# -- ratio --------------------------------------------------------------------------------
def test_ratio_of_a_timing_metric() -> None:
    def timed(a: list[float], b: list[float]) -> claims.Data:
        return {"h8": {TIME: tuple(a)}, "h2": {TIME: tuple(b)}}

    h2 = [10.0, 10.5, 9.5, 10.2, 9.8]
    text = "ratio('h8', 'h2', 2, 8)"
    assert verdict(text, timed([40.0, 41.0, 39.0, 40.5, 39.5], h2)) == REPRODUCED
    assert verdict(text, timed([12.0, 90.0, 15.0, 14.0, 80.0], h2)) == DIRECTION  # ratio 4.2, CI [1.3, 7.2]
    assert verdict(text, timed([11.0, 10.0, 10.5, 9.0, 10.0], h2)) == NOT_REPRODUCED  # no growth in H
    assert verdict(text, timed([200.0, 210.0, 190.0, 205.0, 195.0], h2)) == NOT_REPRODUCED  # much worse than linear
    # the rule reads time/update_ms, not the score
    assert verdict(text, {"h8": {FINAL: (1.0,)}, "h2": {FINAL: (1.0,)}}) == NOT_RUN
    assert rule(text).metric_names() == (TIME,)


# -- not run ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["at_least('a', 1)", "better('a', 'b')", "similar('b', 'a', 1)", "ratio('a', 'b', 1, 2)"])
def test_missing_data_is_not_run(text: str) -> None:
    assert verdict(text, data(b=[1.0, 2.0])) == NOT_RUN
    assert rule(text).evaluate(data(b=[1.0, 2.0])).measured == []


# -- check --------------------------------------------------------------------------------
def test_check_relations_reach_every_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    numbers = {"v": claim_checks.CheckNumbers(value=1.0, reference=1.0, se=0.1)}
    monkeypatch.setitem(claim_checks.CHECKS, "fake", lambda: numbers["v"])
    cases = [  # (value, relation, tol, verdict); se 0.1 -> slack 0.3
        (0.5, "<=", 0.0, REPRODUCED), (1.2, "<=", 0.0, DIRECTION), (1.5, "<=", 0.0, NOT_REPRODUCED),
        (1.5, "<=", 0.6, REPRODUCED), (1.5, ">=", 0.0, REPRODUCED), (0.8, ">=", 0.0, DIRECTION),
        (0.5, ">=", 0.0, NOT_REPRODUCED), (1.25, "==", 0.0, REPRODUCED), (1.5, "==", 0.0, NOT_REPRODUCED),
    ]
    for value, relation, tol, expected in cases:
        numbers["v"] = claim_checks.CheckNumbers(value=value, reference=1.0, se=0.1)
        assert verdict(f"check('fake', '{relation}', {tol})", {}) == expected, (value, relation, tol)
    numbers["v"] = claim_checks.CheckNumbers(value=1.0 + 1e-6, reference=1.0, se=0.0)
    assert verdict("check('fake', '==', 1e-9)", {}) == NOT_REPRODUCED  # exact checks get no slack


def test_the_papers_checks_hold_and_match_their_closed_forms() -> None:
    assert verdict("check('mode_shift_enumerated', '==', 1e-9)", {}) == REPRODUCED
    assert verdict("check('mode_shift_sampled', '==', 0.01)", {}) == REPRODUCED
    bound = claim_checks.omad_entropy_bound()
    assert bound.value < bound.reference  # Theorem 1: the bound is below the true entropy ...
    expected = float(bound.detail.rsplit("= ", 1)[1])
    assert abs(bound.value - expected) < 4 * bound.se  # ... and equals its closed form
    assert verdict("check('omad_entropy_bound', '<=')", {}) == REPRODUCED
    # the closed form is the true entropy of a Gaussian when the chain is deterministic-free:
    _, var0, entropy, _ = claim_checks.linear_chain_entropy(claim_checks.LinearScore(0, 0, 0), np.full(4, 0.1), 1.0)
    assert entropy == pytest.approx(0.5 * math.log(2 * math.pi * math.e * var0))


# -- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("at_leest('a', 1)", "unknown rule 'at_leest'"),
        ("at_least(a, 1)", "literals"),
        ("at_least('a', 1", "not a call"),
        ("'a' > 1", "one call"),
        ("at_least('a')", "missing"),
        ("similar('a', 'b', -1)", "tol must be >= 0"),
        ("ratio('a', 'b', 3, 2)", "low <= high"),
        ("check('no_such_check')", "unknown check 'no_such_check'"),
        ("check('omad_entropy_bound', '<')", "relation"),
    ],
)
def test_bad_rules_name_the_claim(text: str, fragment: str) -> None:
    with pytest.raises(UserError, match="claim 'bad-claim'") as err:
        rule(text, "bad-claim")
    assert fragment in str(err.value)


BENCH = """
benchmark.name = '{name}'
benchmark.comparisons = [@main/comparison()]
benchmark.claims = [@c1/claim(), @c2/claim(), @c3/claim()]
main/comparison.seeds = 5
main/comparison.tasks = ['toy_bandit']
main/comparison.algorithms = {{'good': ['omsd'], 'bad': ['omsd', 'OMSD.beta = 0.5'], 'late': ['omsd', 'OMSD.beta = 0.7']}}
claim.paper = 'Paper (000) Table 1'
claim.reported = '1 +- 0'
c1/claim.id = 'good-high'
c1/claim.statement = 'good reaches 1'
c1/claim.rule = "{rule}"
c2/claim.id = 'good-beats-bad'
c2/claim.statement = 'good beats bad'
c2/claim.rule = "better('good', 'bad')"
c3/claim.id = 'late-high'
c3/claim.statement = 'late reaches 1'
c3/claim.rule = "at_least('late', 0.9)"
c3/claim.command = 'dmarl bench special.gin'
"""


def write_bench(tmp_path: Path, name: str = "claims_mini", rule_text: str = "at_least('good', 0.95)") -> Path:
    path = tmp_path / f"{name}.gin"
    path.write_text(BENCH.format(name=name, rule=rule_text))
    return path


def test_unknown_label_names_the_claim_and_the_label(tmp_path: Path) -> None:
    bench = load_benchmark(write_bench(tmp_path, rule_text="at_least('godo', 0.95)"))
    with pytest.raises(UserError) as err:
        claims.validate_claims(bench)
    message = str(err.value)
    assert "claim 'good-high'" in message and "'godo'" in message and "did you mean 'good'" in message


def test_bench_command_refuses_a_bad_label_before_training(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    from dmarl import cli

    path = write_bench(workdir, rule_text="better('good', 'nobody')")
    assert cli.main(["bench", str(path)]) == 2
    err = capsys.readouterr().err
    assert "claim 'good-high'" in err and "'nobody'" in err
    assert not (workdir / "mlflow.db").exists()  # nothing ran


def test_duplicate_claim_ids_are_refused(tmp_path: Path) -> None:
    path = write_bench(tmp_path)
    path.write_text(path.read_text().replace("c3/claim.id = 'late-high'", "c3/claim.id = 'good-high'"))
    with pytest.raises(UserError, match="repeated: \\['good-high'\\]"):
        claims.validate_claims(load_benchmark(path))


# -- the page from MLflow runs ------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module (creating one costs seconds); tests use own experiments."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


def log_cells(uri: str, experiment: str, scores: dict[str, list[float]], failed: tuple[str, ...] = ()) -> None:
    """Cell runs as the sweep leaves them: tags, final score, a timing history."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    for label, values in scores.items():
        for seed, value in enumerate(values):
            key = f"{label}|toy_bandit|{seed}"
            tags = {sweep.CELL_TAG: key, sweep.ALGORITHM_TAG: label, sweep.TASK_TAG: "toy_bandit",
                    sweep.SEED_TAG: str(seed), sweep.BENCH_TAG: experiment}
            run_id = client.create_run(exp_id, tags=tags).info.run_id
            if key in failed:
                client.set_tag(run_id, sweep.FAILURE_TAG, "forced crash")
                client.set_terminated(run_id, status="FAILED")
                continue
            for step, ms in enumerate((10.0, 12.0, 14.0)):
                client.log_metric(run_id, TIME, ms, step=step)
            client.log_metric(run_id, FINAL, value, step=100)
            client.set_terminated(run_id, status="FINISHED")


def test_page_from_mlflow_runs_and_sections_assemble(workdir: Path, store: str) -> None:
    uri = store
    bench = load_benchmark(write_bench(workdir))
    log_cells(uri, "claims_mini", {"good": [1.0, 0.99, 0.98, 1.0, 0.97], "bad": [0.1, 0.2, 0.0, 0.1, 0.15],
                                   "late": [0.5]}, failed=("late|toy_bandit|0",))
    out = workdir / "leaderboards" / "claims"
    results = claims.write_claims(bench, "claims_mini", out, tracking_uri=uri, wall_s=150.0)
    assert [(r["id"], r["verdict"]) for r in results] == [
        ("good-high", REPRODUCED), ("good-beats-bad", REPRODUCED), ("late-high", NOT_RUN)]
    section = json.loads((out / "claims_mini.json").read_text())
    assert section["benchmark"] == "claims_mini" and section["wall_s"] == 150.0
    assert any("late|toy_bandit|0: failed" in i and "forced crash" in i for i in section["issues"])
    good = section["claims"][0]["measured"][0]
    assert good["n"] == 5 and good["values"] == [1.0, 0.99, 0.98, 1.0, 0.97]
    assert good["mean"] == pytest.approx(0.988)
    assert section["claims"][0]["command"] == "dmarl bench claims_mini.gin"  # relative to the cwd
    assert section["claims"][2]["command"] == "dmarl bench special.gin"

    md = (out / "index.md").read_text()
    assert "good: 0.988 ± 0.01304, 95% CI [" in md and "n = 5 seeds (1, 0.99, 0.98, 1, 0.97)" in md
    assert "**reproduced**" in md and "not run" in md and "Paper (000) Table 1" in md and "1 +- 0" in md
    assert "sweep wall time 2.5 min" in md and "better('good', 'bad')" in md
    page = (out / "index.html").read_text()
    assert 'class="v reproduced"' in page and 'class="v not-run"' in page and "forced crash" in page

    # a second claims gin with its own experiment adds a section; the first is kept
    other = load_benchmark(write_bench(workdir, "claims_other", "at_most('good', 0.5)"))
    log_cells(uri, "claims_other", {"good": [0.9, 0.8], "bad": [1.0, 1.0], "late": [0.95, 0.92]})
    claims.write_claims(other, "claims_other", out, tracking_uri=uri)
    md = (out / "index.md").read_text()
    assert "## claims_mini" in md and "## claims_other" in md
    assert md.count("| [good-high](#good-high)") == 2
    assert "Verdicts: 3 reproduced, 0 direction only, 2 not reproduced, 1 not run." in md


def test_timing_metric_is_the_mean_of_its_history(store: str) -> None:
    uri = store
    log_cells(uri, "timed", {"good": [1.0, 1.0], "bad": [0.0, 0.0]})
    got, issues = claims.collect_data("timed", [FINAL, TIME], uri)
    assert got["good"][TIME] == (12.0, 12.0) and got["good@toy_bandit"][FINAL] == (1.0, 1.0) and issues == []


def test_missing_experiment_leaves_training_claims_not_run_and_runs_checks(workdir: Path) -> None:
    path = write_bench(workdir)
    text = path.read_text().replace("@c3/claim()]", "@c3/claim(), @c4/claim()]")
    text += "c4/claim.id = 'prop'\nc4/claim.statement = 's'\nc4/claim.rule = \"check('mode_shift_enumerated', '==', 1e-9)\"\n"
    path.write_text(text)
    out = workdir / "claims"
    from dmarl import cli

    assert cli.main(["claims", str(path), "--out", str(out), "--tracking-uri", f"sqlite:///{workdir / 'none.db'}"]) == 0
    section = json.loads((out / "claims_mini.json").read_text())
    assert [c["verdict"] for c in section["claims"]] == [NOT_RUN, NOT_RUN, NOT_RUN, REPRODUCED]
    assert "no runs" in section["issues"][0]
    assert not (workdir / "none.db").exists()  # looking did not create a store


@pytest.mark.parametrize("name", ["claims_omsd", "claims_omad", "claims_omad_table3"])
def test_claims_gins_declare_valid_claims_with_five_seeds(name: str) -> None:
    bench = load_benchmark(Path(__file__).resolve().parents[1] / "gin" / "benchmarks" / f"{name}.gin")
    parsed = claims.validate_claims(bench)
    assert parsed and all(c.paper and c.reported and c.statement for c, _ in parsed)
    assert all(comp.seeds == (0, 1, 2, 3, 4) for comp in bench.comparisons)
    assert name == "claims_omad_table3" or any(isinstance(r, claims.Check) for _, r in parsed)


def test_command_line_round_trips_through_the_shell(tmp_path: Path) -> None:
    import shlex

    bench = load_benchmark(write_bench(tmp_path))
    binds = ["main/comparison.budget = {'OfflineRunner.total_updates': 40}", 'x.y = "z"', "main/comparison.seeds = 2"]
    command = claims.bench_command(bench, binds, "other")
    assert shlex.split(command)[3:] == [a for b in binds for a in ("--bind", b)] + ["--experiment", "other"]
    assert command.endswith("claims_mini.gin") is False and "\"main/comparison.budget = {'" in command
