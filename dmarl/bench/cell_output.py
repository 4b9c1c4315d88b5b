"""What a benchmark cell's worker process prints: its training progress goes to the driver
(one status line per running cell), everything else (third-party warnings, MuJoCo messages,
import chatter, library logs) to the cell's log file, never to the user's terminal or
working directory."""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from dmarl.output import route_mujoco_warnings
from dmarl.runners import checkpoint

LOG_DIR = "logs"
SEND_INTERVAL_S = 1.0  # at most one progress message per second per cell
_BAR = re.compile(r"\|[^|]*\|")


def cell_log_path(experiment: str, key: str) -> Path:
    """``<checkpoint root>/logs/<experiment>/<cell key>.log`` (``dmarl_runs/`` by default)."""
    def safe(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)

    return checkpoint.checkpoint_root(None) / LOG_DIR / safe(experiment) / f"{safe(key)}.log"


def progress_text(bar: str) -> str:
    """A tqdm bar line without its bar: ``50% 1200/2400 [00:10<00:10, 120.00step/s, eval return -3.20]``."""
    return " ".join(_BAR.sub(" ", bar).split())


class ProgressWriter:
    """``sys.stderr`` of a cell process: tqdm's bar updates (``\\r``-separated) are sent to the
    driver as ``("progress", text)`` (throttled); whole lines go to ``log``."""

    def __init__(self, conn: Any, log: TextIO) -> None:
        self.conn, self.log = conn, log
        self.last_sent = 0.0
        self.pending = ""

    def write(self, text: str) -> int:
        if "\r" not in text:
            self.log.write(text)
            return len(text)
        latest = [part for part in text.split("\r") if part.strip()]
        if latest:
            self.pending = progress_text(latest[-1])
        now = time.monotonic()
        if self.pending and now - self.last_sent >= SEND_INTERVAL_S:
            self.last_sent = now
            try:
                self.conn.send(("progress", self.pending))
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass  # the driver is gone: training goes on, its MLflow run records the result
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:
        return False


def redirect_cell_output(log_path: Path, conn: Any) -> None:
    """Point this process's stdout and stderr (file descriptors 1 and 2, so C libraries too) at
    ``log_path``, MuJoCo's warnings into it instead of ``MUJOCO_LOG.TXT`` in the working
    directory, and ``sys.stderr`` at a `ProgressWriter` that forwards tqdm progress to ``conn``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    log = sys.__stderr__ if sys.__stderr__ is not None else open(2, "w", closefd=False)
    route_mujoco_warnings()
    sys.stderr = ProgressWriter(conn, log)  # type: ignore[assignment]

