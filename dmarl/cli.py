"""The `dmarl` command. Each subcommand lives in `dmarl/commands/<name>.py` and exposes
``register(subparsers)``; the parser it adds sets ``func(args) -> int``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from dmarl import __version__
from dmarl.errors import UserError

COMMANDS = (
    "dmarl.commands.train",
    "dmarl.commands.info",
    "dmarl.commands.bench",
    "dmarl.commands.leaderboard",
    "dmarl.commands.claims",
    "dmarl.commands.datasets",
    "dmarl.commands.collect",
    "dmarl.commands.evaluate",
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


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `dmarl ... | head`


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 1 a run or cell failed, 2 bad input (one message),
    130 interrupted, 141 stdout closed by the reader."""
    args = build_parser().parse_args(argv)
    try:
        from dmarl.output import quiet_libraries
        from dmarl.validation import preflight

        preflight(args)
        quiet_libraries()
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"dmarl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dmarl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null so that the interpreter's
    final flush does not raise a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
