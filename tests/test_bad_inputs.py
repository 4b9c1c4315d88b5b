"""The bad-input catalogue (issue 17): every bad input or fault a new user tried, run through
the real CLI in-process (`dmarl.cli.main`), each asserting

* the exit code (2 for bad input, or the documented code: 0 for the good cases, 141 for a
  closed stdout),
* one message (one ``dmarl: error:`` line) naming the file/field/value and what was expected,
* no traceback (an exception escaping `main` fails the case),
* no MLflow run left RUNNING, and no new run created, in the shared store,
* no file touched outside the case's declared output paths (the working directory, which holds
  a sentinel tree and the case's inputs, is hashed before and after).

The config cases of ``tests/test_cli_errors.py`` are referenced (``CONFIG_CASES``), not copied.
Cases of items another change owns (data loss, checkpoints, bench) are at the end.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from conftest import REPO
from test_cli_errors import BASE, CASES as CONFIG_CASES

from dmarl.cli import main

TINY = """\
include 'gin/algorithms/hasac.gin'
run.algorithm = 'hasac'
run.task = 'toy/bandit'
HASAC.hidden = (8, 8)
OnlineRunner.total_env_steps = 32
OnlineRunner.num_envs = 2
OnlineRunner.batch_size = 8
OnlineRunner.random_steps = 8
OnlineRunner.learning_starts = 8
OnlineRunner.updates_per_env_step = 0.25
OnlineRunner.eval_interval = 16
OnlineRunner.eval_episodes = 2
OnlineRunner.eval_num_envs = 2
OnlineRunner.checkpoint_interval = 16
OnlineRunner.log_interval = 16
"""
CPU_GIN = str(REPO / "gin/experiments/hasac_simple_spread_cpu.gin")
QUICKSTART = str(REPO / "gin/benchmarks/quickstart.gin")
DEAD = "http://127.0.0.1:9"

Setup = Callable[[Path, dict[str, str]], None]


@dataclass
class Case:
    """One CLI invocation: ``args`` (``{name}`` filled from the context), the substrings its
    message must hold, its exit code, files to create first, and the paths it may write."""

    args: list[str]
    needles: list[str] = field(default_factory=list)
    code: int = 2
    files: dict[str, str | bytes] = field(default_factory=dict)
    setup: Setup | None = None
    outputs: tuple[str, ...] = ()
    creates_runs: bool = False
    marks: tuple[Any, ...] = ()
    max_seconds: float = 30.0


def _train(text: str, *needles: str, bind: tuple[str, ...] = ()) -> Case:
    args = ["train", "bad.gin", "--no-progress"]
    for b in bind:
        args += ["--bind", b]
    return Case(args, list(needles), files={"bad.gin": text})


def _bind(binding: str, *needles: str) -> Case:
    return Case(["train", CPU_GIN, "--no-progress", "--bind", binding], [f"--bind '{binding}'", *needles])


CASES: dict[str, Case] = {}
# --- configs (tests/test_cli_errors.py's cases, referenced) ---------------------------------
for _name, (_text, _needles) in CONFIG_CASES.items():
    CASES[f"config: {_name}"] = _train(_text, *_needles)
CASES.update({
    "config: wrong-typed --bind": _bind("HASAC.gamma = 'high'", "expected float"),
    "config: missing file": Case(["train", "nope.gin"], ["config file not found: nope.gin"]),
    "config: missing include": _train("include 'gin/nope.gin'\n", "nope.gin"),
    "config: no config at all": Case(["train"], ["CONFIG.gin"]),
    "config: no algorithm/task": _train("HASAC.actor_lr = 1e-3\n", "run.algorithm"),
    "config: offline without dataset": _train(
        "include 'gin/algorithms/omsd.gin'\ninclude 'gin/tasks/toy_bandit.gin'\n", "run.dataset"),
    "config: resume unknown run": Case(["train", "--resume", "0123456789abcdef"], ["'0123456789abcdef'"]),
    # --- item 13: values checked before any run ---------------------------------------------
    "value: negative batch size": _bind("OnlineRunner.batch_size = -5", "batch_size = -5", "expected >= 1"),
    "value: num_envs 0": _bind("OnlineRunner.num_envs = 0", "num_envs = 0", "expected >= 1"),
    "value: eval_interval 0": _bind("OnlineRunner.eval_interval = 0", "eval_interval", ">= 1"),
    "value: log_interval 0": _bind("OnlineRunner.log_interval = 0", "log_interval", ">= 1"),
    "value: checkpoint_interval 0": _bind("OnlineRunner.checkpoint_interval = 0", "checkpoint_interval", ">= 1"),
    "value: eval_episodes 0 (item 6)": _bind("OnlineRunner.eval_episodes = 0", "eval_episodes = 0", ">= 1"),
    "value: total_env_steps 0 (item 10)": _bind("OnlineRunner.total_env_steps = 0", "total_env_steps", "[1, "),
    "value: total_env_steps 1e29 (int)": _bind(
        "OnlineRunner.total_env_steps = 100000000000000000000000000000", "total_env_steps", "1000000000000"),
    "value: total_env_steps 1e29 (float)": _bind("OnlineRunner.total_env_steps = 1e29", "total_env_steps", "int"),
    "value: diffusion_steps 0": Case(
        ["train", str(REPO / "gin/experiments/omad_simple_spread_cpu.gin"), "--bind", "OMAD.diffusion_steps = 0"],
        ["OMAD.diffusion_steps = 0", ">= 1"]),
    "value: n_atoms 1": Case(
        ["train", str(REPO / "gin/experiments/omad_simple_spread_cpu.gin"), "--bind", "OMAD.n_atoms = 1"],
        ["OMAD.n_atoms = 1", ">= 2"]),
    "value: v_max 0": Case(
        ["train", str(REPO / "gin/experiments/omad_simple_spread_cpu.gin"), "--bind", "OMAD.v_max = 0.0"],
        ["OMAD.v_max = 0.0", "> 0"]),
    "value: lr -1": _bind("HASAC.actor_lr = -1.0", "actor_lr = -1.0", "> 0"),
    "value: lr nan in a file": _train(BASE + "HASAC.critic_lr = nan\n", "line 2", "critic_lr"),
    "value: gamma 1.5 in a file": _train(BASE + "HASAC.gamma = 1.5\n", "line 2", "HASAC.gamma = 1.5", "[0, 1]"),
    "value: hidden width 0": _bind("HASAC.hidden = (64, 0)", "hidden", "layer widths >= 1"),
    "value: polyak 0": _bind("HASAC.polyak = 0.0", "polyak", "(0, 1]"),
    "value: device cuda without CUDA": Case(
        ["train", CPU_GIN, "--bind", "run.device = 'cuda'"], ["run.device = 'cuda'", "no CUDA device"],
        marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),)),
    "value: device tpu9": _bind("run.device = 'tpu9'", "'tpu9'", "expected a torch device"),
    "value: unknown task_kwargs (closed factory)": _train(
        TINY + "run.task_kwargs = {'n_agentz': 3}\n", "line 16", "n_agentz", "toy/bandit"),
    "value: unknown task_kwargs (simulator kwargs)": _bind("run.task_kwargs = {'foo': 1}", "'foo'", "mpe/simple_spread_n3"),
    "value: undefined macro": _train(BASE + "HASAC.actor_lr = %ACTOR_LR\n", "line 2", "%ACTOR_LR"),
    "value: undefined macro in --bind": _bind("run.seed = %SEED", "%SEED"),
    "value: macro with a bad value": _train(BASE + "LR = -3.0\nHASAC.actor_lr = %LR\n", "actor_lr", "> 0"),
    # --- item 14/15: gin files that used to give tracebacks or unclear messages ------------------
    "gin: include cycle": Case(["train", "a.gin"], ["include cycle", "a.gin", "b.gin"],
                               files={"a.gin": "include 'b.gin'\n", "b.gin": "include 'a.gin'\n"}),
    "gin: self include": Case(["train", "a.gin"], ["include cycle", "a.gin"], files={"a.gin": "include 'a.gin'\n"}),
    "gin: binary file": Case(["train", "bin.gin"], ["bin.gin", "not a gin text file"],
                             files={"bin.gin": b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary"}),
    "gin: binary include": Case(["train", "bad.gin"], ["bin.gin", "not a gin text file"],
                                files={"bad.gin": "include 'bin.gin'\n", "bin.gin": b"\xff\xfe\x00\x01"}),
    "gin: --bind 'X ='": Case(["train", CPU_GIN, "--bind", "X ="], ["--bind 'X ='", "malformed gin"]),
    # --- item 12/14: tracking stores, in seconds -------------------------------------------------
    "tracking: dead server (train)": Case(
        ["train", CPU_GIN, "--tracking-uri", DEAD], ["127.0.0.1:9", "cannot reach"], max_seconds=10.0),
    "tracking: dead server (bench --dry-run)": Case(
        ["bench", QUICKSTART, "--dry-run", "--tracking-uri", DEAD], ["127.0.0.1:9", "cannot reach"], max_seconds=10.0),
    "tracking: dead server (leaderboard)": Case(
        ["leaderboard", "--experiment", "x", "--out", "lb", "--tracking-uri", DEAD], ["cannot reach"]),
    "tracking: dead server (collect)": Case(
        ["collect", "--task", "toy/bandit", "--policy", "abc123", "--episodes", "2", "--out", "d",
         "--tracking-uri", DEAD], ["cannot reach"]),
    "tracking: dead server (resume)": Case(["train", "--resume", "abc", "--tracking-uri", DEAD], ["cannot reach"]),
    "tracking: unroutable server (connect timeout)": Case(
        ["train", CPU_GIN, "--tracking-uri", "http://10.255.255.1:5000"], ["10.255.255.1:5000"],
        max_seconds=10.0),
    "tracking: unknown scheme": Case(["train", CPU_GIN, "--tracking-uri", "foo://bar"], ["foo://bar", "unknown scheme"]),
    "tracking: sqlite file not a database": Case(
        ["train", CPU_GIN, "--tracking-uri", "sqlite:///notes.txt"], ["notes.txt", "not an SQLite database"],
        files={"notes.txt": "my notes\n"}),
    "tracking: sqlite path is a folder": Case(
        ["train", CPU_GIN, "--tracking-uri", "sqlite:///sentinel"], ["sentinel", "is a folder"]),
    "tracking: sqlite folder missing": Case(
        ["train", CPU_GIN, "--tracking-uri", "sqlite:///no/such/dir/m.db"], ["no/such/dir", "does not exist"]),
    "tracking: file store is a file": Case(
        ["leaderboard", "--experiment", "x", "--out", "lb", "--tracking-uri", "notes.txt"], ["notes.txt", "is a file"],
        files={"notes.txt": "x\n"}),
    # --- leaderboard -----------------------------------------------------------------------------
    "leaderboard: --out is a file": Case(
        ["leaderboard", "--experiment", "dmarl", "--out", "notes.txt"], ["--out notes.txt", "is a file"],
        files={"notes.txt": "x\n"}),
    "leaderboard: --out under a file": Case(
        ["leaderboard", "--experiment", "dmarl", "--out", "notes.txt/sub"], ["notes.txt", "is a file"],
        files={"notes.txt": "x\n"}),
    "leaderboard: unknown experiment": Case(["leaderboard", "--experiment", "dmrl", "--out", "lb"], ["'dmrl'", "dmarl"]),
    "leaderboard: mistyped --baseline": Case(
        ["leaderboard", "--experiment", "dmarl", "--out", "lb", "--baseline", "hasacc"], ["--baseline hasacc", "expected"]),
    "leaderboard: --resamples 5": Case(["leaderboard", "--experiment", "dmarl", "--resamples", "5"], ["--resamples", "100"]),
    "leaderboard: no store": Case(
        ["leaderboard", "--experiment", "dmarl", "--out", "lb", "--tracking-uri", "sqlite:///none.db"], ["none.db"]),
    # --- collect ---------------------------------------------------------------------------------
    "collect: unknown policy run id (no store created)": Case(
        ["collect", "--task", "toy/bandit", "--policy", "BADID", "--episodes", "2", "--out", "d",
         "--tracking-uri", "sqlite:///mlflow.db"], ["'BADID'", "no MLflow run"]),
    "collect: unknown policy run id (store)": Case(
        ["collect", "--task", "toy/bandit", "--policy", "BADID", "--episodes", "2", "--out", "d"], ["'BADID'", "random"]),
    "collect: episodes 0": Case(
        ["collect", "--task", "toy/bandit", "--policy", "random", "--episodes", "0", "--out", "d"], ["--episodes 0", ">= 1"]),
    "collect: num-envs 0": Case(
        ["collect", "--task", "toy/bandit", "--policy", "random", "--episodes", "2", "--num-envs", "0", "--out", "d"],
        ["--num-envs 0"]),
    "collect: unknown task": Case(
        ["collect", "--task", "toy/bandt", "--policy", "random", "--episodes", "2", "--out", "d"], ["toy/bandit"]),
    # --- bench -----------------------------------------------------------------------------------
    "bench: missing file": Case(["bench", "nope.gin", "--dry-run"], ["nope.gin"]),
    "bench: --workers 0": Case(["bench", QUICKSTART, "--workers", "0"], ["--workers", "1"]),
    "bench: --out is a file": Case(["bench", QUICKSTART, "--out", "notes.txt"], ["notes.txt", "is a file"],
                                   files={"notes.txt": "x\n"}),
    "bench: seeds 2.5 (item 15)": Case(["bench", QUICKSTART, "--dry-run", "--bind", "comparison.seeds = 2.5"],
                                       ["seeds", "2.5"]),
    "bench: cell budget 0": Case(
        ["bench", QUICKSTART, "--dry-run", "--bind", "online/comparison.budget = {'OnlineRunner.total_env_steps': 0}"],
        ["total_env_steps = 0", "[1, "]),
    "bench: cell lr -1": Case(
        ["bench", QUICKSTART, "--dry-run", "--bind",
         "online/comparison.evaluation = {'OnlineRunner.eval_interval': 4000, 'HASAC.actor_lr': -1.0}"],
        ["actor_lr = -1.0", "> 0"]),
    "bench: include cycle": Case(["bench", "a.gin", "--dry-run"], ["a.gin"],
                                 files={"a.gin": "include 'b.gin'\n", "b.gin": "include 'a.gin'\n"}),
    "datasets: info --bins 0": Case(["datasets", "info", "{data}", "--bins", "0"], ["--bins 0", ">= 1"]),
    "datasets: validate missing": Case(["datasets", "validate", "no_such_dataset"], ["no_such_dataset"]),
    # --- good inputs (documented code 0 / 141) ----------------------------------------------------
    "good: info": Case(["info"], [], code=0),
    "good: --help": Case(["--help"], [], code=0),
    "good: train --help": Case(["train", "--help"], [], code=0),
    "good: bench --dry-run shows the budget": Case(
        ["bench", QUICKSTART, "--dry-run"], ["OnlineRunner.total_env_steps"], code=0),
    "good: omsd_bandit bench --dry-run": Case(
        ["bench", str(REPO / "gin/benchmarks/omsd_bandit.gin"), "--dry-run"], ["total_updates"], code=0),
    "good: datasets info": Case(["datasets", "info", "{data}"], ["return"], code=0),
    "good: closed stdout is exit 141, no traceback": Case(["info"], [], code=141),
})


# --- cases of items other changes own (1-11) ------------------------------------------------------

def _copy_data(dst: str) -> Setup:
    def setup(cwd: Path, ctx: dict[str, str]) -> None:
        shutil.copytree(ctx["data"], cwd / dst)
    return setup


def _nested_source(cwd: Path, ctx: dict[str, str]) -> None:
    (cwd / "u" / "sub").mkdir(parents=True)
    (cwd / "u" / "thesis.txt").write_text("years of work\n")
    shutil.copytree(ctx["data"], cwd / "u" / "sub" / "bandit")


def _edit_npy(name: str, edit: Callable[[np.ndarray], np.ndarray]) -> Setup:
    def setup(cwd: Path, ctx: dict[str, str]) -> None:
        shutil.copytree(ctx["data"], cwd / "ds")
        path = cwd / "ds" / name
        np.save(path, edit(np.load(path)))
    return setup


def _fill(text: str, ctx: dict[str, str]) -> str:
    """``{name}`` -> ``ctx[name]`` for the context's names only (bindings keep their braces)."""
    for key, value in ctx.items():
        text = text.replace("{" + key + "}", value)
    return text


