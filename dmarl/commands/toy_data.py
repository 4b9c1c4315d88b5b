"""`dmarl datasets make-bandit --out PATH`: write the OMSD bandit dataset (paper 004, Sec. 4.1).

Adds a subcommand to the ``datasets`` command registered by `dmarl.commands.datasets`
(listed before this module in ``dmarl.cli.COMMANDS``); the generator is
`dmarl.envs.toy_data.make_bandit_dataset`.
"""
from __future__ import annotations

import argparse

BOUNDARIES = ("none", "resample", "clip")  # = dmarl.envs.toy_data.BOUNDARIES (not imported: keeps the CLI light)
DEFAULT_BOUNDARY = "none"

HELP = "write the OMSD bandit dataset (1e6 joint actions from a 2-Gaussian mixture) in the native format"
DESCRIPTION = """\
Generate the dataset of the OMSD paper's two-agent bandit (r = a1 * a2): joint actions from
the equal mixture of N((0.8, 0.8), 0.3^2 I) and N((-0.8, -0.8), 0.3^2 I), stored as drawn
(the paper's description; --boundary resample redraws samples outside [-1, 1], --boundary clip
clips them), one-step episodes, reproducible from --seed. Train on
it with run.task = 'toy/bandit' and run.dataset = PATH.
"""


def _datasets_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    parser = subparsers.choices.get("datasets")
    if parser is None:
        raise RuntimeError("dmarl.commands.toy_data must be listed after dmarl.commands.datasets in COMMANDS")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("the datasets command has no subcommands")


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = _datasets_subparsers(subparsers)
    parser = sub.add_parser(
        "make-bandit", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="output directory (native format)")
    parser.add_argument("--size", type=int, default=1_000_000, metavar="N", help="joint actions (default: 1000000)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    parser.add_argument(
        "--boundary", choices=BOUNDARIES, default=DEFAULT_BOUNDARY,
        help="'none' (default): store the draws as they are (the paper); 'resample': redraw those outside "
        "[-1, 1]; 'clip': clip them to [-1, 1] (as an env that clips its inputs would record)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing PATH")
    parser.set_defaults(func=_make_bandit)


def _make_bandit(args: argparse.Namespace) -> int:
    from dmarl.envs.toy_data import make_bandit_dataset
    from dmarl.envs.datasets import write_dataset
    from dmarl.errors import UserError

    if args.size < 1:
        raise UserError("--size must be at least 1")
    dataset = make_bandit_dataset(args.size, args.seed, boundary=args.boundary)
    out = write_dataset(dataset, args.out, "native", force=args.force)
    stats = dataset.return_stats()
    print(
        f"wrote {out}: {len(dataset)} joint actions (seed {args.seed}, boundary {args.boundary}), "
        f"mean reward {stats['mean']:.4f}"
    )
    return 0
