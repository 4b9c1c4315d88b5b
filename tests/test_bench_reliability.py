"""`dmarl bench` reliability (issue 17 items 3, 4, 5, 8, 9 and the bench cases of 14/15):
content hash of each cell's resolved config, explicit effective budgets, duplicate labels,
clear messages, locks against a second driver or a second trainer, and no orphan cells."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import gin
import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import cli_env
from dmarl import cli, config
from dmarl.bench import locks, sweep
from dmarl.bench.cell_output import LOG_DIR
from dmarl.bench.spec import Cell, duplicate_dict_keys, expand, load_benchmark
from dmarl.errors import UserError

HASAC_CPU = "gin/experiments/hasac_simple_spread_cpu.gin"  # binds 40,000 env steps
TASK_BUDGET = 10_000_000  # gin/tasks/mpe_simple_spread_n3.gin: the paper's budget


def tree(root: Path, algorithm_body: str = "") -> Path:
    """gin/algorithms/fast.gin (HASAC), gin/tasks/t1.gin (simple_spread); returns gin/benchmarks."""
    for kind, name, body in (
        ("algorithms", "fast", f"run.algorithm = 'hasac'\n{algorithm_body}"),
        ("tasks", "t1", "run.task = 'mpe/simple_spread_n3'\n"),
    ):
        (root / "gin" / kind).mkdir(parents=True, exist_ok=True)
        (root / "gin" / kind / f"{name}.gin").write_text(body)
    (root / "gin" / "benchmarks").mkdir(exist_ok=True)
    return root / "gin" / "benchmarks"


def bench_file(folder: Path, body: str, name: str = "rel") -> Path:
    path = folder / f"{name}.gin"
    path.write_text("benchmark.comparisons = [@comparison()]\n" + body)
    return path


def dry_run(path: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["bench", str(path), "--dry-run", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def one_message(err: str) -> None:
    """Exit-2 output: one `dmarl: error:` message, no traceback, no gin call context."""
    assert err.count("dmarl: error:") == 1 and "Traceback" not in err and "In call to configurable" not in err


# ------------------------------------------------------------------ item 3: content hash


def _finished_run(client: MlflowClient, exp_id: str, cell: Cell) -> str:
    """A FINISHED run of ``cell`` as a first invocation of the sweep leaves it."""
    tags = {sweep.CELL_TAG: cell.key, sweep.HASH_TAG: cell.config_hash}
    run_id = client.create_run(exp_id, run_name=cell.run_name, tags=tags).info.run_id
    client.log_metric(run_id, "final/return_mean", 1.0, step=100)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_editing_a_cells_gin_between_runs_is_a_conflict(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Seed 0 finished with the old gin; after an edit, seed 1 must not join it in one row."""
    include = workdir / "shared.gin"
    include.write_text("HASAC.polyak = 0.005\n")
    folder = tree(workdir, f"include '{include}'\n")
    path = bench_file(folder, "comparison.algorithms = ['fast']\ncomparison.tasks = ['t1']\ncomparison.seeds = 2\n")
    old = expand(load_benchmark(path))
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp_id = client.create_experiment("rel")
    run_id = _finished_run(client, exp_id, old[0])

    # a comment changes nothing: seed 0 is done, seed 1 runs
    (folder.parent / "algorithms" / "fast.gin").write_text(f"# tuned\nrun.algorithm = 'hasac'\ninclude '{include}'\n")
    same = expand(load_benchmark(path))
    assert [c.config_hash for c in same] == [c.config_hash for c in old]
    assert [p.action for p in sweep.plan_cells(same, sweep.cell_runs(client, exp_id))] == ["done", "run"]

    # a value edited in an included file: a conflict naming the cell, both hashes and the way out
    include.write_text("HASAC.polyak = 0.01\n")
    new = expand(load_benchmark(path))
    assert new[0].config_hash != old[0].config_hash and new[0].key == old[0].key
    with pytest.raises(UserError) as err:
        sweep.plan_cells(new, sweep.cell_runs(client, exp_id))
    text = str(err.value)
    assert f"fast|t1|0: now {new[0].config_hash}, before {old[0].config_hash} (finished run {run_id})" in text
    assert "fast|t1|1" not in text and "--experiment" in text

    code, _, stderr = dry_run(path, capsys=capsys)
    assert code == 2 and old[0].config_hash in stderr and new[0].config_hash in stderr
    one_message(stderr)


