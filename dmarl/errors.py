"""User-facing errors: the CLI prints their message (no traceback) and exits with code 2."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, names, files, datasets). Exit code 2."""


class NonFiniteLossError(RuntimeError):
    """A loss or metric became NaN/Inf during training; the run stops and is marked failed."""
