"""`dmarl train CONFIG.gin [--bind ...] [--tracking-uri URI] [--experiment NAME] [--resume RUN_ID]`."""
from __future__ import annotations

import argparse
import sys

from dmarl.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one algorithm on one task (online or offline) and track it in MLflow",
        description="Train one (algorithm, task, seed) run configured by gin files. "
        "The run, its params, tags, metrics, operative config and final checkpoint are logged to MLflow.",
    )
    parser.add_argument("config", nargs="*", help="gin config file(s), e.g. experiments/hasac_simple_spread_cpu (or a path to a .gin file)")
    parser.add_argument("--bind", action="append", default=[], metavar="'X.y = v'", help="extra gin binding (repeatable)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment name (default: dmarl)")
    parser.add_argument("--run-name", default=None, help="MLflow run name (default: ALGORITHM-TASK-sSEED)")
    parser.add_argument(
        "--resume", default=None, metavar="RUN_ID",
        help="continue an interrupted run from its last checkpoint, with its own saved config",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--upload-checkpoint", action="store_true",
        help="also log the resume checkpoint (replay buffer, optimisers) to MLflow; by default only the small "
        "policy artifact is logged and the checkpoint stays in the local run directory (run.upload_checkpoint)",
    )
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from dmarl.train import RunTerminated, run_training

    if not args.config and not args.resume:
        raise UserError("dmarl train needs a CONFIG.gin file (or --resume RUN_ID)")
    if args.resume and (args.config or args.bind):
        print("dmarl: note: --resume continues with the run's saved config; CONFIG and --bind are ignored")
    try:
        result = run_training(
            args.config, args.bind + (["run.upload_checkpoint = True"] if args.upload_checkpoint else []),
            tracking_uri=args.tracking_uri, experiment=args.experiment,
            resume_run_id=args.resume, run_name=args.run_name, progress=not args.no_progress,
        )
    except RunTerminated as err:
        where = (f"run {err.run_id} is marked KILLED and keeps its last checkpoint; continue it with "
                 f"`dmarl train --resume {err.run_id}`") if err.run_id else "no run was started"
        print(f"dmarl: terminated by {err.signame}; {where}", file=sys.stderr)
        return int(err.code)
    score = "n/a" if result.final_score is None else f"{result.final_score:.3f}"
    print(f"run {result.run_id}: {result.status}, final eval return {score}")
    return 0 if result.status == "FINISHED" else 1  # exit codes: 2 bad input, 143 SIGTERM
