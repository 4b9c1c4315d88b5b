"""Helpers shared by every dataset loader and writer.

- checked reads: ``.npy`` (never pickles), JSON, shapes, finite values — each failure is one
  :class:`~dmarl.errors.UserError` naming the file, the key and what was expected;
- episode assembly: segmenting step sequences at episode ends, reducing per-agent rewards
  to the team reward, padding heterogeneous agents;
- conformance of a dataset with a task's :class:`~dmarl.envs.base.EnvSpec`;
- action range: the suite's envs and policies act in [-1, 1] (``ACTION_RANGE``); every loaded
  dataset's actions must lie there, unless its metadata declares ``action_range`` None (data
  recorded without an action box, e.g. the OMSD bandit drawn as in the paper);
- atomic output: writers fill a temporary sibling and rename it into place, so nothing is
  written or overwritten when anything fails. An existing output is replaced only with
  ``force`` and only when it is a dataset dmarl wrote (its metadata says so and it holds
  nothing else), never the current directory or one above it, and never the source being
  converted or a folder holding it (``check_output``).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

import dmarl
from dmarl.data.offline import EpisodeIndex, OfflineDataset
from dmarl.envs.base import REWARD_CONVENTIONS, EnvSpec
from dmarl.errors import UserError

if TYPE_CHECKING:
    from dmarl.envs.datasets.catalogue import CatalogueEntry

FINITE_CHECK_ROWS = 1 << 16  # rows per chunk when scanning (memory-mapped) arrays for NaN/Inf
ACTION_RANGE = (-1.0, 1.0)  # the suite's action convention
RETURNS_RTOL = 1e-6  # stored vs recomputed episode returns: relative to the episode's sum of |reward|
NATIVE_FORMAT = "dmarl-native"  # = native.FORMAT (native imports this module)
VAULT_ENTRIES = frozenset({"metadata.json", "manifest.ocdbt", "d"})  # what write_vault leaves in a <UID> folder


def dataset_error(file: Path | str, key: str, expected: str, found: str) -> UserError:
    """The one-line error every loader raises: file, key, what was expected, what was found."""
    return UserError(f"dataset {file}: {key}: expected {expected}; found {found}")


def shape_str(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("T" if d is None else str(d) for d in shape) + ")"


def check_shape(file: Path | str, key: str, shape: Sequence[int], expected: Sequence[int | None]) -> None:
    """``expected`` may hold None for free axes (the time axis)."""
    if len(shape) != len(expected) or any(e is not None and e != s for s, e in zip(shape, expected)):
        raise dataset_error(file, key, f"shape {shape_str(expected)}", f"shape {tuple(shape)}")


def check_finite(file: Path | str, key: str, array: np.ndarray) -> None:
    """Raise if ``array`` holds NaN or Inf (scanned in chunks, so memory maps stay cheap)."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    for start in range(0, array.shape[0], FINITE_CHECK_ROWS):
        chunk = np.asarray(array[start : start + FINITE_CHECK_ROWS])
        bad = ~np.isfinite(chunk)
        if bad.any():
            row = start + int(np.argwhere(bad)[0][0])
            raise dataset_error(file, key, "finite values", f"NaN/Inf at row {row}")


def action_range(metadata: dict[str, Any]) -> tuple[float, float] | None:
    """The action bounds a dataset's metadata declares: ``ACTION_RANGE`` unless it says
    ``action_range`` None (unbounded) or gives other bounds."""
    value = metadata.get("action_range", ACTION_RANGE)
    return None if value is None else (float(value[0]), float(value[1]))


def array_min_max(array: np.ndarray) -> tuple[float, float]:
    """Min and max of a (memory-mapped) float array, scanned in chunks; (0, 0) when empty."""
    low, high = np.inf, -np.inf
    for start in range(0, array.shape[0], FINITE_CHECK_ROWS):
        chunk = np.asarray(array[start : start + FINITE_CHECK_ROWS])
        if chunk.size:
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    return (0.0, 0.0) if low > high else (low, high)