def test_the_hash_is_the_resolved_config_not_the_file_names(tmp_path: Path) -> None:
    folder = tree(tmp_path)
    (folder.parent / "algorithms" / "copy.gin").write_text("run.algorithm = 'hasac'\n")
    path = bench_file(folder, "comparison.algorithms = ['fast', 'copy']\ncomparison.tasks = ['t1']\ncomparison.seeds = [3]\n")
    fast, copy = expand(load_benchmark(path))
    assert fast.config_hash == copy.config_hash  # same content under another name
    path.write_text(path.read_text() + "comparison.bindings = ['HASAC.gamma = 0.95']\n")
    assert expand(load_benchmark(path))[0].config_hash != fast.config_hash


# ------------------------------------------------------------------ item 4: effective budget


def _bound_budget(cell: Cell) -> int:
    """What training will read: OnlineRunner.total_env_steps of the cell's parsed config."""
    config.parse(list(cell.config_files), list(cell.bindings))
    try:
        return config.bound_value("OnlineRunner", "total_env_steps")
    finally:
        gin.clear_config()


def test_an_experiment_gins_budget_wins_over_the_task_gins_paper_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tree(tmp_path)
    path = bench_file(folder, f"""
comparison.algorithms = {{'cpu': '{HASAC_CPU}', 'paper': 'hasac', 'bound': ['{HASAC_CPU}', 'OnlineRunner.total_env_steps = 5000'],
                         'plain': 'fast'}}
comparison.tasks = ['mpe_simple_spread_n3']
comparison.seeds = 1
""")
    cells = {c.algorithm: c for c in expand(load_benchmark(path))}
    budget = "OnlineRunner.total_env_steps"
    # the experiment gin binds 40,000, the task gin listed after it 1e7: the experiment wins
    assert cells["cpu"].budget == {budget: 40_000}
    assert cells["cpu"].budget_source == "algorithm gin, over the task gin's 10,000,000"
    assert _bound_budget(cells["cpu"]) == 40_000
    config.parse(list(cells["cpu"].config_files), [])  # the old behaviour: file order alone
    assert config.bound_value("OnlineRunner", "total_env_steps") == TASK_BUDGET
    gin.clear_config()
    # an algorithm gin without a budget: the task's paper budget, said so
    assert cells["paper"].budget == {budget: TASK_BUDGET} and cells["paper"].budget_source == "task gin"
    assert cells["bound"].budget == {budget: 5000} and cells["bound"].budget_source == "entry binding"
    assert _bound_budget(cells["bound"]) == 5000
    assert cells["plain"].budget == {budget: TASK_BUDGET}

    code, out, _ = dry_run(path, capsys=capsys)
    assert code == 0
    assert f"{budget}=40,000 (algorithm gin, over the task gin's 10,000,000)" in out
    assert f"{budget}=10,000,000 (task gin)" in out and "default budget" not in out

    path.write_text(path.read_text() + f"comparison.budget = {{'{budget}': 24000}}\n")
    for cell in expand(load_benchmark(path)):
        expected = (5000, "entry binding") if cell.algorithm == "bound" else (24_000, "comparison budget")
        assert (cell.budget[budget], cell.budget_source) == expected
        assert _bound_budget(cell) == expected[0]


