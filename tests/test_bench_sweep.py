"""Sweeps: nested runs on the local pool and on Ray, re-runs that do no work, resume of
interrupted cells, crashing cells, 8 concurrent writers to one sqlite store, and an end-to-end
benchmark against a real `mlflow server` read back through its REST API."""
from __future__ import annotations

import json
import re
import os
from dataclasses import dataclass
from pathlib import Path

import gin
import pytest
from mlflow.tracking import MlflowClient

from conftest import rest
from dmarl import cli
from dmarl.bench import sweep
from dmarl.bench.cell_output import progress_text
from dmarl.bench.spec import expand, load_benchmark
from dmarl.errors import UserError

SCORES = {"fast": 10.0, "slow": 5.0}


@dataclass
class FakeResult:
    run_id: str
    status: str
    final_score: float | None


def _binding(bindings: list[str], name: str, default: int) -> int:
    for binding in bindings:
        key, _, value = binding.partition("=")
        if key.strip() == name:
            return int(value)
    return default


def fake_train(
    config_files: list[str],
    bindings: list[str],
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    progress: bool = True,
) -> FakeResult:
    """Stands in for dmarl.train.run_training: same signature, same MLflow contract, no torch.

    Algorithm 'crashy' raises after creating its run; 'dying' kills its process first.
    ``fake.evals`` evaluations are logged one metric call at a time at steps 100, 200, ...;
    the checkpoint (a file holding the number of evaluations done) allows resuming.
    """
    tags = dict(tags or {})
    algorithm, seed = tags[sweep.ALGORITHM_TAG], int(tags[sweep.SEED_TAG])
    if algorithm == "dying":
        os._exit(3)
    client = MlflowClient(tracking_uri)
    evals = _binding(bindings, "fake.evals", 3)
    if resume_run_id:
        run_id = resume_run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "fake.resumed", "yes")
        run_dir = Path(client.get_run(run_id).data.tags[sweep.RUN_DIR_TAG])
        done = int((run_dir / sweep.CHECKPOINT_FILE).read_text())
    else:
        exp = client.get_experiment_by_name(experiment)
        run_tags = {**tags, "algorithm": algorithm, "task": f"toy/{tags[sweep.TASK_TAG]}", "seed": str(seed)}
        run_id = client.create_run(
            exp.experiment_id, run_name=run_name, tags={**run_tags, "mlflow.parentRunId": parent_run_id}
        ).info.run_id
        client.log_param(run_id, "fake.evals", evals)
        run_dir = Path(os.environ.get("DMARL_CHECKPOINT_DIR", "runs")) / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        client.set_tag(run_id, sweep.RUN_DIR_TAG, str(run_dir))
        done = 0
    if algorithm == "crashy":
        raise RuntimeError("forced crash")
    score = SCORES[algorithm] + 0.5 * seed
    for i in range(done, evals):
        client.log_metric(run_id, "eval/return_mean", score * (i + 1) / evals, step=100 * (i + 1))
        (run_dir / sweep.CHECKPOINT_FILE).write_text(str(i + 1))
    client.log_metric(run_id, "final/return_mean", score, step=100 * evals)
    client.set_terminated(run_id, status="FINISHED")
    return FakeResult(run_id, "FINISHED", score)


# Cells are resolved with train's checks before they run: the stand-in gin files bind a real
# algorithm and task, and `fake.evals` is a configurable (fake_train reads the binding).
GIN_BODY = {"algorithms": "run.algorithm = 'hasac'", "tasks": "run.task = 'mpe/simple_spread_n3'"}


@gin.configurable("fake")
def fake_settings(evals: int = 3) -> int:
    """Declares the `fake.evals` binding that fake_train reads."""
    return evals


