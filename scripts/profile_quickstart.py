"""Where the quickstart's time goes, per cell type, and the wall time it implies on 2 workers.

Runs one cell per (comparison, algorithm) of ``gin/benchmarks/quickstart.gin`` (seed 0, the
benchmark's own budgets and bindings) with one thread against a temporary MLflow store, each
in a process started as the sweep's local pool starts it (``--start forkserver``: forked from
the preloaded fork server, `dmarl.bench.sweep.worker_context`) or in a fresh interpreter
(``--start fresh``: how cells started before the fork server, a ``spawn``). Each child reports its CPU seconds
(``time.process_time``) split by phase: interpreter start + imports, run setup (MLflow run,
params, config), and inside the run loop env stepping, acting, updates, replay sampling,
periodic and final evaluation, metric logging, checkpoints, the policy artifact. Phases nest
("evaluate>act" is acting during an evaluation) and are exclusive, so they sum to the total.
The parent adds what the kernel says each child used (``getrusage``), times the leaderboard
build on the children's runs, and prints the estimated quickstart wall time: the 12 cells
list-scheduled on 2 workers in the sweep's order, from the measured CPU seconds.

    OMP_NUM_THREADS=1 python scripts/profile_quickstart.py                 # all four cell types
    python scripts/profile_quickstart.py --only hasac --scale 0.25         # a quarter budget
    python scripts/profile_quickstart.py --cells-json out.json             # keep the figures

``--scale`` multiplies the online env-step budget (evaluation cadence kept) for a quick look
at the fixed costs; the wall-time estimate is printed only for full budgets (updates start
after ``learning_starts``, so a scaled run does not extrapolate linearly).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "gin" / "benchmarks" / "quickstart.gin"


class PhaseClock:
    """Exclusive CPU seconds per nested phase (``outer>inner``), from ``time.process_time``."""

    def __init__(self) -> None:
        self.stack: list[str] = ["setup"]
        self.mark = time.process_time()
        self.seconds: dict[str, float] = {}

    def _charge(self) -> None:
        now = time.process_time()
        key = ">".join(self.stack[1:]) or self.stack[0]  # the base phase names only what is outside the others
        self.seconds[key] = self.seconds.get(key, 0.0) + now - self.mark
        self.mark = now

    def enter(self, name: str) -> None:
        self._charge()
        self.stack.append(name)

    def leave(self) -> None:
        self._charge()
        self.stack.pop()

    def wrap(self, owner: Any, attr: str, name: str | Callable[..., str]) -> None:
        """Charge every call of ``owner.attr`` (a class or module attribute) to phase ``name``
        (or to ``name(*args, **kwargs)``)."""
        inner: Callable[..., Any] = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.enter(name(*args, **kwargs) if callable(name) else name)
            try:
                return inner(*args, **kwargs)
            finally:
                self.leave()

        setattr(owner, attr, timed)


def child(cell: dict[str, Any], uri: str, start_cpu: float) -> dict[str, Any]:
    """Train one cell under the phase clock; return its phases and result."""
    clock = PhaseClock()
    clock.seconds["imports"] = start_cpu  # the interpreter start, before this module ran
    clock.stack = ["imports"]
    import dmarl.train as train_module
    from dmarl import registry, tracking
    from dmarl.data import replay
    from dmarl.runners import checkpoint, evaluation, offline, online

    algorithm_class = registry.get_algorithm(cell["algorithm_name"]).cls
    clock.leave()
    clock.stack = ["setup"]  # run setup and teardown: MLflow run, params, config, datasets
    clock.wrap(algorithm_class, "update", "update")
    clock.wrap(algorithm_class, "act", "act")
    if hasattr(algorithm_class, "pretrain"):
        clock.wrap(algorithm_class, "pretrain", "pretrain")
    clock.wrap(replay.ReplayBuffer, "sample", "sample")
    clock.wrap(replay.ReplayBuffer, "add", "replay_add")
    clock.wrap(
        evaluation.EvaluationSchedule, "evaluation", lambda *a, **k: "final_eval" if k.get("final") else "eval"
    )
    clock.wrap(tracking.Tracker, "log_metrics", "log_metrics")
    clock.wrap(checkpoint, "save", "checkpoint")
    clock.wrap(train_module, "log_policy", "policy_artifact")
    for runner in (online.OnlineRunner, offline.OfflineRunner):
        clock.wrap(runner, "run", "run")
    make_env = train_module.make_task_env

    def make_task_env(settings: Any, num_envs: int) -> Any:
        env = make_env(settings, num_envs)
        clock.wrap(env, "step", "env_step")
        clock.wrap(env, "reset", "env_reset")
        return env

    train_module.make_task_env = make_task_env  # the run's envs, with their step timed
    wall = time.perf_counter()
    result = train_module.run_training(
        list(cell["config_files"]), list(cell["bindings"]), tracking_uri=uri, experiment="quickstart",
        run_name=cell["run_name"], progress=False,
    )
    clock._charge()
    return {
        "phases": clock.seconds, "wall_s": time.perf_counter() - wall, "status": str(result.status),
        "final_score": result.final_score, "run_id": result.run_id,
    }


def forked_child(cell: dict[str, Any], uri: str, out: str) -> None:
    """A cell forked from the fork server: its CPU clock starts at the fork, and it ends with
    ``os._exit`` (no interpreter teardown), as the pool's cells do."""
    result = child(cell, uri, time.process_time())
    result["forked_cpu_s"] = time.process_time()
    Path(out).write_text(json.dumps(result))


