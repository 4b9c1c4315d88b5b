"""Advisory file locks (``fcntl.flock``) that keep two processes off one benchmark or one cell.

* The **benchmark lock** (one per tracking store and experiment) is held by a ``dmarl bench``
  driver for its whole sweep: a second driver of the same benchmark on the same store stops at
  once with a message naming the holder's pid (instead of training every cell a second time).
* The **store lock** serialises the first contact with a store (a fresh sqlite file is
  migrated then: two processes doing it at once fail with ``duplicate column name``).
* The **cell claim** is held by the worker process that trains a cell (new or resumed run):
  no second process trains that cell while it lives, e.g. a cell still shutting down after its
  driver was killed when a re-run starts.

flock locks belong to the open file: the kernel releases them when the holder dies (even by
``kill -9``), so a lock is never stale; the pid written into the file is only for messages.
Locks live next to a local sqlite store (``<db>.locks/``), beside a file store, or, for a
remote server, under ``$XDG_CACHE_HOME/dmarl/locks/<hash of the URI>/``: they protect the
processes of one machine (with Ray on several machines the cell claims do not cross machines).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path
from types import TracebackType

from dmarl.errors import UserError


class LockUnavailable(UserError):
    """The lock file cannot be created (no such or no writable folder)."""


class LockBusy(UserError):
    """Another live process holds the lock."""


def lock_dir(tracking_uri: str) -> Path:
    """Where the locks of a tracking store live (created on first use)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return db.with_name(db.name + ".locks")
    if tracking_uri.startswith("file://"):
        store = Path(tracking_uri[len("file://"):])
        return store.with_name(store.name + ".locks")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dmarl" / "locks" / hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    """A file name for ``name``: readable prefix plus a hash (names may hold '/' or '|')."""
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


class FileLock:
    """An exclusive flock on ``path``; the holder's pid and a note are written into the file."""

    def __init__(self, path: Path, note: str = "") -> None:
        self.path = path
        self.note = note
        self._fd: int | None = None

    def holder(self) -> str:
        """What the file says about its current holder (for messages)."""
        try:
            return self.path.read_text().strip() or "unknown process"
        except OSError:
            return "unknown process"

    def acquire(self, timeout: float = 0.0, poll: float = 0.2) -> bool:
        """Take the lock, waiting up to ``timeout`` seconds; False when another process holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise LockUnavailable(f"cannot create the lock file {self.path}: {err.strerror}") from None
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}{f', {self.note}' if self.note else ''}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def benchmark_lock(tracking_uri: str, experiment: str) -> FileLock:
    """Take the lock of ``experiment`` on this store, or raise one UserError naming its holder."""
    lock = FileLock(lock_dir(tracking_uri) / f"bench-{_safe(experiment)}.lock", f"dmarl bench {experiment}")
    if not lock.acquire():
        raise LockBusy(
            f"benchmark {experiment!r} is already running on {tracking_uri} ({lock.holder()}; lock "
            f"{lock.path}). Wait for it to finish (a re-run then skips the finished cells), stop it, "
            "or use another --experiment."
        )
    return lock


def store_lock(tracking_uri: str, timeout: float = 120.0) -> FileLock:
    """The short lock around a process's first contact with a store (creation/migration)."""
    lock = FileLock(lock_dir(tracking_uri) / "store.lock", "opening the tracking store")
    if not lock.acquire(timeout):
        raise UserError(f"the tracking store {tracking_uri} stayed locked for {timeout:.0f} s ({lock.holder()})")
    return lock


def cell_claim(tracking_uri: str, experiment: str, cell_key: str, timeout: float = 30.0) -> FileLock:
    """Claim a cell for this process; raise UserError when another process keeps it ``timeout`` s."""
    lock = FileLock(
        lock_dir(tracking_uri) / "cells" / _safe(experiment) / f"{_safe(cell_key)}.lock",
        f"training cell {cell_key} of {experiment}",
    )
    if not lock.acquire(timeout):
        raise LockBusy(
            f"cell {cell_key} is being trained by another process ({lock.holder()}); "
            "not training it a second time"
        )
    return lock
