"""`dmarl claims CLAIMS.gin ...`: rebuild claims sections and the claims page from MLflow runs."""
from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Evaluate the claims a benchmark gin declares (benchmark.claims) on the runs already in its
MLflow experiment, without training, and write its section <out>/<benchmark>.json; then
re-assemble <out>/index.md and index.html from every section in <out>. `dmarl bench` does
this itself after the sweep of a benchmark that declares claims. Claims whose runs are missing
are "not run"; check claims (no training) are computed now. With no gin file, only the page
is re-assembled. Rules and verdicts: dmarl/bench/claims.py.
"""

EPILOG = """\
examples:
  dmarl claims gin/benchmarks/claims_omsd.gin gin/benchmarks/claims_omad.gin
  dmarl claims                                    re-assemble leaderboards/claims/index.*
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "claims",
        help="paper claims page: verdicts from a claims benchmark's MLflow runs (no training)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("benchmarks", nargs="*", metavar="CLAIMS.gin", help="benchmark gin files that declare claims")
    parser.add_argument(
        "--bind", action="append", default=[], metavar="'X.y = v'",
        help="extra binding for the benchmark gins (repeatable), as given to `dmarl bench`",
    )
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: each benchmark's name)")
    parser.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    parser.add_argument("--out", default=os.path.join("leaderboards", "claims"), metavar="DIR",
                        help="claims page folder (default: leaderboards/claims)")
    parser.set_defaults(func=_claims)


def _claims(args: argparse.Namespace) -> int:
    from dmarl.bench.claims import bench_command, sweep_wall_s, write_claims, write_page
    from dmarl.bench.spec import load_benchmark
    from dmarl.errors import UserError

    for path in args.benchmarks:
        bench = load_benchmark(path, args.bind)
        if not bench.claims:
            raise UserError(f"{path}: declares no claims (benchmark.claims)")
        experiment = args.experiment or bench.name
        results = write_claims(
            bench, experiment, args.out, tracking_uri=args.tracking_uri,
            wall_s=sweep_wall_s(experiment, bench.name, args.tracking_uri),
            command=bench_command(bench, args.bind, experiment),
        )
        print(f"{bench.name}: " + ", ".join(f"{r['id']} {r['verdict']}" for r in results))
    if not args.benchmarks:
        os.makedirs(args.out, exist_ok=True)
        write_page(args.out)
    print(f"claims page: {args.out}/index.md, index.html")
    return 0