def _run_dir(ctx: dict[str, str], run_id: str) -> Path:
    from mlflow.tracking import MlflowClient

    return Path(MlflowClient(ctx["store"]).get_run(run_id).data.tags["dmarl.run_dir"])


def _interrupted_run(mutate: Callable[[Path, dict[str, str]], None]) -> Setup:
    """Train a fresh tiny run in the shared store, mark it KILLED (as after kill -9), then
    ``mutate`` its checkpoint; the case resumes it (``{killed}``)."""
    def setup(cwd: Path, ctx: dict[str, str]) -> None:
        from mlflow.tracking import MlflowClient

        run_id = _train_tiny(Path(ctx["store_dir"]))
        MlflowClient(ctx["store"]).set_terminated(run_id, status="KILLED")
        ctx["killed"] = run_id
        mutate(_run_dir(ctx, run_id), ctx)
    return setup


def _corrupt(run_dir: Path, ctx: dict[str, str]) -> None:
    path = run_dir / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 32] = bytes(32)
    path.write_bytes(bytes(data))


def _foreign(run_dir: Path, ctx: dict[str, str]) -> None:
    source = _run_dir(ctx, ctx["run"])
    for item in source.glob("checkpoint.pt*"):  # the payload, its .sha256 and its replay-row chunk folder
        if item.is_dir():
            shutil.rmtree(run_dir / item.name, ignore_errors=True)
            shutil.copytree(item, run_dir / item.name)
        else:
            shutil.copy(item, run_dir / item.name)


