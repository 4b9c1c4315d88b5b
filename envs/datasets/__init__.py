"""Offline datasets: loaders for OMAR, OG-MARL vaults, OMIGA and the native format.

``load_dataset(path_or_name, task=...)`` detects the format, loads the data as an
:class:`~dmarl.data.offline.OfflineDataset`, validates it against the catalogue and, given a
task, against the task's EnvSpec. ``write_dataset`` writes the native format or a vault.
"""

from __future__ import annotations

import importlib

from pathlib import Path

from dmarl.data.offline import OfflineDataset
from dmarl.envs.base import EnvSpec
from dmarl.envs.datasets import catalogue
from dmarl.envs.datasets.common import dataset_error
from dmarl.errors import UserError

FORMATS = ("native", "vault", "omar", "omiga")
WRITE_FORMATS = ("native", "vault")


def detect_format(path: Path) -> str:
    """``native``, ``vault``, ``omar`` or ``omiga`` from what lies at ``path``."""
    from dmarl.envs.datasets import native, omar

    path = Path(path)
    if path.is_file():
        if path.suffix in (".hdf5", ".h5"):
            return "omiga"
        raise dataset_error(
            path, "format", "a directory (native, vault, OMAR) or an OMIGA .hdf5 file", f"file {path.name}"
        )
    if not path.is_dir():
        raise dataset_error(
            path, "path", "an existing dataset directory or file, or a catalogue name", "no such file or directory"
        )
    if native.is_native(path):
        return "native"
    if (path / "metadata.json").is_file() or (path / "manifest.ocdbt").is_file() or path.name.endswith(".vlt"):
        return "vault"
    if omar.SEED_DIR.fullmatch(path.name) or any(omar.SEED_DIR.fullmatch(p.name) for p in path.iterdir()):
        return "omar"
    raise dataset_error(
        path,
        "format",
        "native (metadata.json with format dmarl-native), a vault (<UID>/metadata.json + manifest.ocdbt), "
        "OMAR (seed_<k>_data/ directories) or OMIGA (.hdf5)",
        "none of these",
    )


LAYOUT_HINTS = {
    "vault": "metadata.json, manifest.ocdbt and d/ directly inside",
    "omar": "its seed_<k>_data/ directories (obs_0.npy, acs_0.npy, ...) inside",
    "omiga": "the .hdf5 file itself",
}


def missing_message(entry: catalogue.CatalogueEntry) -> str:
    """Where to download a catalogue dataset and where to put it."""
    return (
        f"dataset {entry.name} is not present locally.\n"
        f"  get it from: {entry.download}\n"
        f"  put it at:   {entry.path().absolute()}  ({LAYOUT_HINTS[entry.format]})\n"
        f"  data root:   ${catalogue.DATA_DIR_ENV} (default ./{catalogue.DEFAULT_DATA_DIR}), "
        f"now {catalogue.data_root().absolute()}"
    )


# Datasets the suite generates itself, by name: made reproducibly under the data root on first use.
GENERATED = {"toy/omsd_bandit": "dmarl.envs.toy_data:ensure_bandit_dataset"}


def resolve(source: str | Path) -> tuple[Path, catalogue.CatalogueEntry | None]:
    """A local path for ``source``: a path, a generated dataset's name (``GENERATED``, made
    under the data root if missing) or a catalogue name resolved under the data root."""
    path = Path(source)
    if path.exists():
        return path, None
    if str(source) in GENERATED:
        module, function = GENERATED[str(source)].split(":")
        return getattr(importlib.import_module(module), function)(catalogue.data_root() / str(source)), None
    entry = catalogue.lookup(str(source))
    if entry is None:
        raise dataset_error(
            path, "path", "an existing dataset path or a catalogue name (see `dmarl datasets list`)", "neither"
        )
    if not entry.path().exists():
        raise UserError(missing_message(entry))
    return entry.path(), entry