def check_action_range(file: Path | str, actions: np.ndarray, bounds: tuple[float, float] | None) -> None:
    """Raise if any action lies outside ``bounds`` (None: no bounds)."""
    if bounds is None:
        return
    low, high = array_min_max(actions)
    if low < bounds[0] or high > bounds[1]:
        raise dataset_error(
            file,
            "actions",
            f"actions in [{bounds[0]:g}, {bounds[1]:g}] (the suite's action convention)",
            f"min {low:.6g}, max {high:.6g}",
        )


def check_episode_returns(file: Path | str, reward: np.ndarray, lengths: np.ndarray, stored: np.ndarray) -> None:
    """Stored episode returns must equal the sum of each episode's rewards (up to float
    rounding: ``RETURNS_RTOL`` times the episode's sum of |reward|, plus 1e-9)."""
    reward = np.asarray(reward, dtype=np.float64)
    computed = episode_returns(reward, lengths)
    scale = episode_returns(np.abs(reward), lengths)
    bad = np.flatnonzero(~(np.abs(np.asarray(stored, dtype=np.float64) - computed) <= RETURNS_RTOL * scale + 1e-9))
    if bad.size:
        i = int(bad[0])
        raise dataset_error(
            file,
            "episode_returns",
            f"the sum of each episode's rewards (episode {i}: {computed[i]:.6g})",
            f"{float(stored[i]):.6g} ({bad.size} of {len(lengths)} episodes differ)",
        )


def returns_match_rewards(dataset: OfflineDataset) -> bool:
    """Whether the dataset's episode returns are the sums of its rewards (see check_episode_returns)."""
    try:
        check_episode_returns("", dataset.reward, dataset.episodes.lengths, dataset.episodes.returns)
    except UserError:
        return False
    return True


def load_npy(file: Path, key: str, mmap: bool = True) -> np.ndarray:
    """A ``.npy`` array, memory-mapped read-only, never unpickling objects."""
    if not file.is_file():
        raise dataset_error(file, key, "an existing .npy file", "no such file")
    try:
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise dataset_error(file, key, "a complete .npy array without pickled objects", f"unreadable ({err})") from None


def read_json(file: Path, key: str = "metadata") -> dict[str, Any]:
    if not file.is_file():
        raise dataset_error(file, key, "an existing JSON file", "no such file")
    try:
        data = json.loads(file.read_text())
    except (ValueError, OSError) as err:
        raise dataset_error(file, key, "valid JSON", f"unreadable ({err})") from None
    if not isinstance(data, dict):
        raise dataset_error(file, key, "a JSON object", type(data).__name__)
    return data


def as_float32(file: Path | str, key: str, array: np.ndarray) -> np.ndarray:
    """Copy to float32 (source dtypes vary) and reject NaN/Inf."""
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise dataset_error(file, key, "a numeric array", f"dtype {array.dtype}")
    out = np.asarray(array, dtype=np.float32)
    check_finite(file, key, out)
    return out


def reduce_rewards(file: Path | str, key: str, rewards: np.ndarray, convention: str) -> np.ndarray:
    """Per-agent rewards ``[T, N]`` (or ``[T]`` / ``[T, 1]``: already a team reward) -> ``[T]``.

    ``shared`` and ``agent0`` take agent 0's reward, ``mean``/``sum`` reduce over agents
    (in float64, so replicated float32 rewards survive exactly).
    """
    if convention not in REWARD_CONVENTIONS:
        raise ValueError(f"reward convention {convention!r} not in {REWARD_CONVENTIONS}")
    if rewards.ndim == 1:
        return rewards.astype(np.float32)
    if rewards.ndim != 2:
        raise dataset_error(file, key, "rewards of shape (T,) or (T, N)", f"shape {rewards.shape}")
    if rewards.shape[1] == 1 or convention in ("shared", "agent0"):
        return rewards[:, 0].astype(np.float32)
    reduce = np.mean if convention == "mean" else np.sum
    return reduce(rewards.astype(np.float64), axis=1).astype(np.float32)