def make_benchmark(root: Path, algorithms: list[str], seeds: int, extra: str = "") -> Path:
    for kind, names in (("algorithms", algorithms), ("tasks", ["t1"])):
        (root / "gin" / kind).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / "gin" / kind / f"{name}.gin").write_text(f"# {name}\n{GIN_BODY[kind]}\n")
    (root / "gin" / "benchmarks").mkdir(parents=True, exist_ok=True)
    path = root / "gin" / "benchmarks" / "mini.gin"
    baselines = "comparison.baselines = ['slow']\n" if "slow" in algorithms else ""
    path.write_text(
        "benchmark.comparisons = [@comparison()]\n"
        f"comparison.algorithms = {algorithms!r}\n"
        "comparison.tasks = ['t1']\n"
        f"comparison.seeds = {seeds}\n" + baselines + extra
    )
    return path


def cell_runs(uri: str, experiment: str) -> tuple[MlflowClient, str, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, exp.experiment_id, sweep.all_runs(client, exp.experiment_id)


def _uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


def test_local_pool_runs_nested_cells_and_a_rerun_does_no_work(workdir: Path) -> None:
    bench = load_benchmark(make_benchmark(workdir, ["fast", "slow"], seeds=1))
    log = workdir / "progress.txt"
    with log.open("w") as stream:
        result = sweep.run_sweep(bench, workers=2, train_fn=fake_train, stream=stream)
    assert result.tracking_uri == _uri(workdir)
    assert sorted(o.key for o in result.outcomes) == ["fast|t1|0", "slow|t1|0"]
    assert all(o.status == "FINISHED" for o in result.outcomes)
    text = log.read_text()
    assert "[  2/2] finished" in text and "2 of 2 cells to run on 2 local workers" in text

    client, _, runs = cell_runs(result.tracking_uri, "mini")
    (parent,) = [r for r in runs if r.data.tags.get(sweep.ROLE_TAG) == "parent"]
    cells = [r for r in runs if r.data.tags.get(sweep.CELL_TAG)]
    assert parent.info.status == "FINISHED" and parent.info.run_id == result.parent_run_id
    assert len(cells) == 2 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in cells)
    by_key = {r.data.tags[sweep.CELL_TAG]: r for r in cells}
    slow = by_key["slow|t1|0"]
    assert slow.info.status == "FINISHED" and slow.info.run_name == "slow-t1-s0"
    assert slow.data.tags[sweep.HASH_TAG] == expand(bench)[1].config_hash
    assert slow.data.metrics["final/return_mean"] == 5.0
    planned = json.loads(Path(client.download_artifacts(parent.info.run_id, sweep.SPEC_ARTIFACT, str(workdir))).read_text())
    assert [c["key"] for c in planned["cells"]] == [c.key for c in expand(bench)]

    again = sweep.run_sweep(bench, workers=2, train_fn=fake_train, stream=open(os.devnull, "w"))
    assert again.outcomes == [] and {p.action for p in again.plan} == {"done"}
    assert again.parent_run_id == result.parent_run_id
    assert len(cell_runs(result.tracking_uri, "mini")[2]) == len(runs)

    existing = sweep.cell_runs(client, result.experiment_id)
    more = load_benchmark(make_benchmark(workdir, ["fast", "slow"], seeds=2))  # one more seed: only its cells
    assert [(p.cell.key, p.action) for p in sweep.plan_cells(expand(more), existing) if p.action != "done"] == [
        ("fast|t1|1", "run"), ("slow|t1|1", "run"),
    ]
    changed = load_benchmark(make_benchmark(workdir, ["fast"], seeds=1, extra="comparison.bindings = ['fake.evals = 5']\n"))
    with pytest.raises(UserError, match="different configuration"):
        sweep.run_sweep(changed, workers=1, train_fn=fake_train, stream=open(os.devnull, "w"))


