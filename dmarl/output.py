"""Third-party output kept off the user's terminal and working directory: MLflow's and
alembic's INFO logs, MuJoCo's warning file. (A benchmark cell's whole output goes to its log
file: `dmarl.bench.cell_output`.)"""
from __future__ import annotations

import logging
import sys

QUIET_LOGGERS = ("mlflow", "alembic")


def quiet_libraries() -> None:
    """Only warnings and errors from MLflow and alembic (no store-creation INFO lines), and
    MuJoCo's warnings on stderr instead of in ``MUJOCO_LOG.TXT`` in the working directory."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    route_mujoco_warnings()


def route_mujoco_warnings() -> None:
    """MuJoCo's warnings (e.g. settotalmass) to whatever ``sys.stderr`` is when one fires (a
    benchmark cell's log), rather than MuJoCo's default handler, which prints them and appends
    them to ``MUJOCO_LOG.TXT`` in the working directory."""
    try:
        import mujoco
    except ImportError:
        return
    mujoco.set_mju_user_warning(_mujoco_warning)


def _mujoco_warning(message: str) -> None:
    # Called from C: an exception escaping here aborts the process, so a stream that cannot
    # take the line (closed by its owner, e.g. a test's capture) drops it instead.
    try:
        print(f"MuJoCo warning: {message}", file=sys.stderr, flush=True)
    except (ValueError, OSError, AttributeError):
        return