def test_without_any_budget_binding_the_runner_default_is_shown(tmp_path: Path) -> None:
    path = bench_file(tree(tmp_path), "comparison.algorithms = ['fast']\ncomparison.tasks = ['t1']\ncomparison.seeds = 1\n")
    (cell,) = expand(load_benchmark(path))
    assert cell.budget == {"OnlineRunner.total_env_steps": 1_000_000} and cell.budget_source == "runner default"


# ------------------------------------------------------------------ item 5: duplicate labels


def test_duplicate_dict_keys_are_found_per_dict() -> None:
    assert duplicate_dict_keys("x.a = {'k': 1,\n  'k': 2}") == [("k", 2)]
    assert duplicate_dict_keys("x.a = {'a': {'k': 1}, 'b': {'k': 2}}") == []
    assert duplicate_dict_keys("x.a = ['k', 'k']\nx.b = {'k': ('k', 'k')}") == []
    assert duplicate_dict_keys("x.a = {'k': 1, \"k\": 2}") == [("k", 1)]


def test_a_duplicate_label_is_refused_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tree(tmp_path)
    (folder.parent / "algorithms" / "other.gin").write_text("run.algorithm = 'hatd3'\n")
    path = bench_file(folder, """comparison.tasks = ['t1']
comparison.algorithms = {
    'hasac': 'fast',
    'hasac': 'other',
}
""")
    code, _, err = dry_run(path, capsys=capsys)
    assert code == 2 and f'file "{path}", line 5' in err and "'hasac' appears twice" in err
    one_message(err)
    ok = bench_file(folder, "comparison.tasks = ['t1']\ncomparison.algorithms = {'hasac': 'fast'}\n", "ok")
    code, _, err = dry_run(ok, "--bind", "comparison.tasks = {'t': 't1', 't': 't1'}", capsys=capsys)
    assert code == 2 and "--bind" in err and "'t' appears twice" in err


# ------------------------------------------------------------------ item 15: messages


@pytest.mark.parametrize(
    ("body", "bind", "expected"),
    [
        ("comparison.seeds = 2.5", None, "comparison.seeds: expected an int or a list of ints, got 2.5"),
        ("comparison.seeds = [0, 'one']", None, "comparison.seeds: expected an int or a list of ints, got [0, 'one']"),
        ("comparison.seeds = 0", None, "comparison.seeds: expected a positive count or a list of ints, got 0"),
        ("comparison.baselines = ['fsat']", None, "did you mean 'fast'? (valid labels: fast)"),
        ("comparison.bindings = ['HASAC.polyk = 0.1']", None, "Nearest valid names: polyak"),
        ("comparison.bindings = ['OnlineRuner.batch_size = 8']", None, "Nearest valid names: OnlineRunner"),
        ("", "comparision.seeds = 1", "Nearest valid names: comparison"),
    ],
)
def test_bench_messages_name_the_field_and_what_was_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, bind: str | None, expected: str
) -> None:
    path = bench_file(tree(tmp_path), f"comparison.algorithms = ['fast']\ncomparison.tasks = ['t1']\n{body}\n")
    code, _, err = dry_run(path, *(["--bind", bind] if bind else []), capsys=capsys)
    assert code == 2 and expected in err, err
    one_message(err)


