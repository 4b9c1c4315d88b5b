"""`dmarl bench BENCHMARK.gin`: run every cell of a benchmark, then build its leaderboard."""
from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Run every cell (algorithm x task/dataset x seed) of a benchmark gin file as one nested MLflow
run under a parent run, then write the leaderboard (see `dmarl leaderboard`).

Cells run in parallel on a local process pool (default: one worker per CPU core, one fresh
process per cell) or on a Ray cluster (--backend ray; --address of a running cluster, else a
local one is started). With Ray on several machines, point --tracking-uri at a shared MLflow
server (`mlflow server --host 0.0.0.0`) that every worker can reach.

Re-running is safe and cheap: finished cells are skipped, interrupted ones resume from their
last checkpoint (or restart if they had none), failed ones are left alone unless
--retry-failed. A crashing cell is marked FAILED with its reason (tag dmarl.failure_reason)
and the others go on. Every cell run is tagged dmarl.cell=ALGORITHM|TASK|SEED.

Safety: every cell's resolved configuration is hashed (tag dmarl.cell.config_sha); a re-run
after a value in a cell's gin files or bindings changed is refused instead of mixing old and
new seeds in one leaderboard row. A cell's budget is explicit: the comparison's budget, else a
binding, else the algorithm entry's gin files (over the task gin's paper budget), else the
task gin; --dry-run prints each cell's budget and where it came from. One `dmarl bench` per
benchmark and tracking store at a time (a second one exits 2); cells stop with their driver
(SIGTERM or kill -9 of the driver leaves no cell process behind).
"""

EPILOG = """\
examples:
  dmarl bench gin/benchmarks/quickstart.gin --dry-run     list cells and estimated cost
  dmarl bench gin/benchmarks/quickstart.gin               run on all local cores
  dmarl bench gin/benchmarks/quickstart.gin --bind "comparison.seeds = 1"
  dmarl bench gin/benchmarks/X.gin --backend ray --address ray://head:10001 \\
      --tracking-uri http://mlflow-host:5000
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark sweep (local pool or Ray) and build its leaderboard",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("benchmark", metavar="BENCHMARK.gin", help="benchmark gin file, e.g. gin/benchmarks/quickstart.gin")
    parser.add_argument(
        "--bind", action="append", default=[], metavar="'X.y = v'",
        help="extra binding for the benchmark gin (repeatable), e.g. \"comparison.seeds = 1\"",
    )
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: the benchmark's name)")
    parser.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    parser.add_argument("--backend", choices=("local", "ray"), default="local", help="where cells run (default: local)")
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="local backend: cells at a time (default: the CPU cores available)",
    )
    parser.add_argument(
        "--address", default=None, metavar="ADDR",
        help="ray backend: address of a running cluster (e.g. auto, ray://head:10001); default: start a local one",
    )
    parser.add_argument(
        "--cpus-per-cell", type=float, default=1.0, metavar="C", help="ray backend: CPUs reserved per cell (default: 1)"
    )
    parser.add_argument("--dry-run", action="store_true", help="list the cells, what would happen to each, and the cost")
    parser.add_argument("--retry-failed", action="store_true", help="train failed cells again as new runs")
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="leaderboard folder (default: leaderboards/EXPERIMENT)"
    )
    parser.add_argument("--no-leaderboard", action="store_true", help="do not build the leaderboard after the sweep")
    parser.add_argument(
        "--progress-every", type=float, default=30.0, metavar="SECONDS",
        help="print a status line per running cell (steps, speed, latest eval return) this often (default 30); "
        "each cell's own output goes to dmarl_runs/logs/EXPERIMENT/CELL.log",
    )
    parser.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from dmarl.bench import spec, sweep
    from dmarl.errors import UserError

    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    bench = spec.load_benchmark(args.benchmark, args.bind)
    experiment = args.experiment or bench.name
    out = args.out or os.path.join("leaderboards", experiment)
    if not args.no_leaderboard and not args.dry_run:
        from dmarl.validation import check_output_dir

        check_output_dir(out, "--out" if args.out else "the leaderboard folder")  # before any cell trains
    if bench.claims:  # fail on a bad claim rule or label before any training
        from dmarl.bench.claims import validate_claims

        validate_claims(bench)
    if args.dry_run:
        cells = spec.expand(bench)
        uri = sweep.resolve_tracking_uri(args.tracking_uri)
        existing = {}
        if sweep.store_exists(uri):
            client = sweep.mlflow_client(uri)
            exp = client.get_experiment_by_name(experiment)
            if exp is not None:
                existing = sweep.cell_runs(client, exp.experiment_id)
        planned = sweep.plan_cells(cells, existing, retry_failed=args.retry_failed)
        print(sweep.format_plan(bench, planned, args.workers or sweep.cpu_cores()))
        return 0
    try:
        result = sweep.run_sweep(
            bench,
            tracking_uri=args.tracking_uri,
            experiment=experiment,
            backend=args.backend,
            workers=args.workers,
            address=args.address,
            cpus_per_cell=args.cpus_per_cell,
            retry_failed=args.retry_failed,
            progress_interval=args.progress_every,
        )
    except sweep.Terminated:
        print("dmarl: bench terminated (SIGTERM): its cells were stopped and their runs marked KILLED; "
              "run the same command again to resume them", file=sys.stderr)
        return 143
    skipped_failed = [p.cell.key for p in result.plan if p.action == "failed"]
    for outcome in result.failed:
        print(f"failed: {outcome.key}: {outcome.error or 'see the run'} (run {outcome.run_id})", file=sys.stderr)
    if skipped_failed:
        print(f"{len(skipped_failed)} cell(s) failed in an earlier invocation and were skipped "
              "(--retry-failed runs them again)", file=sys.stderr)
    if not args.no_leaderboard:
        from dmarl.bench.leaderboard import NothingToRank, build_leaderboard

        try:
            board = build_leaderboard(experiment, out, tracking_uri=result.tracking_uri)
        except NothingToRank as err:  # every cell failed: listed above
            print(f"leaderboard: not written: {err}", file=sys.stderr)
            return 1
        print(f"leaderboard: {out}/index.html ({len(board.runs)} runs, {len(board.issues)} missing or failed cells)")
        sweep.mlflow_client(result.tracking_uri).log_artifacts(result.parent_run_id, out, "leaderboard")
        from dmarl.mlflow_ui import comparison_url

        print(f"MLflow: `mlflow ui --backend-store-uri {result.tracking_uri}`, then open "
              f"{comparison_url('http://127.0.0.1:5000', result.experiment_id)}")
        if bench.claims:  # the claims page sits beside the leaderboard folder: leaderboards/claims/
            from dmarl.bench.claims import bench_command, sweep_wall_s, write_claims

            claims_dir = os.path.join(os.path.dirname(os.path.normpath(out)), "claims")
            wall = sweep_wall_s(experiment, bench.name, result.tracking_uri)
            command = bench_command(bench, args.bind, experiment)
            verdicts = write_claims(bench, experiment, claims_dir, tracking_uri=result.tracking_uri, wall_s=wall,
                                    command=command)
            summary = ", ".join(f"{c['id']} {c['verdict']}" for c in verdicts)
            print(f"claims: {claims_dir}/index.html ({summary})")
    return 1 if result.failed or skipped_failed else 0