def quickstart_cells(scale: float) -> list[dict[str, Any]]:
    """The benchmark's cells in sweep order; online budgets multiplied by ``scale``."""
    from dmarl.bench.spec import expand, load_benchmark
    from dmarl import registry

    cells = []
    for cell in expand(load_benchmark(BENCHMARK)):
        bindings = list(cell.bindings)
        if scale != 1.0 and "OnlineRunner.total_env_steps" in cell.budget:
            steps = int(cell.budget["OnlineRunner.total_env_steps"] * scale)
            bindings.insert(-1, f"OnlineRunner.total_env_steps = {steps}")
        algorithm_name = algorithm_of(cell.config_files, cell.bindings)
        registry.get_algorithm(algorithm_name)
        cells.append({
            "key": cell.key, "label": cell.algorithm, "seed": cell.seed, "config_files": list(cell.config_files),
            "bindings": bindings, "run_name": cell.run_name, "algorithm_name": algorithm_name,
        })
    return cells


def algorithm_of(files: tuple[str, ...], bindings: tuple[str, ...]) -> str:
    from dmarl.train import parse_settings

    import gin

    with gin.unlock_config():
        gin.clear_config()
    settings = parse_settings(list(files), list(bindings))
    with gin.unlock_config():
        gin.clear_config()
    return settings.algorithm


def schedule(durations: list[float], workers: int) -> float:
    """Wall time of list scheduling in the given order (a free worker takes the next cell)."""
    free = [0.0] * workers
    for seconds in durations:
        free.sort()
        free[0] += seconds
    return max(free)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="algorithm labels to profile (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplier of the online env-step budget")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--start", choices=("forkserver", "fresh"), default="forkserver",
                        help="start cells as the pool does (default) or in fresh interpreters (before the fork server)")
    parser.add_argument("--cells-json", default=None, help="write the measured figures here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        start_cpu = time.process_time()
        spec = json.loads(args.child)
        out = child(spec["cell"], spec["uri"], start_cpu)
        Path(spec["out"]).write_text(json.dumps(out))
        return

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    cells = quickstart_cells(args.scale)
    firsts: dict[str, dict[str, Any]] = {}
    for cell in cells:
        firsts.setdefault(cell["label"], cell)
    labels = [label for label in firsts if args.only is None or label in args.only]
    tmp = Path(tempfile.mkdtemp(prefix="dmarl-profile-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    measured: dict[str, dict[str, Any]] = {}
    os.chdir(tmp)
    for label in labels:
        out = tmp / f"{label}.json"
        wall = time.perf_counter()
        if args.start == "fresh":
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            payload = json.dumps({"cell": firsts[label], "uri": uri, "out": str(out)})
            subprocess.run([sys.executable, __file__, "--child", payload], check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        else:
            from dmarl.bench.sweep import worker_context

            proc = worker_context(1).Process(target=forked_child, args=(firsts[label], uri, str(out)))
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                raise SystemExit(f"{label}: the forked cell exited with code {proc.exitcode}")
            cpu = None
        result = json.loads(out.read_text())
        result["process_cpu_s"] = result.pop("forked_cpu_s") if cpu is None else cpu
        result["process_wall_s"] = time.perf_counter() - wall
        measured[label] = result
        report(label, result)
    if set(labels) == set(firsts) and args.scale == 1.0:
        from dmarl.bench.leaderboard import build_leaderboard

        start, wall = time.process_time(), time.perf_counter()
        build_leaderboard("quickstart", tmp / "leaderboard", tracking_uri=uri)
        board_cpu, board_wall = time.process_time() - start, time.perf_counter() - wall
        order = [measured[c["label"]]["process_cpu_s"] for c in cells]
        longest_first = sorted(order, reverse=True)
        print(f"\nleaderboard build ({len(labels)} runs): {board_cpu:.1f} s CPU, {board_wall:.1f} s wall")
        print(f"sum of cell CPU seconds: {sum(order):.0f} s over {len(order)} cells")
        print(
            f"estimated quickstart wall on {args.workers} workers: sweep order "
            f"{(schedule(order, args.workers) + board_wall) / 60:.2f} min, longest first "
            f"{(schedule(longest_first, args.workers) + board_wall) / 60:.2f} min (leaderboard included)"
        )
    if args.cells_json:
        Path(args.cells_json).write_text(json.dumps(measured, indent=1))
    print(f"(runs in {uri})")


def report(label: str, result: dict[str, Any]) -> None:
    phases = result["phases"]
    total = result["process_cpu_s"]
    print(f"\n{label}: {result['status']} score {result['final_score']}; process {total:.1f} s CPU, "
          f"{result['process_wall_s']:.1f} s wall")
    for key, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
        if seconds >= 0.05:
            print(f"  {key:<40} {seconds:8.2f} s  {100 * seconds / total:5.1f} %")
    print(f"  {'(outside the phases: exit, children)':<40} {total - sum(phases.values()):8.2f} s")


if __name__ == "__main__":
    main()