def test_crashing_cells_fail_with_their_reason_and_the_leaderboard_names_them(workdir: Path) -> None:
    bench = load_benchmark(make_benchmark(workdir, ["fast", "crashy", "dying"], seeds=1))
    result = sweep.run_sweep(bench, workers=2, train_fn=fake_train, stream=open(os.devnull, "w"))
    outcomes = {o.key: o for o in result.outcomes}
    assert outcomes["fast|t1|0"].status == "FINISHED"
    assert outcomes["crashy|t1|0"].error == "RuntimeError: forced crash"
    assert outcomes["dying|t1|0"].error == "worker process died (exit code 3)"
    client, _, runs = cell_runs(result.tracking_uri, "mini")
    by_key = {r.data.tags[sweep.CELL_TAG]: r for r in runs if r.data.tags.get(sweep.CELL_TAG)}
    for key, reason in (("crashy|t1|0", "RuntimeError: forced crash"), ("dying|t1|0", "worker process died")):
        run = by_key[key]
        assert run.info.status == "FAILED" and run.data.tags[sweep.FAILURE_TAG].startswith(reason)
        assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert "forced crash" in Path(client.download_artifacts(by_key["crashy|t1|0"].info.run_id, "failure.txt", str(workdir))).read_text()
    assert client.get_run(result.parent_run_id).info.status == "FAILED"

    from dmarl.bench.leaderboard import build_leaderboard

    board = build_leaderboard("mini", workdir / "lb")
    assert sorted(i.key for i in board.issues if i.state == "failed") == ["crashy|t1|0", "dying|t1|0"]
    assert {r.algorithm for t in board.tasks for r in t.rows} == {"fast"}
    md = (workdir / "lb" / "leaderboard.md").read_text()
    assert "crashy|t1|0: failed — RuntimeError: forced crash" in md

    again = sweep.run_sweep(bench, workers=2, train_fn=fake_train, stream=open(os.devnull, "w"))
    assert again.outcomes == []  # failed cells are skipped ...
    planned = sweep.plan_cells(expand(bench), sweep.cell_runs(client, again.experiment_id), retry_failed=True)
    assert {p.cell.key: p.action for p in planned}["crashy|t1|0"] == "run"  # ... unless retried


def _interrupted_run(client: MlflowClient, exp_id: str, parent: str, cell, run_dir: Path | None, evals_done: int) -> str:
    tags = {sweep.CELL_TAG: cell.key, sweep.HASH_TAG: cell.config_hash, sweep.ALGORITHM_TAG: cell.algorithm,
            sweep.TASK_TAG: cell.task, sweep.SEED_TAG: str(cell.seed), "mlflow.parentRunId": parent}
    run_id = client.create_run(exp_id, run_name=cell.run_name, tags=tags).info.run_id
    for i in range(evals_done):
        client.log_metric(run_id, "eval/return_mean", 1.0, step=100 * (i + 1))
    if run_dir is not None:
        run_dir.mkdir(parents=True)
        (run_dir / sweep.CHECKPOINT_FILE).write_text(str(evals_done))
        client.set_tag(run_id, sweep.RUN_DIR_TAG, str(run_dir))
    return run_id


def test_interrupted_cells_resume_from_their_checkpoint_or_restart(workdir: Path) -> None:
    bench = load_benchmark(make_benchmark(workdir, ["fast"], seeds=2, extra="comparison.bindings = ['fake.evals = 4']\n"))
    cells = expand(bench)
    client = MlflowClient(_uri(workdir))
    exp_id = client.create_experiment("mini")
    parent = client.create_run(exp_id, tags={sweep.ROLE_TAG: "parent", sweep.BENCH_TAG: "mini"}).info.run_id
    resumable = _interrupted_run(client, exp_id, parent, cells[0], workdir / "ckpt", evals_done=2)
    stale = _interrupted_run(client, exp_id, parent, cells[1], None, evals_done=1)
    planned = sweep.plan_cells(cells, sweep.cell_runs(client, exp_id))
    assert [(p.action, p.run_id) for p in planned] == [("resume", resumable), ("restart", stale)]

    result = sweep.run_sweep(bench, workers=2, train_fn=fake_train, stream=open(os.devnull, "w"))
    assert result.parent_run_id == parent
    outcomes = {o.key: o for o in result.outcomes}
    assert outcomes["fast|t1|0"].run_id == resumable and outcomes["fast|t1|0"].status == "FINISHED"
    resumed = client.get_run(resumable)
    assert resumed.data.tags["fake.resumed"] == "yes" and resumed.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(resumable, "eval/return_mean")] == [100, 200, 300, 400]
    assert outcomes["fast|t1|1"].run_id != stale
    assert client.get_run(stale).info.status == "KILLED"
    assert [p.action for p in sweep.plan_cells(cells, sweep.cell_runs(client, exp_id))] == ["done", "done"]


