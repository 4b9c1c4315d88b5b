"""`dmarl evaluate RUN_ID [--episodes K] [--task T] [--task-kwargs DICT] [--video out.gif]`."""
from __future__ import annotations

import argparse
import ast
from typing import Any

from dmarl.errors import UserError

DESCRIPTION = """\
Load a finished run's policy artifact from MLflow (a local store or a remote tracking server;
the run's local directory is not needed), evaluate it with deterministic actions on its own
task or on another task with the same agent layout (e.g. a shifted variant via --task-kwargs),
print the mean and std of the episode returns and log them to the run as
evaluate/<task>[/<key>:<value>...]/return_mean and return_std. --video records one episode
as a GIF (MPE and MaMuJoCo tasks), also logged to the run under evaluate/.
"""

EPILOG = """\
examples:
  dmarl evaluate RUN_ID --episodes 20
  dmarl evaluate RUN_ID --task-kwargs "{'local_ratio': 0.9}" --video spread.gif
  dmarl evaluate RUN_ID --tracking-uri http://127.0.0.1:5000
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a trained run's policy (any task with its agent layout), optionally as a GIF",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="MLflow run id of a finished dmarl train run")
    parser.add_argument("--episodes", type=int, default=10, metavar="K", help="episodes to evaluate (default: 10)")
    parser.add_argument("--task", default=None, help="task to evaluate on (default: the run's task; see `dmarl info`)")
    parser.add_argument(
        "--task-kwargs", default=None, metavar="DICT",
        help="task keyword arguments as a Python/JSON dict, e.g. \"{'local_ratio': 0.9}\" (with --task they replace "
        "the run's own task kwargs, else they update them)",
    )
    parser.add_argument("--seed", type=int, default=1_000_000, help="first episode seed (default: 1000000, as training)")
    parser.add_argument("--num-envs", type=int, default=10, metavar="E", help="parallel env copies (default: 10)")
    parser.add_argument("--video", default=None, metavar="PATH.gif", help="record one episode as an animated GIF")
    parser.add_argument("--video-frames", type=int, default=300, metavar="N", help="at most N frames (default: 300)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--no-log", action="store_true", help="do not log the result to the run")
    parser.set_defaults(func=_evaluate)


def parse_task_kwargs(text: str | None) -> dict[str, Any] | None:
    """``--task-kwargs`` as a dict, or one UserError."""
    if text is None:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise UserError(f"--task-kwargs {text!r}: expected a dict literal with string keys, e.g. \"{{'N': 4}}\"")
    return value


def _evaluate(args: argparse.Namespace) -> int:
    from dmarl.render import prefer_headless_gl

    if args.video is not None:
        prefer_headless_gl()  # before anything imports mujoco
    from dmarl.policy_eval import evaluate_run

    result = evaluate_run(
        args.run_id, episodes=args.episodes, task=args.task, task_kwargs=parse_task_kwargs(args.task_kwargs),
        seed=args.seed, num_envs=args.num_envs, video=args.video, video_frames=args.video_frames,
        tracking_uri=args.tracking_uri, log=not args.no_log,
    )
    print(f"run {result.run_id} ({result.algorithm}) on {result.label}: return {result.mean:.3f} +- {result.std:.3f} "
          f"over {len(result.returns)} episodes")
    if result.video is not None:
        video = result.video
        print(f"video: {video['path']} ({video['frames']} frames of {video['shape'][1]}x{video['shape'][0]})")
    if not args.no_log:
        print(f"logged to run {result.run_id} as evaluate/{result.label}/return_mean")
    return 0
