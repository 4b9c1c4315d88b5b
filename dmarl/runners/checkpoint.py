"""Checkpoints that continue a run bit-for-bit, written atomically (a crash mid-write or a
NaN later never destroys the last good one), and loaded with ``weights_only=True``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dmarl.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.gin"
DEFAULT_ROOT = "dmarl_runs"


def checkpoint_root(root: str | None = None) -> Path:
    return Path(root or os.environ.get("DMARL_CHECKPOINT_DIR") or DEFAULT_ROOT)


def save(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: report it, never unpickle
        raise UserError(f"checkpoint {path} could not be read safely: {err}") from None


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])


def load_algorithm_from_run(run_id: str, tracking_uri: str | None = None) -> Any:
    """Rebuild a trained algorithm (e.g. for `dmarl collect --policy RUN_ID`) from its last
    checkpoint and saved config. Its ``spec`` attribute is the task's EnvSpec."""
    from dmarl import train  # train builds on this module; import at call time

    run_dir = train.saved_run_dir(run_id, tracking_uri)
    settings = train.parse_settings([str(run_dir / CONFIG_FILE)], [])
    spec = train.make_task_env(settings, 1).spec
    algorithm = train.build_algorithm(settings, spec)
    algorithm.load_state_dict(load(run_dir / CHECKPOINT_FILE)["algorithm"])
    return algorithm
