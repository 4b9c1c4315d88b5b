"""`dmarl collect`: generate an offline dataset by running a policy on a task."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Run a policy on E parallel copies of a task until K episodes have finished, and write those
complete episodes, with provenance (env, package versions, policy, seed, returns), in the
native format or as an OG-MARL-compatible vault. Nothing is written if anything fails.
"""

EPILOG = """\
examples:
  dmarl collect --task toy/bandit --policy random --episodes 1000 --out bandit_random
  dmarl collect --task mpe/simple_spread_n3 --policy RUN_ID --episodes 200 \\
      --out vaults/dmarl/mpe/simple_spread_n3.vlt/expert --format vault
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="generate an offline dataset from a random or trained policy",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", required=True, help="task name (see `dmarl info`)")
    parser.add_argument(
        "--policy",
        required=True,
        metavar="random|RUN_ID",
        help="'random' (uniform actions in [-1, 1]) or the MLflow run id of a trained algorithm",
    )
    parser.add_argument("--episodes", type=int, required=True, metavar="K", help="complete episodes to keep")
    parser.add_argument("--out", required=True, metavar="PATH", help="output directory (a vault: its <UID> directory)")
    parser.add_argument(
        "--format", choices=("native", "vault"), default="native", help="output format (default: native)"
    )
    parser.add_argument("--seed", type=int, default=0, help="env and random-policy seed (default: 0)")
    parser.add_argument("--num-envs", type=int, default=8, metavar="E", help="parallel env copies (default: 8)")
    parser.add_argument("--global-obs", action="store_true", help="global-observation mode (state + agent one-hot)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI to find RUN_ID in")
    parser.add_argument(
        "--force", action="store_true", help="overwrite an existing PATH that is a dataset dmarl wrote (nothing else)"
    )
    parser.set_defaults(func=_collect)


def _collect(args: argparse.Namespace) -> int:
    from dmarl.envs.datasets import write_dataset
    from dmarl.envs.datasets.collect import collect, random_policy, run_policy
    from dmarl.envs.datasets.common import check_output, write_errors_as_user_errors
    from dmarl.envs.factory import make_env
    from dmarl.errors import UserError
    from dmarl.registry import UnknownNameError

    if args.episodes < 1 or args.num_envs < 1:
        raise UserError("--episodes and --num-envs must be at least 1")
    check_output(args.out, args.force)  # before collecting: fail in a second
    try:
        env = make_env(args.task, args.num_envs, global_obs=args.global_obs)
    except UnknownNameError as err:
        raise UserError(str(err)) from None
    try:
        if args.policy == "random":
            policy, name = random_policy(env, args.seed), "random"
        else:
            policy, name = run_policy(args.policy, args.tracking_uri, env), f"run:{args.policy}"
        dataset = collect(env, policy, args.episodes, seed=args.seed, policy_name=name)
    finally:
        env.close()
    dataset.metadata["provenance"].update(task=args.task, global_obs=args.global_obs, tracking_uri=args.tracking_uri)
    with write_errors_as_user_errors(args.out):
        out = write_dataset(dataset, args.out, args.format, force=args.force)
    stats = dataset.return_stats()
    print(
        f"wrote {out} ({args.format}): {len(dataset.episodes)} episodes, {len(dataset)} transitions, "
        f"return mean {stats['mean']:.4g} (std {stats['std']:.4g}, min {stats['min']:.4g}, max {stats['max']:.4g})"
    )
    return 0