def catalogue_entry(source: str | Path) -> catalogue.CatalogueEntry | None:
    """The catalogue entry of a dataset name, or of a local path laid out as the catalogue's."""
    entry = catalogue.lookup(str(source))
    path = Path(source)
    if entry is None and path.exists() and str(source) not in GENERATED:
        fmt = detect_format(path)
        entry = catalogue.identify(path, fmt) if fmt != "native" else None
    return entry


def evaluation_task(dataset: str, task: str | None) -> str:
    """The task that evaluates policies trained on ``dataset`` (``run.dataset``): the
    catalogue's when ``task`` is unset, ``task`` when it agrees with the catalogue (or the
    dataset is not a catalogue dataset); otherwise one UserError naming both."""
    entry = catalogue_entry(dataset)
    if entry is None:
        if not task:
            raise UserError(
                f"run.dataset = {dataset!r} is not a catalogue dataset, so it names no task; set run.task "
                "(e.g. include a gin/tasks/*.gin file)"
            )
        return task
    expected = entry.evaluation_task()
    if task and task != expected:
        raise UserError(
            f"run.task = {task!r} does not match run.dataset = {dataset!r}: the catalogue evaluates that dataset on "
            f"task {expected!r} (the environment it was recorded in); set run.task = {expected!r} or leave it unset"
        )
    return expected


def task_spec(task: str, global_obs: bool = False) -> EnvSpec:
    """The EnvSpec of ``task`` (one env copy is built and closed)."""
    from dmarl.envs.factory import make_env
    from dmarl.registry import UnknownNameError

    try:
        env = make_env(task, 1, global_obs=global_obs)
    except UnknownNameError as err:
        raise UserError(str(err)) from None
    try:
        return env.spec
    finally:
        env.close()


def load_dataset(
    source: str | Path,
    *,
    task: str | None = None,
    spec: EnvSpec | None = None,
    global_obs: bool = False,
    reward_convention: str | None = None,
    fmt: str | None = None,
) -> OfflineDataset:
    """Load any supported dataset, validated against the catalogue and the task (if given).

    ``global_obs`` builds the task in global-observation mode (off by default: the OMIGA
    tasks, ``omiga/...``, observe as OMIGA's data do).
    """
    from dmarl.envs.datasets import native, ogmarl, omar, omiga

    path, entry = resolve(source)
    fmt = fmt or detect_format(path)
    known = entry or (catalogue.identify(path, fmt) if fmt != "native" else None)
    if known is not None and known.discrete:
        raise UserError(f"dataset {known.name}: refused: {known.refused}")
    if spec is None and task is not None:
        spec = task_spec(task, bool(global_obs))
    if fmt == "native":
        return native.load_native(path, spec=spec)
    if fmt == "vault":
        return ogmarl.load_vault(path, spec=spec, reward_convention=reward_convention, entry=entry)
    if fmt == "omar":
        return omar.load_omar(path, spec=spec, reward_convention=reward_convention, entry=entry)
    if fmt == "omiga":
        return omiga.load_omiga(path, spec=spec, reward_convention=reward_convention, entry=entry)
    raise UserError(f"unknown dataset format {fmt!r} (valid: {', '.join(FORMATS)})")


def write_dataset(
    dataset: OfflineDataset,
    path: str | Path,
    fmt: str = "native",
    *,
    force: bool = False,
) -> Path:
    """Write ``dataset`` in the native format or as a vault (atomically)."""
    from dmarl.envs.datasets import native, ogmarl

    if fmt == "native":
        return native.write_native(dataset, Path(path), force=force)
    if fmt == "vault":
        return ogmarl.write_vault(dataset, Path(path), force=force)
    raise UserError(f"cannot write format {fmt!r} (valid: {', '.join(WRITE_FORMATS)})")


__all__ = [
    "FORMATS",
    "WRITE_FORMATS",
    "catalogue_entry",
    "detect_format",
    "evaluation_task",
    "load_dataset",
    "missing_message",
    "resolve",
    "task_spec",
    "write_dataset",
]
