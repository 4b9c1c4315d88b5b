"""Fixed per-task reference scores (random and expert) for normalised scores, and the papers'
reported numbers shown beside measured ones.

References live in one versioned file (``leaderboards/references.json``, shipped in the wheel;
located by `dmarl.resources`) and are never
computed from the runs being ranked. Reported numbers are CSV files in
``leaderboards/reported/`` with the columns ``task, algorithm, mean, std, steps, source``.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmarl.errors import UserError
from dmarl.resources import REFERENCES_FILE as DEFAULT_REFERENCES, REPORTED_DIR as DEFAULT_REPORTED
REPORTED_COLUMNS = ("task", "algorithm", "mean", "std", "steps", "source")


@dataclass(frozen=True)
class Reference:
    """Random and expert scores of one task, with where they come from."""

    name: str
    random: float
    expert: float
    source: str


@dataclass(frozen=True)
class References:
    """The references file: its version and one reference per task name or alias."""

    version: str
    path: str
    by_name: dict[str, Reference]

    def lookup(self, *names: str | None) -> Reference | None:
        """The reference for the first name that matches a task name or alias exactly, or,
        for a dataset id, whose path starts with ``<reference name>/``."""
        for name in names:
            if not name:
                continue
            if name in self.by_name:
                return self.by_name[name]
            parts = name.split("/")
            for cut in range(len(parts) - 1, 0, -1):
                prefix = "/".join(parts[:cut])
                if prefix in self.by_name:
                    return self.by_name[prefix]
        return None


@dataclass(frozen=True)
class Reported:
    """A number reported in a paper (never measured here)."""

    task: str
    algorithm: str
    mean: float
    std: float
    steps: str
    source: str


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def load_references(path: str | Path | None = None) -> References:
    """Read and check a references file (default: the repository's ``leaderboards/references.json``)."""
    file = Path(path) if path else DEFAULT_REFERENCES
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"references file not found: {file}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{file}: invalid JSON: {err}") from None
    if not isinstance(data, dict) or "version" not in data or not isinstance(data.get("tasks"), dict):
        raise UserError(f"{file}: expected an object with 'version' and 'tasks'")
    by_name: dict[str, Reference] = {}
    for name, entry in data["tasks"].items():
        where = f"{file}: task {name!r}"
        if not isinstance(entry, dict) or "source" not in entry:
            raise UserError(f"{where}: expected an object with 'random', 'expert' and 'source'")
        ref = Reference(name, _number(entry.get("random"), where + " random"),
                        _number(entry.get("expert"), where + " expert"), str(entry["source"]))
        if ref.random == ref.expert:
            raise UserError(f"{where}: random and expert must differ")
        for alias in [name, *entry.get("aliases", [])]:
            if alias in by_name:
                raise UserError(f"{where}: name {alias!r} is used twice")
            by_name[alias] = ref
    return References(version=str(data["version"]), path=str(file), by_name=by_name)


def load_reported(directory: str | Path | None = None) -> list[Reported]:
    """Read every ``*.csv`` of the reported-numbers folder (missing folder: no numbers)."""
    folder = Path(directory) if directory else DEFAULT_REPORTED
    rows: list[Reported] = []
    for file in sorted(folder.glob("*.csv")):
        with file.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = set(REPORTED_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise UserError(f"{file}: missing columns {sorted(missing)} (need {', '.join(REPORTED_COLUMNS)})")
            for line, row in enumerate(reader, start=2):
                try:
                    mean = float(row["mean"])
                    std = float(row["std"]) if row["std"].strip() else math.nan
                except ValueError as err:
                    raise UserError(f"{file}:{line}: {err}") from None
                rows.append(Reported(row["task"].strip(), row["algorithm"].strip(), mean, std,
                                     row["steps"].strip(), row["source"].strip()))
    return rows