def _dup_bench(cwd: Path, ctx: dict[str, str]) -> None:
    (cwd / "dup.gin").write_text(
        "benchmark.name = 'dup'\nbenchmark.comparisons = [@comparison()]\ncomparison.seeds = 1\n"
        "comparison.algorithms = {\n    'hasac': 'gin/experiments/hasac_simple_spread_cpu.gin',\n"
        "    'hasac': 'gin/experiments/hatd3_simple_spread_cpu.gin',\n}\n"
        "comparison.tasks = ['mpe_simple_spread_n3']\n"
    )


def _edited_cell(cwd: Path, ctx: dict[str, str]) -> None:
    (cwd / "cell.gin").write_text(TINY.replace("run.task = 'toy/bandit'\n", ""))
    (cwd / "b.gin").write_text(
        "benchmark.name = 'edited'\nbenchmark.comparisons = [@comparison()]\ncomparison.seeds = 1\n"
        "comparison.algorithms = {'hasac': 'cell.gin'}\n"
        "comparison.tasks = ['toy_bandit']\n"
    )
    assert main(["bench", "b.gin", "--workers", "1", "--no-leaderboard", "--tracking-uri", ctx["store"]]) == 0
    (cwd / "cell.gin").write_text((cwd / "cell.gin").read_text().replace("(8, 8)", "(16, 16)"))


