"""Checkpoints that continue a run bit-for-bit, written atomically (a crash mid-write or a
NaN later never destroys the last good one), checksummed, and loaded with ``weights_only=True``.

Every ``checkpoint.pt`` has a sidecar ``checkpoint.pt.sha256`` in ``sha256sum`` format
(``sha256sum -c`` checks it by hand). :func:`load` verifies the payload against it before
unpickling anything, because ``torch.load`` does not check the zip's CRCs: a flipped byte in
a weight tensor would otherwise resume silently to a different result.

The two files are replaced in an order that keeps them consistent at every instant:
(1) the new payload is written to a temporary file and its digest computed; (2) the sidecar
is replaced by one listing the old *and* the new digest; (3) the payload is renamed into
place; (4) the sidecar is replaced by one listing the new digest only. A crash between any
two steps leaves a payload whose digest the sidecar lists.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from dmarl.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"
CHECKSUM_SUFFIX = ".sha256"
CONFIG_FILE = "config.gin"
DEFAULT_ROOT = "dmarl_runs"


def checkpoint_root(root: str | None = None) -> Path:
    return Path(root or os.environ.get("DMARL_CHECKPOINT_DIR") or DEFAULT_ROOT)


def check_writable_dir(path: Path, what: str = "checkpoint directory") -> Path:
    """Create ``path`` (and parents) and prove a file can be written in it, or raise one UserError.

    Called before an MLflow run is created, so a bad ``run.checkpoint_dir`` /
    ``$DMARL_CHECKPOINT_DIR`` never leaves a run behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file; expected a directory (set run.checkpoint_dir or $DMARL_CHECKPOINT_DIR)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".dmarl-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"{what} {path} is not writable ({err.strerror or err}); expected a writable directory "
            "(set run.checkpoint_dir or $DMARL_CHECKPOINT_DIR)"
        ) from None
    return path


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_checksums(path: Path, digests: list[str]) -> None:
    sidecar = checksum_path(path)
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text("".join(f"{d}  {path.name}\n" for d in digests))
    os.replace(tmp, sidecar)


def _listed_checksums(path: Path) -> list[str]:
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return []
    return [line.split()[0] for line in sidecar.read_text().splitlines() if line.strip()]


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically, with its sha256 in ``path.sha256``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    new = sha256_file(tmp)
    old = [d for d in _listed_checksums(path) if d != new][:1] if path.is_file() else []
    _write_checksums(path, old + [new])
    os.replace(tmp, path)
    _write_checksums(path, [new])


def verify(path: Path) -> None:
    """Raise one UserError unless ``path`` exists and matches a digest in its sidecar."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    listed = _listed_checksums(path)
    if not listed:
        raise UserError(
            f"checkpoint {path}: no checksum file {checksum_path(path).name}; expected one written with the "
            "checkpoint, so it cannot be verified (refusing to load it)"
        )
    actual = sha256_file(path)
    if actual not in listed:
        raise UserError(
            f"checkpoint {path} is corrupt: sha256 {actual[:16]}... does not match {checksum_path(path).name} "
            f"({listed[-1][:16]}...); refusing to load it"
        )


def is_verified(path: Path) -> bool:
    try:
        verify(path)
    except UserError:
        return False
    return True


def load(path: Path) -> dict[str, Any]:
    """The verified payload of a checkpoint (never unpickles arbitrary objects)."""
    verify(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: report it, never unpickle
        raise UserError(f"checkpoint {path} could not be read safely: {err}") from None
    if not isinstance(payload, dict):
        raise UserError(f"checkpoint {path}: expected a dict payload; found {type(payload).__name__}")
    return payload


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])


def load_algorithm_state(algorithm: Any, payload: dict[str, Any], path: Path, algorithm_name: str) -> None:
    """Load ``payload["algorithm"]`` into ``algorithm``, refusing another algorithm's checkpoint
    with one UserError (name recorded in the payload, or a state-dict mismatch)."""
    stored = payload.get("algorithm_name")
    if stored is not None and stored != algorithm_name:
        raise UserError(
            f"checkpoint {path} holds algorithm {stored!r}; expected {algorithm_name!r} (the run's config)"
        )
    if "algorithm" not in payload:
        raise UserError(f"checkpoint {path}: key 'algorithm' missing; expected a dmarl training checkpoint")
    try:
        algorithm.load_state_dict(payload["algorithm"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"checkpoint {path} does not fit algorithm {algorithm_name!r}: {first[:300]}"
        ) from None


def load_algorithm_from_run(run_id: str, tracking_uri: str | None = None) -> Any:
    """Rebuild a trained algorithm (e.g. for `dmarl collect --policy RUN_ID`) from its last
    checkpoint and saved config. Its ``spec`` attribute is the task's EnvSpec."""
    from dmarl import train  # train builds on this module; import at call time

    run_dir = train.saved_run_dir(run_id, tracking_uri)
    settings = train.parse_settings([str(run_dir / CONFIG_FILE)], [])
    spec = train.make_task_env(settings, 1).spec
    algorithm = train.build_algorithm(settings, spec)
    path = run_dir / CHECKPOINT_FILE
    load_algorithm_state(algorithm, load(path), path, settings.algorithm)
    return algorithm
