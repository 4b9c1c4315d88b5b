"""Leaderboard from hand-made MLflow experiments: tables, aggregate, sample efficiency,
reported numbers kept apart, missing/failed cells named, HTML/PNG/marl-eval outputs; the
aggregate per comparison block, offline axes in updates, small-sample caveats, boards from
plain `dmarl train` runs and no empty board.

marl-eval (PyPI ``id-marl-eval``) pins pandas 1.4.4, which has no wheel for this Python, so it
is installed with ``pip install --no-deps id-marl-eval==0.0.4 colorama`` where available; its
``DiagnoseData`` (numpy + colorama only) then checks the exported JSON, and
`marl_eval_problems`, which re-implements those checks, is tested against it. Without the
library only `marl_eval_problems` runs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from dmarl import cli
from dmarl.bench import sweep
from dmarl.bench.leaderboard import build_leaderboard, curve_figure, marl_eval_problems

try:
    from marl_eval.utils.diagnose_data_errors import DiagnoseData
except ImportError:  # see the module docstring
    DiagnoseData = None

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


# A benchmark of two comparisons that share no task: online a vs b on MPE (3 seeds), offline
# c vs d on a toy dataset (5 seeds); (algorithm, comparison, task tag, dataset) -> finals.
MIXED = {
    ("a", "online", "mpe/x", ""): [6.0, 7.0, 8.0],
    ("b", "online", "mpe/x", ""): [2.0, 3.0, 4.0],
    ("c", "offline", "toy/y", "toy/y_data"): [0.9, 0.95, 1.0, 0.9, 0.95],
    ("d", "offline", "toy/y", "toy/y_data"): [0.1, 0.2, 0.3, 0.2, 0.1],
}


def _finished_run(client: MlflowClient, exp: str, tags: dict[str, str], final: float, evals: tuple[float, float]) -> str:
    run_id = client.create_run(exp, run_name=tags.get(sweep.CELL_TAG, "run"), tags=tags).info.run_id
    metrics = [Metric("eval/return_mean", v, 0, step) for step, v in zip((100, 200), evals)]
    client.log_batch(run_id, metrics=[*metrics, Metric("final/return_mean", final, 0, 300)])
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def populate_mixed(uri: str, name: str, artifacts: Path) -> None:
    client = MlflowClient(uri)
    exp = client.create_experiment(name, artifact_location=artifacts.as_uri())
    parent = client.create_run(exp, run_name=name, tags={sweep.ROLE_TAG: "parent", sweep.BENCH_TAG: name}).info.run_id
    cells = [
        {"key": f"{a}|{t.split('/')[1]}|{s}", "comparison": c, "algorithm": a, "task": t.split("/")[1]}
        for (a, c, t, _), finals in MIXED.items() for s in range(len(finals))
    ]
    spec = {"name": name, "cells": cells,
            "comparisons": [{"name": "online", "baselines": ["b"]}, {"name": "offline", "baselines": ["d"]}]}
    client.log_dict(parent, spec, sweep.SPEC_ARTIFACT)
    for (algorithm, comparison, task, dataset), finals in MIXED.items():
        for seed, final in enumerate(finals):
            tags = {
                sweep.CELL_TAG: f"{algorithm}|{task.split('/')[1]}|{seed}", sweep.ALGORITHM_TAG: algorithm,
                sweep.TASK_TAG: task.split("/")[1], sweep.SEED_TAG: str(seed), sweep.COMPARISON_TAG: comparison,
                "mlflow.parentRunId": parent, "algorithm": algorithm, "task": task,
            }
            if dataset:
                tags["dataset"] = dataset
            _finished_run(client, exp, tags, final, (final / 2, final))
    client.set_terminated(parent, status="FINISHED")


def populate_plain(uri: str, artifacts: Path) -> None:
    """`dmarl train` runs (tags algorithm/task/seed, no cell tag), an older duplicate of one
    triple, and an experiment whose only run failed."""
    client = MlflowClient(uri)
    exp = client.create_experiment("plain", artifact_location=artifacts.as_uri())
    tags = {"algorithm": "hasac", "task": "mpe/simple_spread_n3", "seed": "0"}
    _finished_run(client, exp, tags, -90.0, (-95.0, -90.0))  # superseded by the next run
    _finished_run(client, exp, tags, -60.0, (-70.0, -60.0))
    _finished_run(client, exp, {**tags, "algorithm": "omad"}, -50.0, (-55.0, -50.0))
    _finished_run(client, exp, {**tags, "algorithm": "omad", "seed": "1"}, -52.0, (-56.0, -52.0))
    dead = client.create_experiment("dead", artifact_location=artifacts.as_uri())
    client.set_terminated(client.create_run(dead, tags=tags).info.run_id, status="FAILED")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """The experiments shared by the tests of this module (they only read them)."""
    root = tmp_path_factory.mktemp("lb")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    populate(uri, "lb", root / "artifacts")
    populate_mixed(uri, "mixed", root / "artifacts")
    populate_plain(uri, root / "artifacts")
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
    (block,) = board.blocks
    assert block.name == "main" and block.tasks == ["t1", "t2"] and block.excluded == []
    assert block.improvement[("new", "base")].value == pytest.approx(1.0)
    assert block.improvement[("base", "new")].value == pytest.approx(0.0)
    assert block.improvement[("new", "base")].seeds == 2  # the fewest seeds of any (task, algorithm)

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
    assert list(exported) == ["toy"]  # the task family (tags toy/t1, toy/t2), not the experiment
    run0 = exported["toy"]["t1"]["new"]["run_0"]
    assert run0["step_0"] == {"step_count": 100, "return": [2.0]}
    assert run0["step_2"] == {"step_count": 300, "return": [7.0]}
    assert run0["absolute_metrics"] == {"return": [7.0]}
    assert sorted(exported["toy"]["t2"]["new"]) == ["run_0", "run_1"]
    # new|t2 has 2 finished seeds, the others 3: marl-eval rejects unequal run counts
    assert marl_eval_problems(exported) == ["toy: different numbers of runs (seeds) per task and algorithm: [2, 3]"]
    if DiagnoseData is not None:
        assert DiagnoseData(exported).check_data()["toy"]["valid_runs"] is False


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


def _refs(path: Path, tasks: dict[str, tuple[float, float]]) -> Path:
    path.write_text(json.dumps({"version": "t", "tasks": {
        name: {"random": random, "expert": expert, "source": "test"} for name, (random, expert) in tasks.items()
    }}))
    return path


def test_blocks_never_rank_algorithms_that_share_no_task(store: dict[str, Path | str], tmp_path: Path) -> None:
    refs = _refs(tmp_path / "refs.json", {"x": (0.0, 10.0), "y": (0.0, 1.0)})
    out = tmp_path / "out"
    board = build_leaderboard("mixed", out, tracking_uri=store["uri"], references=refs, reported_dir=tmp_path / "none")
    blocks = {b.name: b for b in board.blocks}
    assert {n: b.algorithms for n, b in blocks.items()} == {"offline": ["c", "d"], "online": ["a", "b"]}
    # one pooled ranking would have put the offline c (normalised ~94) above the online a (70)
    assert [a.algorithm for a in blocks["online"].aggregate] == ["a", "b"]
    assert [a.algorithm for a in blocks["offline"].aggregate] == ["c", "d"]
    assert blocks["online"].aggregate[0].iqm.value == pytest.approx(70.0)
    assert set(blocks["online"].improvement) == {("a", "b"), ("b", "a")}  # never a vs c
    with (out / "aggregate.csv").open() as handle:
        assert [(r["comparison"], r["algorithm"]) for r in csv.DictReader(handle)] == [
            ("offline", "c"), ("offline", "d"), ("online", "a"), ("online", "b")]

    tasks = {t.task: t for t in board.tasks}
    assert not tasks["x"].offline and tasks["x"].efficiency is not None
    assert tasks["y"].offline and tasks["y"].efficiency is None  # declared baseline d, but offline
    assert all(r.steps_to_target is None and r.speedup is None for r in tasks["y"].rows)
    assert curve_figure(tasks["y"]).axes[0].get_xlabel() == "updates"
    assert curve_figure(tasks["x"]).axes[0].get_xlabel() == "env steps"

    md = (out / "leaderboard.md").read_text()
    x_part, y_part = md.split("## x\n")[1].split("## y\n")
    assert "steps to target |" in x_part and "steps to target" not in y_part.split("|", 1)[1]
    assert "gradient updates" in y_part and "steps to target does not apply" in y_part
    # 3 seeds online: caveat beside std, CI and P(improvement); 5 seeds offline: none
    assert "| a | 3 | 7 | 1 (n=3 seeds: CI unreliable) |" in x_part
    assert "1.00 [1, 1] (n=3 seeds: CI unreliable)" in md
    assert "CI unreliable" not in y_part
    page = (out / "index.html").read_text()
    assert "Aggregate by comparison block" in page and "n=3 seeds: CI unreliable" in page
    with (out / "leaderboard.csv").open() as handle:
        rows = {r["algorithm"]: r for r in csv.DictReader(handle)}
    assert rows["c"]["x_axis"] == "updates" and rows["a"]["x_axis"] == "env steps"
    assert rows["a"]["caveat"] == "n=3 seeds: CI unreliable" and rows["c"]["caveat"] == ""

    exported = json.loads((out / "marl_eval.json").read_text())
    assert sorted(exported) == ["mpe", "toy"] and sorted(exported["toy"]["y"]) == ["c", "d"]
    assert marl_eval_problems(exported) == []
    if DiagnoseData is not None:
        checks = DiagnoseData(exported).check_data()
        assert all(all(result.values()) for result in checks.values()), checks


def test_marl_eval_problems_match_diagnose_data() -> None:
    def run(n_steps: int, metric: str = "return") -> dict:
        steps = {f"step_{i}": {"step_count": i, metric: [1.0]} for i in range(n_steps)}
        return {**steps, "absolute_metrics": {metric: [1.0]}}

    good = {"mpe": {"t1": {"a": {"run_0": run(2)}, "b": {"run_0": run(2)}},
                    "t2": {"a": {"run_0": run(2)}, "b": {"run_0": run(2)}}}}
    cases = {
        "good": (good, []),
        "algorithms": ({"e": {"t1": {"a": {"run_0": run(2)}}, "t2": {"b": {"run_0": run(2)}}}}, ["different algorithms"]),
        "steps": ({"e": {"t1": {"a": {"run_0": run(2)}, "b": {"run_0": run(3)}}}}, ["evaluation steps"]),
        "metrics": ({"e": {"t1": {"a": {"run_0": run(2)}, "b": {"run_0": run(2, "win")}}}}, ["metric names"]),
        "comma": ({"e": {"t1": {"a,b": {"run_0": run(2)}}}}, ["comma"]),
    }
    for name, (data, expected) in cases.items():
        problems = marl_eval_problems(data)
        assert len(problems) == len(expected) and all(e in p for e, p in zip(expected, problems)), (name, problems)
        if DiagnoseData is not None:
            checks = DiagnoseData(data).check_data()
            assert all(all(r.values()) for r in checks.values()) == (not expected), (name, checks)


def test_board_from_plain_train_runs(store: dict[str, Path | str], tmp_path: Path) -> None:
    refs = _refs(tmp_path / "refs.json", {"mpe/simple_spread_n3": (-100.0, 0.0)})
    out = tmp_path / "out"
    board = build_leaderboard("plain", out, tracking_uri=store["uri"], references=refs, reported_dir=tmp_path / "none")
    assert board.source == "runs"
    (task,) = board.tasks
    assert task.task == "mpe/simple_spread_n3"
    assert {r.algorithm: r.scores for r in task.rows} == {"omad": (-50.0, -52.0), "hasac": (-60.0,)}  # latest wins
    (block,) = board.blocks
    assert block.name == "mpe" and block.algorithms == ["hasac", "omad"]
    md = (out / "leaderboard.md").read_text()
    assert "grouped by their algorithm, task and seed tags" in md
    assert "| hasac (baseline) | 1 | -60 | – (n=1 seed: no std, no CI) |" in md  # HASAC: a registered baseline
    assert list(json.loads((out / "marl_eval.json").read_text())) == ["mpe"]


def test_no_finished_run_is_an_error_not_an_empty_board(
    store: dict[str, Path | str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = cli.main(["leaderboard", "--experiment", "dead", "--out", str(out), "--tracking-uri", store["uri"]])
    assert code == 2
    err = capsys.readouterr().err
    assert "experiment 'dead': no finished run to rank" in err and "hasac|mpe/simple_spread_n3|0: failed" in err
    assert not (out / "leaderboard.md").exists()
    from dmarl.bench.leaderboard import NothingToRank  # `dmarl bench` catches it: cells failed, exit 1

    with pytest.raises(NothingToRank):
        build_leaderboard("dead", out, tracking_uri=store["uri"])
    assert not (out / "leaderboard.md").exists()


def test_marl_eval_environment_is_the_family_split_by_block_only_when_needed() -> None:
    from dmarl.bench.leaderboard import RunRecord, marl_eval_environment

    def rec(run_id: str, task_name: str, comparison: str) -> RunRecord:
        return RunRecord(run_id, f"a|{run_id}|0", "a", run_id, 0, 1.0, {}, task_name=task_name, comparison=comparison)

    runs = [rec("1", "mpe/simple_spread_n3", "spread"), rec("2", "mpe/simple_tag", "tag"),
            rec("3", "toy/bandit", "offline"), rec("4", "mamujoco/ant_2x4", "")]
    assert marl_eval_environment(runs) == {"1": "mpe.spread", "2": "mpe.tag", "3": "toy", "4": "mamujoco"}


def test_a_task_shared_by_two_blocks_names_each_rows_block() -> None:
    from dmarl.bench import stats
    from dmarl.bench.leaderboard import ExperimentData, RunRecord, compute, markdown
    from dmarl.bench.references import References

    def rec(algorithm: str, comparison: str, seed: int, final: float) -> RunRecord:
        return RunRecord(f"{algorithm}{seed}", f"{algorithm}|t|{seed}", algorithm, "t", seed, final, {100: final},
                         task_name="toy/t", comparison=comparison)

    runs = [rec("a", "one", 0, 1.0), rec("b", "one", 0, 2.0), rec("c", "two", 0, 3.0)]
    refs = References("t", "refs.json", {})
    board = compute(ExperimentData("e", "uri", runs, []), refs, baselines=[], boot=stats.Bootstrap(n_resamples=100))
    (task,) = board.tasks
    assert task.several_blocks and [r.block for r in task.rows] == ["two", "one", "one"]
    assert "| c [two] | 1 |" in markdown(board) and "| a [one] | 1 |" in markdown(board)
    assert {b.name: b.algorithms for b in board.blocks} == {"one": ["a", "b"], "two": ["c"]}
