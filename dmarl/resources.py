"""Where dmarl's shipped files live, and the one resolver for the names users type.

Shipped files: the gin configs (``gin/algorithms``, ``gin/tasks``, ``gin/experiments``,
``gin/benchmarks``) and the leaderboard inputs (``leaderboards/references.json``,
``leaderboards/reported/*.csv``).

Layout (a choice): both folders stay at the repository root, because every README command,
gin ``include`` and benchmark entry spells them from there (``gin/experiments/x.gin``). A
wheel ships them inside the package: pyproject maps the packages ``dmarl.gin`` and
``dmarl.leaderboards`` onto those folders (``package-dir``) with their files as package data,
so an installed wheel has ``site-packages/dmarl/gin/...`` and
``site-packages/dmarl/leaderboards/references.json``. The **data root** — the folder that
holds ``gin/`` and ``leaderboards/`` — is therefore the repository root in a source checkout
(editable install, tests) and the package folder in a wheel; :data:`DATA_ROOT` is whichever
exists. Moving the files under ``dmarl/`` instead would have changed every documented path
and every ``include`` line.

Resolution of a relative name (:func:`candidates`), first match wins:

1. the working directory (a user's own file always wins),
2. the data root (``gin/experiments/x.gin`` works from any directory),
3. the data root's ``gin/`` folder (``experiments/x.gin``),

each also tried with ``.gin`` appended when the name does not end in ``.gin``, so
``dmarl train experiments/hasac_simple_spread_cpu`` works. An absolute path is only itself.
`dmarl.config` (train), `dmarl.bench.spec` (bench) and `dmarl.bench.references`
(leaderboard) all resolve through this module.
"""
from __future__ import annotations

from pathlib import Path

from dmarl.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent


def _data_root() -> Path:
    """The repository root when this package sits in a source checkout, else the package."""
    checkout = PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "gin").is_dir():
        return checkout
    return PACKAGE_DIR


DATA_ROOT = _data_root()
GIN_DIR = DATA_ROOT / "gin"
REFERENCES_FILE = DATA_ROOT / "leaderboards" / "references.json"
REPORTED_DIR = DATA_ROOT / "leaderboards" / "reported"
CONFIG_KINDS = ("algorithms", "tasks", "experiments", "benchmarks")


def candidates(name: str | Path) -> list[Path]:
    """Where a file name is looked for, in order (see the module docstring)."""
    path = Path(name)
    names = [path] if str(path).endswith(".gin") else [path, Path(f"{path}.gin")]
    if path.is_absolute():
        return names
    found: list[Path] = []
    for base in (None, DATA_ROOT, GIN_DIR):
        for item in names:
            candidate = item if base is None else base / item
            if candidate not in found:
                found.append(candidate)
    return found


def find(name: str | Path) -> Path | None:
    """The first existing file among :func:`candidates`, resolved; None if there is none."""
    return next((p.resolve() for p in candidates(name) if p.is_file()), None)


def resolve(name: str | Path, what: str = "config file") -> Path:
    """Like :func:`find`, but a missing file is one `UserError` naming where it was looked for."""
    found = find(name)
    if found is None:
        raise UserError(
            f"{what} not found: {name} (looked in the working directory {Path.cwd()} and in {DATA_ROOT}; "
            f"`dmarl.list_configs()` lists the shipped ones)"
        )
    return found


def list_configs(kind: str | None = None) -> list[str]:
    """The shipped gin files as ``kind/name`` (``experiments/hasac_simple_spread_cpu``), sorted;
    ``kind`` is one of ``algorithms``, ``tasks``, ``experiments``, ``benchmarks``."""
    kinds = CONFIG_KINDS if kind is None else (kind,)
    if kind is not None and kind not in CONFIG_KINDS:
        raise UserError(f"unknown config kind {kind!r}; expected one of {', '.join(CONFIG_KINDS)}")
    return sorted(f"{k}/{p.stem}" for k in kinds for p in (GIN_DIR / k).glob("*.gin"))
