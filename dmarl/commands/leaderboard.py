"""`dmarl leaderboard --experiment NAME --out DIR`: leaderboard files from an MLflow experiment."""
from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Read the cell runs of one MLflow experiment (as written by `dmarl bench`; an experiment of plain
`dmarl train` runs is grouped by their algorithm/task/seed tags) and write, into --out:

  leaderboard.md, leaderboard.csv  per task: final score (final/return_mean) mean, std, IQM and a
                                   95% bootstrap interval over seeds; normalised score; env steps
                                   to reach the target score and speed-up (online tasks only);
                                   papers' reported numbers in their own labelled columns (never
                                   used in any statistic)
  aggregate.csv                    per comparison block: IQM of normalised scores pooled over the
                                   tasks every algorithm of the block finished, with interval
  index.html                       all tables (sortable) and plots in one self-contained page
  curves/TASK.png, aggregate.png   learning curves (seed mean and 95% interval vs env steps;
                                   vs gradient updates for offline tasks)
  marl_eval.json                   marl-eval's raw-data layout (environment = task family)

Algorithms are only ranked against algorithms of the same comparison block (a benchmark
comparison; for plain runs, the task family). With fewer than 5 seeds the std, intervals and
P(improvement) carry a caveat. An experiment without a finished run to rank exits 2.

Normalised = 100 (score - random) / (expert - random) with the fixed per-task references of
--references (never computed from the runs being ranked). The sample-efficiency target is the
final score of the best baseline (the comparison's declared `baselines`, else --baseline, else
algorithms registered under dmarl.algorithms.baselines). Cells that are missing, failed or
still interrupted are listed with their reason.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from dmarl.bench.references import DEFAULT_REFERENCES, DEFAULT_REPORTED

    parser = subparsers.add_parser(
        "leaderboard",
        help="build leaderboard tables, plots and HTML from an MLflow experiment",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--experiment", required=True, help="MLflow experiment (for `dmarl bench`: the benchmark's name)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default: leaderboards/EXPERIMENT)")
    parser.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--references", default=None, metavar="FILE", help=f"reference scores file (default: {DEFAULT_REFERENCES})"
    )
    parser.add_argument(
        "--reported", default=None, metavar="DIR", help=f"folder of papers' reported numbers (default: {DEFAULT_REPORTED})"
    )
    parser.add_argument(
        "--baseline", action="append", default=None, metavar="ALGORITHM",
        help="algorithm label that sets the sample-efficiency target (repeatable; overrides the benchmark's)",
    )
    parser.add_argument("--resamples", type=int, default=2000, metavar="N", help="bootstrap resamples (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed: same seed, same intervals (default: 0)")
    parser.set_defaults(func=_leaderboard)


def _leaderboard(args: argparse.Namespace) -> int:
    from dmarl.bench.leaderboard import collect, compute, marl_eval, marl_eval_problems, write
    from dmarl.bench.references import load_references, load_reported
    from dmarl.bench.stats import Bootstrap
    from dmarl.errors import UserError
    from dmarl.validation import check_output_dir

    if args.resamples < 100:
        raise UserError(f"--resamples {args.resamples}: expected at least 100")
    out = args.out or os.path.join("leaderboards", args.experiment)
    check_output_dir(out)
    references, reported = load_references(args.references), load_reported(args.reported)
    data = collect(args.experiment, args.tracking_uri)
    labels = sorted({run.algorithm for run in data.runs})
    unknown = sorted(set(args.baseline or ()) - set(labels))
    if unknown:
        raise UserError(
            f"--baseline {', '.join(unknown)}: not an algorithm label of experiment {args.experiment!r}; "
            f"expected one of: {', '.join(labels) or '(no finished runs)'}"
        )
    board = compute(
        data, references, reported, baselines=args.baseline, boot=Bootstrap(n_resamples=args.resamples, seed=args.seed)
    )
    write(board, out)
    print(f"wrote {out}/: leaderboard.md, leaderboard.csv, aggregate.csv, index.html, marl_eval.json, curves/")
    print(f"{len(board.runs)} finished runs over {len(board.tasks)} tasks in {len(board.blocks)} comparison block(s)")
    for problem in marl_eval_problems(marl_eval(board)):
        print(f"  marl_eval.json: marl-eval's DiagnoseData would flag: {problem}")
    for issue in board.issues:
        print(f"  {issue.state}: {issue.key}{f' — {issue.detail}' if issue.detail else ''}")
    return 0