def pick_convention(explicit: str | None, spec: EnvSpec | None, entry: "CatalogueEntry | None") -> str:
    """How per-agent rewards become the team reward: explicit > the dataset's (catalogue: OMAR's
    mean / agent 0) > the task's > mean. The dataset's convention is how its producer scored it."""
    return explicit or (entry.reward_convention if entry else None) or (spec.reward_convention if spec else "mean")


def pad_last(array: np.ndarray, width: int) -> np.ndarray:
    """Zero-pad the last axis to ``width``."""
    if array.shape[-1] == width:
        return array
    pad = [(0, 0)] * (array.ndim - 1) + [(0, width - array.shape[-1])]
    return np.pad(array, pad)


def segment_lengths(ends: np.ndarray) -> np.ndarray:
    """Lengths of the episodes of a step sequence whose last steps are flagged in ``ends``.

    A trailing run without an end flag counts as one (incomplete) episode.
    """
    stops = np.flatnonzero(ends) + 1
    if stops.size == 0 or stops[-1] != ends.shape[0]:
        stops = np.append(stops, ends.shape[0])
    return np.diff(np.concatenate([[0], stops])).astype(np.int64)


def episode_returns(reward: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sum of ``reward`` over consecutive segments of the given lengths (float64)."""
    if lengths.size == 0:
        return np.zeros(0)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.add.reduceat(reward.astype(np.float64), starts)


def check_episode_index(file: Path | str, ids: np.ndarray, lengths: np.ndarray, n_rows: int) -> None:
    """Episode ids strictly increasing, lengths positive and covering exactly ``n_rows``."""
    if ids.shape != lengths.shape:
        raise dataset_error(
            file, "episode index", f"as many ids as lengths ({lengths.shape[0]})", f"{ids.shape[0]} ids"
        )
    if ids.size > 1 and np.any(np.diff(ids) <= 0):
        row = int(np.flatnonzero(np.diff(ids) <= 0)[0]) + 1
        raise dataset_error(
            file, "episode ids", "strictly increasing episode ids", f"id {ids[row]} after {ids[row - 1]}"
        )
    if np.any(lengths <= 0) or int(lengths.sum()) != n_rows:
        raise dataset_error(
            file,
            "episode lengths",
            f"positive lengths summing to {n_rows} transitions",
            f"sum {int(lengths.sum())}, min {int(lengths.min()) if lengths.size else 0}",
        )


def derived_state(obs: np.ndarray, dims: Sequence[int], padded: bool) -> np.ndarray:
    """``[T, S]`` global state as the concatenation of the agents' observations.

    ``padded``: concatenate the padded ``[N, O]`` rows (OG-MARL's conversion of OMAR data);
    otherwise only each agent's true ``dims[i]`` entries.
    """
    if padded:
        return obs.reshape(obs.shape[0], -1)
    return np.concatenate([obs[:, i, :d] for i, d in enumerate(dims)], axis=1)


def conform_to_spec(
    dataset: OfflineDataset, spec: EnvSpec, file: Path | str, *, check_state: bool = True
) -> OfflineDataset:
    """Check agents and dims against ``spec`` and pad observations/actions to its widths.

    A dataset that knows its agents' true dims must match the spec's exactly; one that only
    knows its padded width (``metadata["true_dims_known"]`` False: some vaults) must have
    the spec's padded width. With ``check_state`` the state width must equal ``spec.state_dim``.
    """
    if dataset.n_agents != spec.n_agents:
        raise dataset_error(
            file, "agents", f"{spec.n_agents} agents for task {spec.name}", f"{dataset.n_agents} agents"
        )
    padded_only = not dataset.metadata.get("true_dims_known", True)
    for what, width, dims, spec_dims, spec_max in (
        ("observation", dataset.obs_dim, dataset.obs_dims, spec.obs_dims, spec.obs_max),
        ("action", dataset.action_dim, dataset.action_dims, spec.action_dims, spec.act_max),
    ):
        if padded_only:
            ok = width == spec_max and all(d <= width for d in spec_dims)
        else:
            ok = tuple(dims) == tuple(spec_dims)
        if not ok:
            found = f"padded width {width}" if padded_only else f"per-agent {what} dims {tuple(dims)}"
            raise dataset_error(
                file,
                f"{what}s",
                f"per-agent {what} dims {tuple(spec_dims)} (padded {spec_max}) for task {spec.name}",
                found,
            )
    if check_state and dataset.state_dim != spec.state_dim:
        raise dataset_error(
            file, "state", f"state dim {spec.state_dim} for task {spec.name}", f"state dim {dataset.state_dim}"
        )
    arrays = dict(dataset.arrays)
    for name, width in (("obs", spec.obs_max), ("next_obs", spec.obs_max), ("actions", spec.act_max)):
        arrays[name] = pad_last(arrays[name][..., :width], width)  # dims match: cropped columns are padding
    metadata = {**dataset.metadata, "task": spec.name, "true_dims_known": True}
    return OfflineDataset(
        arrays, dataset.episodes, obs_dims=spec.obs_dims, action_dims=spec.action_dims, metadata=metadata
    )


def build_dataset(
    steps: dict[str, np.ndarray],
    rows: np.ndarray,
    next_rows: np.ndarray,
    terminated: np.ndarray,
    lengths: np.ndarray,
    returns: np.ndarray,
    *,
    final: dict[str, np.ndarray] | None = None,
    obs_dims: Sequence[int] | None = None,
    action_dims: Sequence[int] | None = None,
    metadata: dict[str, Any] | None = None,
) -> OfflineDataset:
    """Transitions ``rows -> next_rows`` of a step sequence (``obs``, ``state``, ``actions``, ``reward``).

    ``next_rows`` entries of -1 take their next observation/state from ``final`` (rows
    aligned with ``rows``; zeros where absent: a terminal step's unknown successor).
    """
    known = next_rows >= 0
    safe = np.where(known, next_rows, 0)
    arrays = {
        "obs": steps["obs"][rows],
        "state": steps["state"][rows],
        "actions": steps["actions"][rows],
        "reward": steps["reward"][rows],
        "terminated": terminated.astype(np.float32),
    }
    for name, source in (("next_obs", "obs"), ("next_state", "state")):
        nxt = steps[source][safe]
        fill = final[source][~known] if final is not None else 0.0
        nxt[~known] = fill
        arrays[name] = nxt
    return OfflineDataset(
        arrays,
        EpisodeIndex.from_lengths(lengths, returns),
        obs_dims=obs_dims,
        action_dims=action_dims,
        metadata=metadata,
    )


def written_provenance(dataset: OfflineDataset) -> dict[str, Any]:
    """The provenance a writer stores: the dataset's own, where it was converted from, its
    current return statistics, and which dmarl wrote it when."""
    provenance = dict(dataset.metadata.get("provenance", {}))
    source = {k: dataset.metadata.get(k) for k in ("format", "source", "catalogue", "seeds", "subset")}
    if source["format"] not in (None, "collected"):
        provenance.setdefault("converted_from", {k: v for k, v in source.items() if v is not None})
    provenance["return_stats"] = dataset.return_stats()
    provenance["written"] = {
        "by": f"dmarl {dmarl.__version__}",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return provenance


def not_a_suite_dataset(path: Path) -> str | None:
    """Why the existing ``path`` may not be overwritten as a dataset dmarl wrote (None: it may).

    A native dataset (``metadata.json`` with format dmarl-native) or a vault with dmarl's
    ``dmarl`` metadata section qualifies, and only if it holds nothing but what the writer
    puts there: a user's file inside is never deleted."""
    if not path.is_dir():
        return "it is a file, not a dataset directory"
    meta_file = path / "metadata.json"
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else None
    except (ValueError, OSError):
        meta = None
    if not isinstance(meta, dict):
        return "it has no readable metadata.json"
    if meta.get("format") == NATIVE_FORMAT:
        fields = meta.get("fields")
        allowed = {"metadata.json", *(f"{name}.npy" for name in (fields if isinstance(fields, dict) else {}))}
    elif isinstance(meta.get("dmarl"), dict):
        allowed = set(VAULT_ENTRIES)
    else:
        return "its metadata.json does not say dmarl wrote it"
    others = sorted(p.name for p in path.iterdir() if p.name not in allowed)
    if others:
        return f"it also holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}"
    return None


def check_output(path: Path | str, force: bool = False, sources: Sequence[Path | str] = ()) -> None:
    """Raise one UserError unless a dataset may be written at ``path`` (see module docstring).

    ``sources``: the dataset(s) being read (never overwritten, nor a folder that holds them)."""
    path = Path(path)
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UserError(f"output {path}: {parent} is a file; expected a folder to write the dataset into")
            break
    if not path.exists():
        return
    target, cwd = path.resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise UserError(
            f"output {path} is the current directory or a folder above it; expected a new dataset path "
            "(refusing to replace it, --force or not)"
        )
    for source in sources:
        src = Path(source).resolve()
        if target == src or target in src.parents:
            raise UserError(
                f"output {path} is the source dataset {source} or a folder holding it; expected another path "
                "(refusing to replace it, --force or not)"
            )
    if path.is_dir() and not any(path.iterdir()):
        return  # an empty folder: nothing to lose
    problem = not_a_suite_dataset(path)
    if problem is not None:
        raise UserError(
            f"output {path} exists and is not a dataset dmarl wrote ({problem}); expected a new path or a "
            "dataset written by dmarl (refusing to replace it, --force or not)"
        )
    if not force:
        raise UserError(f"output {path} already exists; pass --force to overwrite it (it is a dataset dmarl wrote)")


@contextmanager
def atomic_output(path: Path, force: bool = False, sources: Sequence[Path | str] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; on success it replaces ``path``.

    Refuses what `check_output` refuses. On any error the temporary (and any parent
    directory created for it) is removed and ``path`` is untouched."""
    path = Path(path)
    check_output(path, force, sources)
    new_parents = [p for p in path.parents if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"output {path}: cannot create folder {path.parent} ({err.strerror or err})") from None
    tag = uuid.uuid4().hex[:8]
    tmp = path.parent / f".{path.name}.tmp-{tag}"
    done = False
    try:
        yield tmp
        if path.exists():
            old = path.parent / f".{path.name}.old-{tag}"
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
        done = True
    finally:
        _remove(tmp)
        if not done:
            for parent in new_parents:  # deepest first
                if parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()


@contextmanager
def write_errors_as_user_errors(path: Path | str) -> Iterator[None]:
    """For the CLI: an OSError while writing ``path`` (disk full, no permission) is one UserError."""
    try:
        yield
    except OSError as err:
        raise UserError(f"output {path}: cannot write it ({err.strerror or err}); nothing was written") from None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def finish(
    dataset: OfflineDataset,
    file: Path | str,
    spec: EnvSpec | None,
    entry: "CatalogueEntry | None",
    *,
    check_state: bool = True,
    actions_file: Path | str | None = None,
) -> OfflineDataset:
    """Check the actions' range, conform a freshly loaded dataset to the task (if any) and
    record the catalogue's warnings."""
    check_action_range(actions_file or file, dataset.actions, action_range(dataset.metadata))
    if spec is not None:
        dataset = conform_to_spec(dataset, spec, file, check_state=check_state)
    if entry is not None:
        dataset.metadata["warnings"] = [*dataset.metadata.get("warnings", []), *entry.compare(dataset)]
    return dataset
