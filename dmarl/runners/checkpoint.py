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

Append-only row chunks (a replay buffer): a dict anywhere in the payload that holds the key
:data:`CHUNKED_ROWS` (see ``ReplayBuffer.state_dict``) is written as row chunks, each row
once, into ``checkpoint.pt.rows/`` beside the payload, so a checkpoint costs what was added
since the previous one, not the whole buffer. Such a dict holds ``data`` (the ring's rows,
``[size, ...]`` per field) and ``CHUNKED_ROWS = {"capacity", "added", "clean_until", "chunks"}``:
``added`` counts the rows ever added (row ``i`` lives at ring position ``i % capacity``),
rows ``>= clean_until`` changed since the last save, and ``chunks`` lists the files already
written (``{"file", "start", "stop", "sha256"}``, rows ``[start, stop)``). :func:`save`
writes rows ``[clean_until, added)`` as one new chunk (content-addressed name), stores the
payload with the chunk list instead of ``data``, deletes the chunks no longer needed (all
their rows overwritten by the ring or rewritten later) only after the payload is in place,
and then records the new list in that same dict (the buffer's own record). :func:`load`
checks every chunk's sha256 and rebuilds ``data``; a missing or altered chunk is refused
like a corrupt payload.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from dmarl.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"
CHECKSUM_SUFFIX = ".sha256"
CONFIG_FILE = "config.gin"
DEFAULT_ROOT = "dmarl_runs"
ROWS_SUFFIX = ".rows"
CHUNKED_ROWS = "chunked_rows"


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


def rows_dir(path: Path) -> Path:
    """The folder of the row chunks of checkpoint ``path``."""
    return path.with_name(path.name + ROWS_SUFFIX)


def checkpoint_files(path: Path) -> list[tuple[Path, str]]:
    """Every file of checkpoint ``path`` with its folder relative to ``path``'s (for copying a
    checkpoint whole, e.g. as MLflow artifacts): the payload, its sidecar and its row chunks."""
    files = [(path, ""), (checksum_path(path), "")]
    folder = rows_dir(path)
    if folder.is_dir():
        files += [(chunk, folder.name) for chunk in sorted(folder.iterdir())]
    return [(file, where) for file, where in files if file.is_file()]


def _chunked(obj: Any) -> list[dict[str, Any]]:
    """The dicts in ``obj`` (nested dicts) that hold append-only rows."""
    if not isinstance(obj, dict):
        return []
    if CHUNKED_ROWS in obj:
        return [obj]
    return [found for value in obj.values() for found in _chunked(value)]


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _write_chunk(folder: Path, data: dict[str, torch.Tensor], capacity: int, start: int, stop: int) -> dict[str, Any]:
    """Rows ``[start, stop)`` (ring positions ``i % capacity`` of ``data``) as one chunk file."""
    rows = torch.arange(start, stop) % capacity
    chunk = {key: value[rows] for key, value in data.items()}  # a copy: never the whole storage
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".rows-{start}-{stop}.tmp"
    torch.save(chunk, tmp)
    digest = sha256_file(tmp)
    name = f"rows-{start:012d}-{stop:012d}-{digest[:16]}.pt"
    _fsync_replace(tmp, folder / name)
    return {"file": name, "start": start, "stop": stop, "sha256": digest}


def _chunk_rows(state: dict[str, Any], folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stored form of one chunked dict (chunk list instead of ``data``), writing the rows
    that changed since the last save into a new chunk."""
    info = state[CHUNKED_ROWS]
    capacity, added = int(info["capacity"]), int(info["added"])
    oldest = max(0, added - capacity)  # rows before this one are overwritten in the ring
    start = max(int(info.get("clean_until", added)), oldest)
    for chunk in info["chunks"]:  # a chunk absent here (another folder, deleted): rewrite its rows
        if chunk["stop"] > oldest and not (folder / chunk["file"]).is_file():
            start = max(min(start, int(chunk["start"])), oldest)
    live = [dict(c) for c in info["chunks"]
            if c["stop"] > oldest and c["start"] < start and (folder / c["file"]).is_file()]
    if start < added:
        live.append(_write_chunk(folder, state["data"], capacity, start, added))
    stored = {key: value for key, value in state.items() if key not in ("data", CHUNKED_ROWS)}
    stored[CHUNKED_ROWS] = {"capacity": capacity, "added": added, "chunks": live}
    return stored, live


def _stored_payload(payload: dict[str, Any], folder: Path) -> tuple[dict[str, Any], list[tuple[dict, list]]]:
    """``payload`` with every chunked dict replaced by its stored form; (dict, new list) pairs."""
    updates: list[tuple[dict, list]] = []

    def convert(obj: Any) -> Any:
        if not isinstance(obj, dict):
            return obj
        if CHUNKED_ROWS in obj:
            stored, live = _chunk_rows(obj, folder)
            updates.append((obj[CHUNKED_ROWS], live))
            return stored
        return {key: convert(value) for key, value in obj.items()}

    return convert(payload), updates


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically, with its sha256 in ``path.sha256`` (row chunks
    of append-only dicts beside it, see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = rows_dir(path)
    stored, updates = _stored_payload(payload, folder)
    tmp = path.with_suffix(".tmp")
    torch.save(stored, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    new = sha256_file(tmp)
    old = [d for d in _listed_checksums(path) if d != new][:1] if path.is_file() else []
    _write_checksums(path, old + [new])
    os.replace(tmp, path)
    _write_checksums(path, [new])
    keep = {c["file"] for _, live in updates for c in live}
    if folder.is_dir():  # only now: the previous payload's chunks are no longer needed
        for stale in folder.iterdir():
            if stale.name not in keep:
                stale.unlink()
    for info, live in updates:
        info["chunks"] = [dict(c) for c in live]
        info["clean_until"] = int(info["added"])


def _verified_payload_file(path: Path) -> None:
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


def _read_chunk(path: Path, chunk: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A chunk's tensors, after checking its sha256 against the payload's list."""
    file = rows_dir(path) / str(chunk["file"])
    if not file.is_file():
        raise UserError(f"checkpoint {path}: row chunk {file.name} is missing from {file.parent}; refusing to load it")
    blob = file.read_bytes()
    if hashlib.sha256(blob).hexdigest() != chunk["sha256"]:
        raise UserError(
            f"checkpoint {path}: row chunk {file.name} is corrupt (sha256 does not match the checkpoint's list); "
            "refusing to load it"
        )
    try:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt or foreign file: report it, never unpickle
        raise UserError(f"checkpoint {path}: row chunk {file.name} could not be read safely: {err}") from None


def _restore_rows(path: Path, state: dict[str, Any], materialise: bool) -> None:
    """Check the chunks of one stored chunked dict; with ``materialise``, rebuild its ``data``."""
    info = state[CHUNKED_ROWS]
    capacity, added = int(info["capacity"]), int(info["added"])
    oldest, size = max(0, added - capacity), min(added, capacity)
    data: dict[str, torch.Tensor] = {}
    for chunk in info["chunks"]:
        rows = _read_chunk(path, chunk)
        if not materialise:
            continue
        first = max(int(chunk["start"]), oldest)
        for key, value in rows.items():
            if key not in data:
                data[key] = torch.zeros((size, *value.shape[1:]), dtype=value.dtype)
            positions = torch.arange(first, int(chunk["stop"])) % capacity
            data[key][positions] = value[first - int(chunk["start"]):]
    if materialise:
        state["data"] = data


def _load_payload(path: Path, materialise: bool) -> dict[str, Any]:
    _verified_payload_file(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt or foreign file: report it, never unpickle
        raise UserError(f"checkpoint {path} could not be read safely: {err}") from None
    if not isinstance(payload, dict):
        raise UserError(f"checkpoint {path}: expected a dict payload; found {type(payload).__name__}")
    for state in _chunked(payload):
        _restore_rows(path, state, materialise)
    return payload


def verify(path: Path) -> None:
    """Raise one UserError unless ``path`` exists, matches a digest in its sidecar and every
    row chunk it lists matches its sha256."""
    _load_payload(path, materialise=False)


def is_verified(path: Path) -> bool:
    try:
        verify(path)
    except UserError:
        return False
    return True


def load(path: Path) -> dict[str, Any]:
    """The verified payload of a checkpoint (never unpickles arbitrary objects); chunked rows
    come back as ``data`` tensors, their chunk list kept for the next :func:`save`."""
    return _load_payload(path, materialise=True)


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