SLOW = pytest.mark.slow
CASES.update({
    "item 1: convert --force onto a parent of the source": Case(
        ["datasets", "convert", "u/sub/bandit", "u", "--force"], ["output u", "expected"], setup=_nested_source),
    "item 1: convert --force onto a non-dataset folder": Case(
        ["datasets", "convert", "{data}", "notes", "--force"], ["notes", "not a dataset dmarl wrote"],
        files={"notes/thesis.txt": "x\n"}),
    "item 1: make-bandit --force onto a non-dataset folder": Case(
        ["datasets", "make-bandit", "--out", "notes", "--size", "100", "--force"], ["notes", "not a dataset dmarl wrote"],
        files={"notes/thesis.txt": "x\n"}),
    "item 1: collect --force onto the working directory": Case(
        ["collect", "--task", "toy/bandit", "--policy", "random", "--episodes", "2", "--out", ".", "--force"],
        ["current directory"]),
    "item 14: convert into afile/sub": Case(
        ["datasets", "convert", "{data}", "notes.txt/sub"], ["notes.txt", "is a file"], files={"notes.txt": "x\n"}),
    "item 14: convert into .": Case(["datasets", "convert", "{data}", ".", "--force"], ["current directory"]),
    "item 7: episode_returns disagree with rewards": Case(
        ["datasets", "validate", "ds"], ["episode_returns"], setup=_edit_npy("episode_returns.npy", lambda a: a + 999.0)),
    "item 7: actions outside [-1, 1] with --task": Case(
        ["datasets", "validate", "ds", "--task", "toy/bandit"], ["actions"],
        setup=_edit_npy("actions.npy", lambda a: a * 5.0)),
    "item 2: corrupt checkpoint": Case(
        ["train", "--resume", "{killed}", "--no-progress"], ["checkpoint", "corrupt", "sha256"], setup=_interrupted_run(_corrupt)),
    "item 11: checkpoint of another run": Case(
        ["train", "--resume", "{killed}", "--no-progress"], ["{run}", "{killed}"], setup=_interrupted_run(_foreign)),
    "item 11: resume a FINISHED run": Case(["train", "--resume", "{run}", "--no-progress"], ["FINISHED"]),
    "item 10: checkpoint dir is a file": Case(["train", "tiny.gin", "--no-progress", "--bind", "run.checkpoint_dir = 'notes.txt'"],
                       ["notes.txt", "is a file"], files={"tiny.gin": TINY, "notes.txt": "x\n"}),
    "item 14: collect with a policy trained on another task": Case(
        ["collect", "--task", "toy/coordination_game", "--policy", "{run}", "--episodes", "2", "--out", "d"],
        ["toy/bandit"]),
    "item 5: duplicate bench labels": Case(["bench", "dup.gin", "--dry-run"], ["hasac", "dup.gin"], setup=_dup_bench),
    "item 15: bench binding nearest name": Case(
        ["bench", QUICKSTART, "--dry-run", "--bind", "comparison.seedz = 1"], ["seedz", "seeds"]),
    "item 3: edited bench cell is a conflict": Case(
        ["bench", "b.gin", "--workers", "1", "--no-leaderboard", "--tracking-uri", "{store}"],
        ["different configuration", "hasac|toy_bandit|0"],
        setup=_edited_cell, outputs=("runs",), marks=(SLOW,)),
})


