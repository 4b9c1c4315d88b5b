"""Leaderboard from a hand-made MLflow experiment: tables, aggregate, sample efficiency,
reported numbers kept apart, missing/failed cells named, HTML/PNG/marl-eval outputs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from dmarl import cli
from dmarl.bench import sweep
from dmarl.bench.leaderboard import build_leaderboard

# (algorithm, task) -> final score per seed; every run evaluates at steps 100 and 200, and
# logs its final score at step 300.
FINALS = {
    ("base", "t1"): [4.0, 5.0, 6.0],
    ("new", "t1"): [7.0, 8.0, 9.0],
    ("base", "t2"): [2.0, 2.0, 2.0],
    ("new", "t2"): [3.0, 4.0],
}
EVALS = {"base": (1.0, 3.0), "new": (2.0, 6.0)}
PLANNED = [f"{a}|{t}|{s}" for a in ("base", "new") for t in ("t1", "t2") for s in (0, 1, 2)] + ["new|t1|3", "base|t1|3"]


def _cell_run(client: MlflowClient, exp: str, parent: str, key: str, status: str) -> str:
    algorithm, task, seed = key.split("|")
    tags = {
        sweep.CELL_TAG: key, sweep.ALGORITHM_TAG: algorithm, sweep.TASK_TAG: task, sweep.SEED_TAG: seed,
        "mlflow.parentRunId": parent, "algorithm": algorithm, "task": f"toy/{task}",
    }
    run_id = client.create_run(exp, run_name=key, tags=tags).info.run_id
    if status != "RUNNING":
        client.set_terminated(run_id, status=status)
    return run_id


def populate(uri: str, name: str, artifacts: Path) -> None:
    client = MlflowClient(uri)
    exp = client.create_experiment(name, artifact_location=artifacts.as_uri())
    parent = client.create_run(exp, run_name=name, tags={sweep.ROLE_TAG: "parent", sweep.BENCH_TAG: name}).info.run_id
    spec = {
        "name": name,
        "comparisons": [{"name": "main", "baselines": ["base"]}],
        "cells": [{"key": k, "comparison": "main", "algorithm": k.split("|")[0], "task": k.split("|")[1]} for k in PLANNED],
    }
    client.log_dict(parent, spec, sweep.SPEC_ARTIFACT)
    for (algorithm, task), finals in FINALS.items():
        for seed, final in enumerate(finals):
            run_id = _cell_run(client, exp, parent, f"{algorithm}|{task}|{seed}", "RUNNING")
            metrics = [Metric("eval/return_mean", v, 0, step) for step, v in zip((100, 200), EVALS[algorithm])]
            client.log_batch(run_id, metrics=[*metrics, Metric("final/return_mean", final, 0, 300)])
            client.set_terminated(run_id, status="FINISHED")
    failed = _cell_run(client, exp, parent, "new|t2|2", "FAILED")
    client.set_tag(failed, sweep.FAILURE_TAG, "RuntimeError: boom")
    _cell_run(client, exp, parent, "base|t1|3", "RUNNING")
    client.set_terminated(parent, status="FAILED")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """One experiment shared by the tests of this module (they only read it)."""
    root = tmp_path_factory.mktemp("lb")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    populate(uri, "lb", root / "artifacts")
    return {"root": root, "uri": uri}


@pytest.fixture
def board_inputs(store: dict[str, Path | str], tmp_path: Path) -> dict[str, Path | str]:
    workdir = tmp_path
    refs = workdir / "refs.json"
    refs.write_text(json.dumps({"version": "test-3", "tasks": {
        "t1": {"random": 0.0, "expert": 10.0, "source": "test"},
        "toy/t2": {"random": 0.0, "expert": 5.0, "source": "test"},  # matched through the run's task tag
    }}))
    reported = workdir / "reported"
    reported.mkdir()
    (reported / "papers.csv").write_text(
        "task,algorithm,mean,std,steps,source\n"
        "t1,new,7.5,0.5,1e6,Paper A (2025) Table 1\n"
        "t1,other,3.0,1.0,1e6,Paper B (2024) Table 4\n"
    )
    return {"refs": refs, "reported": reported, "out": workdir / "out", "uri": store["uri"]}


def test_leaderboard_statistics_and_files(board_inputs: dict[str, Path | str]) -> None:
    out = board_inputs["out"]
    board = build_leaderboard(
        "lb", out, tracking_uri=board_inputs["uri"], references=board_inputs["refs"], reported_dir=board_inputs["reported"]
    )
    with (out / "leaderboard.csv").open() as handle:
        rows = {(r["task"], r["algorithm"]): r for r in csv.DictReader(handle)}
    new_t1, base_t1 = rows[("t1", "new")], rows[("t1", "base")]
    assert float(new_t1["mean"]) == pytest.approx(8.0) and float(new_t1["std"]) == pytest.approx(1.0)
    assert float(new_t1["normalised_mean"]) == pytest.approx(80.0)
    assert float(base_t1["normalised_mean"]) == pytest.approx(50.0)
    assert float(new_t1["ci_low"]) <= 8.0 <= float(new_t1["ci_high"])
    # target = best baseline's final score (5.0); base reaches it at its final point (300),
    # new at 200 -> speed-up 1.5.
    assert float(new_t1["target"]) == pytest.approx(5.0)
    assert float(new_t1["steps_to_target"]) == 200 and float(new_t1["speedup"]) == pytest.approx(1.5)
    assert base_t1["baseline"] == "True" and float(base_t1["steps_to_target"]) == 300
    assert new_t1["reported_mean"] == "7.5" and new_t1["reported_source"] == "Paper A (2025) Table 1"
    assert base_t1["reported_mean"] == ""
    assert rows[("t2", "new")]["seeds"] == "2"

    aggregate = {a.algorithm: a for a in board.aggregate}
    # new: t1 (70 80 90) + t2 (60 80) -> IQM of 60 70 80 80 90 = mean(70, 80, 80)
    assert aggregate["new"].iqm.value == pytest.approx(230 / 3)
    assert aggregate["base"].iqm.value == pytest.approx(42.5)
    assert board.aggregate_tasks == ["t1", "t2"]
    assert board.improvement[("new", "base")].value == pytest.approx(1.0)
    assert board.improvement[("base", "new")].value == pytest.approx(0.0)

    issues = {i.key: i for i in board.issues}
    assert issues["new|t1|3"].state == "missing"
    assert issues["new|t2|2"].state == "failed" and issues["new|t2|2"].detail == "RuntimeError: boom"
    assert issues["base|t1|3"].state == "interrupted"

    md = (out / "leaderboard.md").read_text()
    assert "## Missing or failed cells" in md and "new|t2|2: failed — RuntimeError: boom" in md
    assert "reported in paper (not measured here)" in md and "7.5 ± 0.5 @ 1e6 (Paper A (2025) Table 1)" in md
    assert "Reported in papers for algorithms not run here" in md and "| other | 3 |" in md
    assert "version test-3" in md

    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # two tasks + aggregate
    assert "<script>" in page and "sortable" in page and 'class="reported"' in page
    assert "src=\"http" not in page and "href=\"http" not in page
    for png in ("curves/t1.png", "curves/t2.png", "aggregate.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    with (out / "aggregate.csv").open() as handle:
        assert [r["algorithm"] for r in csv.DictReader(handle)] == ["new", "base"]

    exported = json.loads((out / "marl_eval.json").read_text())
    run0 = exported["lb"]["t1"]["new"]["run_0"]
    assert run0["step_0"] == {"step_count": 100, "return": [2.0]}
    assert run0["step_2"] == {"step_count": 300, "return": [7.0]}
    assert run0["absolute_metrics"] == {"return": [7.0]}
    assert sorted(exported["lb"]["t2"]["new"]) == ["run_0", "run_1"]


def test_intervals_are_reproducible_and_baseline_can_be_overridden(board_inputs: dict[str, Path | str]) -> None:
    kwargs = {
        "tracking_uri": board_inputs["uri"], "references": board_inputs["refs"], "reported_dir": board_inputs["reported"]
    }
    first = build_leaderboard("lb", board_inputs["out"], **kwargs)
    second = build_leaderboard("lb", board_inputs["out"], **kwargs)
    assert [r.summary for t in first.tasks for r in t.rows] == [r.summary for t in second.tasks for r in t.rows]
    flipped = build_leaderboard("lb", board_inputs["out"], baselines=["new"], **kwargs)
    t1 = next(t for t in flipped.tasks if t.task == "t1")
    assert t1.efficiency.reference == "new" and t1.efficiency.target == pytest.approx(8.0)


def test_leaderboard_command(board_inputs: dict[str, Path | str], capsys: pytest.CaptureFixture[str]) -> None:
    out = board_inputs["out"]
    code = cli.main([
        "leaderboard", "--experiment", "lb", "--out", str(out), "--references", str(board_inputs["refs"]),
        "--reported", str(board_inputs["reported"]), "--resamples", "500", "--tracking-uri", board_inputs["uri"],
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "missing: new|t1|3" in printed and "failed: new|t2|2" in printed
    assert (out / "index.html").is_file()
    assert cli.main(["leaderboard", "--experiment", "nope", "--out", str(out), "--tracking-uri", board_inputs["uri"]]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