def test_eight_workers_on_one_sqlite_store_lose_no_run_and_no_metric(workdir: Path) -> None:
    evals = 25
    bench = load_benchmark(make_benchmark(
        workdir, ["fast", "slow"], seeds=4, extra=f"comparison.bindings = ['fake.evals = {evals}']\n"
    ))
    result = sweep.run_sweep(bench, workers=8, train_fn=fake_train, stream=open(os.devnull, "w"))
    assert len(result.outcomes) == 8 and all(o.status == "FINISHED" for o in result.outcomes)
    client, _, runs = cell_runs(result.tracking_uri, "mini")
    cells = [r for r in runs if r.data.tags.get(sweep.CELL_TAG)]
    assert len(cells) == 8 and len({r.info.run_id for r in cells}) == 8
    for run in cells:
        history = client.get_metric_history(run.info.run_id, "eval/return_mean")
        assert sorted(m.step for m in history) == [100 * (i + 1) for i in range(evals)]
        assert run.data.metrics["final/return_mean"] == SCORES[run.data.tags[sweep.ALGORITHM_TAG]] + 0.5 * int(
            run.data.tags[sweep.SEED_TAG]
        )


def test_ray_backend_runs_nested_cells(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    tests_dir = str(Path(__file__).resolve().parent)  # Ray workers import fake_train from here
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        bench = load_benchmark(make_benchmark(workdir, ["fast", "crashy"], seeds=1))
        result = sweep.run_sweep(bench, backend="ray", train_fn=fake_train, stream=open(os.devnull, "w"))
    finally:
        ray.shutdown()
    outcomes = {o.key: o.status for o in result.outcomes}
    assert outcomes == {"fast|t1|0": "FINISHED", "crashy|t1|0": "FAILED"}
    _, _, runs = cell_runs(result.tracking_uri, "mini")
    cells = [r for r in runs if r.data.tags.get(sweep.CELL_TAG)]
    assert len(cells) == 2 and {r.data.tags["mlflow.parentRunId"] for r in cells} == {result.parent_run_id}


def test_failure_and_checkpoint_names_match_the_training_code() -> None:
    from dmarl import train
    from dmarl.runners import checkpoint

    assert sweep.FAILURE_TAG == train.FAILURE_TAG
    assert sweep.RUN_DIR_TAG == train.RUN_DIR_TAG
    assert sweep.CHECKPOINT_FILE == checkpoint.CHECKPOINT_FILE


# ----------------------------------------------------------------- mlflow server end to end


def test_real_benchmark_against_an_mlflow_server_read_back_through_rest(
    workdir: Path, mlflow_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dmarl bench` with the real training code, logging to a server; runs read back over REST."""
    bench_file = workdir / "e2e.gin"
    bench_file.write_text("""
benchmark.name = 'e2e'
benchmark.comparisons = [@comparison()]
comparison.algorithms = ['hasac']
comparison.tasks = ['mpe_simple_spread_n3']
comparison.seeds = 2
comparison.budget = {'OnlineRunner.total_env_steps': 320}
comparison.evaluation = {'OnlineRunner.eval_interval': 160, 'OnlineRunner.eval_episodes': 2,
                         'OnlineRunner.eval_num_envs': 2, 'OnlineRunner.final_eval_multiplier': 1}
comparison.bindings = ['HASAC.hidden = (16, 16)', 'OnlineRunner.num_envs = 4', 'OnlineRunner.random_steps = 80',
                       'OnlineRunner.learning_starts = 80', 'OnlineRunner.batch_size = 32',
                       'OnlineRunner.updates_per_env_step = 0.05', 'OnlineRunner.checkpoint_interval = 160',
                       'OnlineRunner.log_interval = 160']
""")
    code = cli.main(["bench", str(bench_file), "--tracking-uri", mlflow_server, "--workers", "2", "--out", "board",
                     "--progress-every", "0"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr()
    assert "[  2/2] finished" in printed.err and "leaderboard: board/index.html (2 runs" in printed.out
    # live status of running cells (steps of the budget), their own output in per-cell logs
    assert re.search(r"running  hasac\|mpe_simple_spread_n3\|[01]  \d+% \d+/320 ", printed.err), printed.err
    for seed in (0, 1):
        assert (workdir / "runs" / "logs" / "e2e" / f"hasac_mpe_simple_spread_n3_{seed}.log").is_file()
    assert not (workdir / "MUJOCO_LOG.TXT").exists()
    assert (workdir / "board" / "index.html").is_file() and (workdir / "board" / "curves" / "mpe_simple_spread_n3.png").is_file()

    experiment = rest(mlflow_server, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=e2e")["experiment"]
    runs = rest(mlflow_server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert len(runs) == 3
    by_role = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        by_role.setdefault(tags.get(sweep.ROLE_TAG, "cell"), []).append((run, tags))
    ((parent, parent_tags),) = by_role["parent"]
    assert parent["info"]["status"] == "FINISHED"
    assert parent_tags["mlflow.note.content"].startswith("Benchmark **e2e**") and "seeds 0, 1" in parent_tags["mlflow.note.content"]
    board = rest(mlflow_server, f"/api/2.0/mlflow/artifacts/list?run_id={parent['info']['run_id']}&path=leaderboard")
    assert "leaderboard/index.html" in {f["path"] for f in board["files"]}
    assert f"#/experiments/{experiment['experiment_id']}/runs?compareRunsMode=CHART" in printed.out
    seeds = set()
    for run, tags in by_role["cell"]:
        info, data = run["info"], run["data"]
        params = {p["key"]: p["value"] for p in data["params"]}
        metrics = {m["key"]: m["value"] for m in data["metrics"]}
        assert info["status"] == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent["info"]["run_id"]
        assert tags["algorithm"] == "hasac" and tags["task"] == "mpe/simple_spread_n3"
        assert tags[sweep.CELL_TAG] == f"hasac|mpe_simple_spread_n3|{tags['seed']}"
        assert "dmarl.version" in tags and "version.torch" in tags
        assert params["OnlineRunner.total_env_steps"] == "320" and params["HASAC.hidden"] == "(16, 16)"
        assert params["run.seed"] == tags["seed"]
        assert {"eval/return_mean", "eval/return_std", "final/return_mean", "final/return_std"} <= set(metrics)
        history = rest(
            mlflow_server,
            f"/api/2.0/mlflow/metrics/get-history?run_id={info['run_id']}&metric_key=eval/return_mean",
        )["metrics"]
        assert [int(m["step"]) for m in history][-1] <= 320 and len(history) >= 2
        seeds.add(tags["seed"])
    assert seeds == {"0", "1"}


def test_progress_text_drops_the_bar_and_keeps_counts_and_eval() -> None:
    bar = " 50%|█████     | 1200/2400 [00:10<00:10, 120.00step/s, eval return -3.20]"
    assert progress_text(bar) == "50% 1200/2400 [00:10<00:10, 120.00step/s, eval return -3.20]"
