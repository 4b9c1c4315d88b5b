"""The `dmarl` command. Each subcommand lives in `dmarl/commands/<name>.py` and exposes
``register(subparsers)``; the parser it adds sets ``func(args) -> int``."""
from __future__ import annotations

import argparse
import importlib
import sys

from dmarl import __version__
from dmarl.errors import UserError

COMMANDS = (
    "dmarl.commands.train",
    "dmarl.commands.info",
    "dmarl.commands.bench",
    "dmarl.commands.leaderboard",
    "dmarl.commands.datasets",
    "dmarl.commands.collect",
    "dmarl.commands.toy_data",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmarl", description="Diffusion-policy multi-agent RL benchmark suite."
    )
    parser.add_argument("--version", action="version", version=f"dmarl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"dmarl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dmarl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