# --- harness ----------------------------------------------------------------------------------------

def _train_tiny(store_dir: Path) -> str:
    """A FINISHED tiny HASAC run on the bandit in the shared store; its run id."""
    from mlflow.tracking import MlflowClient

    gin_file = store_dir / "tiny.gin"
    gin_file.write_text(TINY)
    assert main(["train", str(gin_file), "--no-progress"]) == 0
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("dmarl")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0].info.run_id


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One MLflow store with a finished run, and one small native dataset, for every case."""
    store_dir = tmp_path_factory.mktemp("catalogue_store")
    store = f"sqlite:///{store_dir / 'mlflow.db'}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "DMARL_CHECKPOINT_DIR", "OMP_NUM_THREADS")}
    os.environ.update(MLFLOW_TRACKING_URI=store, DMARL_CHECKPOINT_DIR=str(store_dir / "runs"), OMP_NUM_THREADS="1")
    cwd = os.getcwd()
    os.chdir(store_dir)
    try:
        run_id = _train_tiny(store_dir)
        assert main(["datasets", "make-bandit", "--out", str(store_dir / "bandit"), "--size", "500",
                     "--boundary", "resample"]) == 0
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return {"store": store, "store_dir": str(store_dir), "run": run_id, "data": str(store_dir / "bandit"),
            "repo": str(REPO)}


def _tree(root: Path, skip: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _runs(store: str) -> dict[str, str]:
    with sqlite3.connect(store[len("sqlite:///"):]) as db:
        return dict(db.execute("SELECT run_uuid, status FROM runs"))


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def _params() -> list[Any]:
    return [pytest.param(name, marks=list(CASES[name].marks), id=name) for name in CASES]


def test_catalogue_size() -> None:
    assert len(CASES) >= 60, len(CASES)


@pytest.mark.parametrize("name", _params())
def test_bad_input(name: str, shared: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared["store"])
    monkeypatch.setenv("DMARL_CHECKPOINT_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("DMARL_DATA_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "sentinel" / "deep").mkdir(parents=True)
    (tmp_path / "sentinel" / "a.txt").write_text("keep me\n")
    (tmp_path / "sentinel" / "deep" / "b.bin").write_bytes(bytes(range(256)))
    for rel, content in case.files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (tmp_path / rel).write_bytes(content)
        else:
            (tmp_path / rel).write_text(content)
    ctx = dict(shared)
    if case.setup is not None:
        case.setup(tmp_path, ctx)
    capsys.readouterr()
    before, runs_before = _tree(tmp_path, case.outputs), _runs(shared["store"])
    args = [_fill(a, ctx) for a in case.args]
    if name.startswith("good: closed stdout"):
        monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    start = time.monotonic()
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse: --help (0) and usage errors (2)
        code = exit_.code
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    assert code == case.code, (code, out, err)
    assert "Traceback" not in out + err
    if case.code == 2:
        assert err.count("error:") == 1, err
    for needle in case.needles:
        assert _fill(needle, ctx) in out + err, (needle, out, err)
    runs_after = _runs(shared["store"])
    assert "RUNNING" not in runs_after.values(), {r: s for r, s in runs_after.items() if s == "RUNNING"}
    if not case.creates_runs and case.code != 0:
        assert set(runs_after) == set(runs_before), "a bad input created an MLflow run"
    assert _tree(tmp_path, case.outputs) == before, "a file outside the output path changed"
    assert elapsed < case.max_seconds, f"took {elapsed:.1f} s; expected under {case.max_seconds} s"


# --- the constraint table itself ---------------------------------------------------------------

def test_constraints_name_real_parameters() -> None:
    """Every key of the table is a parameter of some registered configurable (no rotting rule)."""
    import inspect

    import gin

    from dmarl import registry, validation
    import dmarl.train  # noqa: F401  (registers run.*)

    registry.load_all()
    params: set[str] = set()
    for selector, configurable in gin.config._REGISTRY.items():
        fn = configurable.wrapped
        for name in inspect.signature(fn.__init__ if inspect.isclass(fn) else fn).parameters:
            params.update({name, f"{selector.rsplit('.', 1)[-1]}.{name}"})
    assert sorted(set(validation.CONSTRAINTS) - params) == []


@pytest.mark.parametrize("value, rule, ok", [
    (1, "batch_size", True), (0, "batch_size", False), (-5, "batch_size", False),
    (0.0, "gamma", True), (1.0, "gamma", True), (1.0000001, "gamma", False),
    (1e-9, "actor_lr", True), (0.0, "actor_lr", False), (float("inf"), "actor_lr", False),
    (2, "n_atoms", True), (1, "n_atoms", False), (10**12, "total_env_steps", True),
    (10**12 + 1, "total_env_steps", False), (1.0, "polyak", True), (0.0, "polyak", False),
    ((64, 64), "hidden", True), ((64, 0), "hidden", False), (None, "huber_delta", True),
])
def test_constraint_boundaries(value: Any, rule: str, ok: bool) -> None:
    from dmarl.validation import CONSTRAINTS

    assert (CONSTRAINTS[rule].problem(value) is None) is ok


def test_shipped_configs_pass_validation() -> None:
    """The checks reject no config the suite ships (experiments; partial ones need an algorithm gin,
    or, for offline CPU-scale gins used by benchmarks, the dataset the benchmark binds)."""
    from dmarl.errors import UserError
    from dmarl.train import parse_settings

    for path in sorted((REPO / "gin/experiments").glob("*.gin")):
        try:
            parse_settings([str(path)], [])
        except UserError as err:
            assert "must set run.algorithm" in str(err) or "needs run.dataset" in str(err), (path, err)