def test_out_pointing_at_a_file_fails_before_any_run(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = bench_file(tree(workdir), "comparison.algorithms = ['fast']\ncomparison.tasks = ['t1']\ncomparison.seeds = 1\n")
    (workdir / "board").write_text("not a folder")
    assert cli.main(["bench", str(path), "--out", "board/sub"]) == 2
    err = capsys.readouterr().err
    assert "board" in err and "file" in err
    one_message(err)
    assert not (workdir / "mlflow.db").exists() and not (workdir / "runs").exists()


# ------------------------------------------------------------------ item 8: claims, orphans


def _fail_if_called(*args: object, **kwargs: object) -> None:
    raise AssertionError("a claimed cell was trained a second time")


def test_a_claimed_cell_is_not_trained_by_a_second_process(workdir: Path) -> None:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cell = Cell("fast|t1|0", "main", "fast", "t1", 0, (), (), {}, "h")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dmarl.bench import locks; "
         f"c = locks.cell_claim({uri!r}, 'rel', 'fast|t1|0'); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        task = sweep.CellTask(cell, uri, "rel", "parent", "a1", {}, train_fn=_fail_if_called, claim_timeout=0.3)
        outcome = sweep.execute_cell(task)
        assert outcome.status == "FAILED"
        assert f"cell fast|t1|0 is being trained by another process (pid {holder.pid}" in outcome.error
    finally:
        holder.kill()
        holder.wait()
    outcome = sweep.execute_cell(sweep.CellTask(cell, uri, "rel", "parent", "a2", {}, train_fn=_fail_if_called))
    assert "a claimed cell was trained a second time" in outcome.error  # the claim died with its holder


TINY = """
benchmark.name = 'tiny'
comparison.algorithms = ['hasac']
comparison.tasks = ['mpe_simple_spread_n3']
comparison.seeds = 1
comparison.budget = {'OnlineRunner.total_env_steps': 10000000}
comparison.bindings = ['HASAC.hidden = (8, 8)', 'OnlineRunner.num_envs = 2', 'OnlineRunner.random_steps = 100000000',
                       'OnlineRunner.learning_starts = 100000000', 'OnlineRunner.eval_interval = 1000000',
                       'OnlineRunner.checkpoint_interval = 1000000', 'OnlineRunner.log_interval = 1000000']
"""


def _start_driver(workdir: Path) -> tuple[subprocess.Popen, Path]:
    """A real `dmarl bench` whose one cell trains (random actions) far longer than the test."""
    path = bench_file(workdir, TINY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dmarl.cli", "bench", str(path), "--workers", "1", "--no-leaderboard"],
        cwd=workdir, env=cli_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 180
    runs = workdir / "runs"
    # the cell created its run folder (not only its output log under runs/logs/): it is training
    while not (runs.is_dir() and any(p.name != LOG_DIR for p in runs.iterdir())):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the cell did not start: {proc.communicate()[1][-3000:]}")
        time.sleep(0.2)
    return proc, path


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(procs)


# The two tests below start real `dmarl bench` processes (each imports torch and MLflow, and
# the cell's worker too): ~45 s each on a loaded 2-core machine, hence `slow` (run with -m slow).
@pytest.mark.slow
def test_a_second_bench_is_refused_and_kill9_of_the_driver_leaves_no_cell(workdir: Path) -> None:
    driver, path = _start_driver(workdir)
    try:
        cells = _descendants(driver.pid)
        assert any("multiprocessing" in " ".join(p.cmdline()) for p in cells)
        second = subprocess.run(
            [sys.executable, "-m", "dmarl.cli", "bench", str(path), "--workers", "1", "--no-leaderboard"],
            cwd=workdir, env=cli_env(workdir), capture_output=True, text=True, timeout=180,
        )
        assert second.returncode == 2, second.stderr
        assert "benchmark 'tiny' is already running" in second.stderr and f"pid {driver.pid}" in second.stderr
        one_message(second.stderr)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert _wait_gone(cells, timeout=30) == []
    finally:
        driver.kill()
        driver.wait()
    with locks.benchmark_lock(f"sqlite:///{workdir / 'mlflow.db'}", "tiny"):
        pass  # the dead driver's lock went with it


@pytest.mark.slow
def test_sigterm_of_the_driver_stops_its_cells_and_marks_the_runs_killed(workdir: Path) -> None:
    driver, _ = _start_driver(workdir)
    cells = _descendants(driver.pid)
    driver.send_signal(signal.SIGTERM)
    try:
        _, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 143, err[-3000:]
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert _wait_gone(cells, timeout=10) == []
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = sweep.all_runs(client, client.get_experiment_by_name("tiny").experiment_id)
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"]  # the parent and the cell
