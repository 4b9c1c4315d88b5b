"""The local pool's worker processes: forked from a fork server that preloaded torch, MLflow
and the registry, yet each cell starts as a fresh process would (the driver's working
directory and environment at the cell's start, no gin bindings of an earlier cell), and a
cell whose driver dies gets SIGTERM although its parent, the fork server, lives on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import cli_env

import gin
from dmarl.bench import sweep
from dmarl.bench.spec import Cell

MARK_VAR = "DMARL_TEST_POOL_MARK"
# imported by the fork server's preload, not by this module's imports (record_cell imports none)
PRELOADED = ("dmarl.train", "dmarl.algorithms.omad", "torch._dynamo", "mlflow.store.tracking.sqlalchemy_store")


@dataclass
class Result:
    run_id: str
    status: str
    final_score: float | None


def record_cell(config_files: list[str], bindings: list[str], **kwargs: object) -> Result:
    """A train_fn that writes what its process sees to ``bindings[0]`` (a JSON file)."""
    with gin.unlock_config():
        already = gin.query_parameter("OnlineRunner.total_env_steps") if _bound() else None
        gin.parse_config("OnlineRunner.total_env_steps = 123")
    seen = {
        "pid": os.getpid(), "cwd": os.getcwd(), "mark": os.environ.get(MARK_VAR), "gin_before": already,
        "preloaded": [m in sys.modules for m in PRELOADED], "threads": os.environ.get("OMP_NUM_THREADS"),
    }
    Path(bindings[0]).write_text(json.dumps(seen))
    return Result(run_id="r", status="FINISHED", final_score=1.0)


def _bound() -> bool:
    try:
        gin.query_parameter("OnlineRunner.total_env_steps")
    except ValueError:
        return False
    return True


def _task(tmp_path: Path, seed: int, out: Path) -> sweep.CellTask:
    cell = Cell(f"rec|t|{seed}", "main", "rec", "t", seed, (), (str(out),), {}, "h")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return sweep.CellTask(cell, uri, "pool", "parent", f"a{seed}", {}, train_fn=record_cell)


def test_cells_start_clean_in_the_drivers_cwd_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outs = [tmp_path / f"seen{i}.json" for i in range(3)]
    done: list[sweep.CellOutcome] = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(MARK_VAR, "first")
    sweep.LocalPool(1).run([_task(tmp_path, 0, outs[0])], lambda task: None, done.append)
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)  # a later sweep in the same driver, after the fork server started
    monkeypatch.setenv(MARK_VAR, "second")
    sweep.LocalPool(1).run([_task(tmp_path, i, outs[i]) for i in (1, 2)], lambda task: None, done.append)
    assert [o.status for o in done] == ["FINISHED"] * 3, [o.error for o in done]
    seen = [json.loads(p.read_text()) for p in outs]
    assert [s["cwd"] for s in seen] == [str(tmp_path), str(work), str(work)]
    assert [s["mark"] for s in seen] == ["first", "second", "second"]
    assert [s["gin_before"] for s in seen] == [None, None, None]  # no cell sees another's bindings
    assert len({s["pid"] for s in seen} | {os.getpid()}) == 4
    assert all(s["threads"] for s in seen)


@pytest.mark.skipif(sys.platform != "linux", reason="the fork server is used where the OS has one")
def test_cells_are_forked_from_the_preloaded_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen.json"
    monkeypatch.chdir(tmp_path)
    assert sweep.worker_context(1).get_start_method() == "forkserver"
    done: list[sweep.CellOutcome] = []
    sweep.LocalPool(1).run([_task(tmp_path, 0, out)], lambda task: None, done.append)
    assert done[0].status == "FINISHED", done[0].error
    assert json.loads(out.read_text())["preloaded"] == [True] * len(PRELOADED)


CHILD = """
import multiprocessing.connection, os, sys, time
from dmarl.bench import sweep
conn = multiprocessing.connection.Connection(int(sys.argv[1]), readable=False)
sweep.die_with_driver(conn, grace=5.0)
print('watching', flush=True)
time.sleep(60)
"""


def test_a_forked_cell_gets_sigterm_when_its_drivers_end_of_the_pipe_closes() -> None:
    import signal
    import subprocess

    read_fd, write_fd = os.pipe()  # the driver's end, the cell's end
    cell = subprocess.Popen([sys.executable, "-c", CHILD, str(write_fd)], pass_fds=[write_fd], stdout=subprocess.PIPE, text=True)
    os.close(write_fd)
    try:
        assert cell.stdout.readline().strip() == "watching"
        assert cell.poll() is None  # the driver is alive: the cell trains on
        os.close(read_fd)  # the driver dies
        assert cell.wait(timeout=30) == -signal.SIGTERM
    finally:
        cell.kill()
        cell.wait()


TWO_MPE_CELLS = """benchmark.name = 'two'
benchmark.comparisons = [@comparison()]
comparison.algorithms = ['hasac']
comparison.tasks = ['mpe_simple_spread_n3']
comparison.seeds = 2
comparison.budget = {'OnlineRunner.total_env_steps': 300}
comparison.bindings = ['HASAC.hidden = (8, 8)', 'OnlineRunner.num_envs = 2', 'OnlineRunner.random_steps = 100',
                       'OnlineRunner.learning_starts = 100', 'OnlineRunner.eval_interval = 300',
                       'OnlineRunner.eval_episodes = 2', 'OnlineRunner.eval_num_envs = 2',
                       'OnlineRunner.checkpoint_interval = 300', 'OnlineRunner.log_interval = 300']
"""


def test_a_real_sweep_exits_without_resource_tracker_warnings(tmp_path: Path) -> None:
    """Two real MPE cells through `dmarl bench`: each cell's progress bar used to create tqdm's
    multiprocessing lock, reported at the driver's exit as a leaked semaphore."""
    (tmp_path / "two.gin").write_text(TWO_MPE_CELLS)
    done = subprocess.run([sys.executable, "-m", "dmarl.cli", "bench", "two.gin"], cwd=tmp_path, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 runs, 0 missing or failed cells" in done.stdout + done.stderr
    assert "resource_tracker" not in done.stderr and "leaked" not in done.stderr


def test_preload_survives_a_broken_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception escaping the fork server's preload would kill the server and every cell with
    it; a broken module is left for the cell to import again and report."""
    from dmarl import registry
    from dmarl.bench import worker_preload

    def broken() -> None:
        raise RuntimeError("a registered module failed to import")

    monkeypatch.setattr(registry, "load_all", broken)
    worker_preload.preload()  # returns: the cell reports the error itself
