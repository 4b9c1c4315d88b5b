"""Acceptance (issue 15): in a fresh venv, ``pip install`` of the built wheel (not editable),
then from an empty directory the README's main job (``dmarl bench gin/benchmarks/quickstart.gin``,
tiny budgets through bindings) and ``dmarl evaluate`` of one of its runs, with a GIF.

The wheel is installed with ``--no-deps``, and the venv sees this environment's third-party
packages through a ``.pth`` file: resolving and downloading torch, jax, ray, mlflow, mujoco, ...
again took 13 of 19 minutes here (pip's cache stays empty on these machines), and the
dependency install is what ``.ci/run``'s own ``pip install`` already does. What is tested is the
wheel: its package data (gin files, references) and entry point, imported from the venv, not
from this checkout. ``DMARL_WHEEL_FULL_INSTALL=1`` installs the dependencies from the index too.
Each phase's wall time is printed (``pytest -s``) and written to ``timings.json``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_package import wheel  # noqa: F401  (module-scoped fixture: the built wheel)

TINY_MAIN_JOB = [
    "comparison.seeds = 1",
    "online/comparison.budget = {'OnlineRunner.total_env_steps': 400}",
    "online/comparison.evaluation = {'OnlineRunner.eval_interval': 400, 'OnlineRunner.eval_episodes': 2}",
    "online/comparison.bindings = ['OnlineRunner.random_steps = 200', 'OnlineRunner.learning_starts = 200', "
    "'OnlineRunner.eval_num_envs = 2', 'OnlineRunner.final_eval_multiplier = 1', "
    "'OnlineRunner.checkpoint_interval = 400']",
    "offline/comparison.budget = {'OfflineRunner.total_updates': 20}",
    "offline/comparison.bindings = ['OfflineRunner.eval_interval = 20', 'OfflineRunner.checkpoint_interval = 20', "
    "'OMSD.critic_steps = 20', 'OMSD.behaviour_steps = 20', 'BRPOCTDE.critic_steps = 20', "
    "'BRPOCTDE.behaviour_steps = 20']",
]


def _timed(timings: dict[str, float], phase: str, args: list[str], cwd: Path, env: dict[str, str],
           timeout: int) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    timings[phase] = round(time.monotonic() - start, 1)
    print(f"{phase}: {timings[phase]} s (exit {out.returncode})")
    assert out.returncode == 0, f"{phase} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _share_dependencies(venv: Path) -> None:
    """Make this environment's third-party packages importable in ``venv`` (after its own
    site-packages, so the wheel's ``dmarl`` wins; this checkout is not on the path: it is
    installed editable through a finder that a plain path entry does not activate)."""
    (site,) = (venv / "lib").glob("python*/site-packages")
    (ours,) = {p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_relative_to(sys.prefix)}
    (site / "dmarl_test_dependencies.pth").write_text(f"{ours}\n")


@pytest.mark.slow
def test_fresh_venv_installs_the_wheel_runs_the_main_job_and_evaluates(wheel: Path, tmp_path: Path) -> None:  # noqa: F811
    timings: dict[str, float] = {}
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "DMARL_CHECKPOINT_DIR")}
    env.update(OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    venv = tmp_path / "venv"
    _timed(timings, "venv", [sys.executable, "-m", "venv", str(venv)], tmp_path, env, 300)
    bin_dir = venv / "bin"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    if os.environ.get("DMARL_WHEEL_FULL_INSTALL") == "1":
        _timed(timings, "pip install wheel", [str(bin_dir / "pip"), "install", "-q", str(wheel)], tmp_path, env, 1800)
    else:
        _timed(timings, "pip install wheel", [str(bin_dir / "pip"), "install", "-q", "--no-deps", str(wheel)],
               tmp_path, env, 600)
        _share_dependencies(venv)
    work = tmp_path / "empty"
    work.mkdir()
    bench = [str(bin_dir / "dmarl"), "bench", "gin/benchmarks/quickstart.gin", "--workers", "2",
             *(arg for b in TINY_MAIN_JOB for arg in ("--bind", b))]
    out = _timed(timings, "main job (tiny)", bench, work, env, 1800)
    assert "4 of 4 cells to run" in out.stderr and "(4 runs, 0 missing or failed cells)" in out.stdout
    assert (work / "leaderboards" / "quickstart").is_dir() and (work / "mlflow.db").is_file()
    find_run = ("from mlflow.tracking import MlflowClient; c = MlflowClient('sqlite:///mlflow.db'); "
                "e = c.get_experiment_by_name('quickstart'); "
                "print(c.search_runs([e.experiment_id], \"tags.algorithm = 'hasac'\")[0].info.run_id)")
    run_id = _timed(timings, "find run", [str(bin_dir / "python"), "-c", find_run], work, env, 300).stdout.split()[-1]
    evaluate = [str(bin_dir / "dmarl"), "evaluate", run_id, "--episodes", "2", "--video", "spread.gif"]
    out = _timed(timings, "evaluate + GIF", evaluate, work, env, 600)
    assert f"run {run_id} (hasac) on mpe/simple_spread_n3: return" in out.stdout
    assert (work / "spread.gif").stat().st_size > 1000
    installed = subprocess.run([str(bin_dir / "python"), "-c", "import dmarl; print(dmarl.__file__)"], cwd=work,
                               env=env, capture_output=True, text=True, timeout=120).stdout.strip()
    assert Path(installed).is_relative_to(venv)  # the wheel's copy, not this checkout
    (tmp_path / "timings.json").write_text(json.dumps(timings, indent=1))
    print(json.dumps(timings))
