"""OG-MARL vaults (flashbax ``Vault``), read and written with ``tensorstore`` alone.

Layout of one vault (``<...>/<scenario>.vlt/<UID>/``): ``metadata.json`` plus a tensorstore
OCDBT key-value store (``manifest.ocdbt``, ``d/<hash>``) holding one zarr array per leaf at
key ``<dotted path>.`` (``observations.``, ``actions.``, ``rewards.``, ``terminals.``,
``truncations.``, ``infos.state.``, ...) and ``vault_index`` (int32, (1,)): the number T of
valid time steps. Leaves are ``(B, T_capacity, ...)``; rows are consecutive steps of B
independent streams. ``metadata.json`` holds ``structure_shape``/``structure_dtype``
(flashbax >= 2024-01-24, ``version`` 1.x; the only layout written) or a single
``structure: {leaf: [shape, dtype]}`` (older vaults, still read).

Transitions (per row b, step t), og-marl's rule: an episode ends where every agent's
terminal or truncation flag is set (``og_marl_rule``). The next observation/state is row t+1
of the same row inside an episode. A terminal last step is kept with ``terminated = 1`` (its
unknown successor is zeros); a truncated last step, or the last stored step of an
unfinished episode, has no recorded successor and is dropped. For a catalogue dataset whose
task cannot terminate (OMAR MPE: 25 steps; HalfCheetah: 1000), a terminal flag at that limit
is a truncation (so the step is dropped, as a time limit, instead of becoming a terminal
with a zero successor). OMIGA's vaults (``omiga/...``) follow OMIGA's own rule instead
(``omiga_rule``: 1001 rows per 1000-step episode) and their state (OMIGA's normalised
observation) is not checked against the task's. Episode returns sum every recorded step's
reward. The team reward follows the dataset's convention (catalogue) over the task's.

Vaults written here (``dmarl collect --format vault``, ``dmarl datasets convert``) are
ordinary vaults with B = 1, the team reward replicated on every agent, plus two leaves that
keep every episode's final successor, ``infos.final_observation`` and
``infos.final_state`` (zeros except on episode-end rows; they compress to almost nothing),
and a ``dmarl`` section in ``metadata.json`` (true per-agent dims, provenance). Reading one
back reproduces the written transitions exactly.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np

from dmarl.data.offline import OfflineDataset
from dmarl.envs.base import EnvSpec
from dmarl.envs.datasets import catalogue
from dmarl.envs.datasets.common import (
    atomic_output,
    build_dataset,
    check_finite,
    check_shape,
    dataset_error,
    derived_state,
    episode_returns,
    finish,
    pick_convention,
    read_json,
    reduce_rewards,
    segment_lengths,
    written_provenance,
)
from dmarl.errors import UserError

VERSION = 1.2  # flashbax's current metadata version
TIME_AXIS_MAX_LENGTH = int(10e12)  # flashbax's time-axis capacity
COMPRESSION = {"id": "gzip", "level": 5}
REQUIRED = ("observations", "actions", "rewards", "terminals", "truncations")
FINAL_OBS, FINAL_STATE = "infos.final_observation", "infos.final_state"
REWARD_LAYOUT = "team reward replicated on every agent"


def vault_dir(path: Path) -> Path:
    """The vault UID directory for ``path`` (a UID directory, or a ``.vlt`` holding exactly one)."""
    path = Path(path)
    if not path.is_dir():
        raise dataset_error(
            path, "vault", "a vault directory (<scenario>.vlt/<UID>/ with metadata.json)", "no such directory"
        )
    if (path / "metadata.json").is_file() or (path / "manifest.ocdbt").is_file():
        return path
    uids = sorted(p.name for p in path.iterdir() if (p / "metadata.json").is_file())
    if len(uids) != 1:
        raise dataset_error(
            path, "vault UID", "exactly one <UID>/metadata.json inside", f"{uids or 'none'}; pass one of them"
        )
    return path / uids[0]


def _parse_shape(file: Path, key: str, text: Any) -> tuple[int, ...]:
    try:
        shape = ast.literal_eval(text) if isinstance(text, str) else text
        shape = tuple(int(d) for d in shape)
    except (ValueError, SyntaxError, TypeError):
        raise dataset_error(
            file, f"structure of {key}", "a shape string like '(1, 10000000000000, 2, 13)'", repr(text)
        ) from None
    return shape


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_structure(uid: Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, Any]]:
    """Leaf name -> (shape, dtype) from ``metadata.json`` in either style, and the metadata."""
    file = uid / "metadata.json"
    meta = read_json(file)
    if "structure_shape" in meta and "structure_dtype" in meta:
        shapes, dtypes = _flatten(meta["structure_shape"]), _flatten(meta["structure_dtype"])
        if shapes.keys() != dtypes.keys():
            raise dataset_error(
                file, "structure_dtype", f"the leaves of structure_shape {sorted(shapes)}", f"{sorted(dtypes)}"
            )
        raw = {k: (shapes[k], dtypes[k]) for k in shapes}
    elif "structure" in meta:
        raw = {}
        for key, leaf in _flatten(meta["structure"]).items():
            if not (isinstance(leaf, list) and len(leaf) == 2):
                raise dataset_error(file, f"structure.{key}", "[shape string, dtype]", repr(leaf))
            raw[key] = (leaf[0], leaf[1])
    else:
        raise dataset_error(
            file,
            "structure",
            "'structure_shape' and 'structure_dtype' (or the older 'structure')",
            f"keys {sorted(meta)}",
        )
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise dataset_error(
            file, "structure", f"leaves {', '.join(REQUIRED)}", f"{sorted(raw)} (missing {', '.join(missing)})"
        )
    return {k: (_parse_shape(file, k, shape), str(dtype)) for k, (shape, dtype) in raw.items()}, meta


def _store_spec(uid: Path, key: str) -> dict[str, Any]:
    return {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{uid.resolve()}", "path": key}}


def _open_leaf(uid: Path, key: str) -> Any:
    import tensorstore as ts

    try:
        return ts.open(_store_spec(uid, key), open=True).result()
    except (ValueError, RuntimeError, OSError) as err:
        raise dataset_error(
            uid / "manifest.ocdbt",
            f"leaf {key!r}",
            "a readable zarr array in the vault's OCDBT store",
            f"error ({err})",
        ) from None


def _read(uid: Path, store: Any, key: str, steps: int | None = None) -> np.ndarray:
    """``store[:, :steps]`` (or the whole store), naming the vault and leaf on failure."""
    try:
        return np.asarray((store if steps is None else store[:, :steps]).read().result())
    except (ValueError, RuntimeError, OSError) as err:
        raise dataset_error(
            uid / "d", f"leaf {key!r}", f"{steps or 'all'} readable time steps", f"corrupt data ({err})"
        ) from None


def _vault_index(uid: Path, capacity: int) -> int:
    """T from ``vault_index``; it only ever grows as flashbax appends, within the leaves' capacity."""
    index = _read(uid, _open_leaf(uid, "vault_index"), "vault_index")
    if index.shape != (1,) or not np.issubdtype(index.dtype, np.integer):
        raise dataset_error(
            uid, "vault_index", "one int32 count of valid time steps, shape (1,)", f"{index.dtype} {index.shape}"
        )
    steps = int(index[0])
    if not 0 < steps <= capacity:
        raise dataset_error(
            uid, "vault_index", f"a step count in 1..{capacity} (the leaves' time capacity)", str(steps)
        )
    return steps


def _read_leaves(
    uid: Path, structure: dict[str, tuple[tuple[int, ...], str]], entry: catalogue.CatalogueEntry | None
) -> dict[str, np.ndarray]:
    """Every needed leaf as ``[:, :T]``, checked against metadata, each other and the catalogue."""
    wanted = [k for k in (*REQUIRED, "infos.state", FINAL_OBS, FINAL_STATE) if k in structure]
    stores = {k: _open_leaf(uid, f"{k}.") for k in wanted}
    batch = structure["observations"][0][0]
    for key, store in stores.items():
        shape = structure[key][0]
        check_shape(uid, f"leaf {key!r} (zarr vs metadata.json)", tuple(store.shape), (batch, None, *shape[2:]))
    steps = _vault_index(uid, min(int(s.shape[1]) for s in stores.values()))
    leaves = {k: _read(uid, store, k, steps) for k, store in stores.items()}
    if np.issubdtype(leaves["actions"].dtype, np.integer) or leaves["actions"].ndim == 3:
        raise dataset_error(
            uid,
            "leaf 'actions'",
            "continuous actions (B, T, N, A) float32",
            f"discrete actions {leaves['actions'].dtype} {leaves['actions'].shape}",
        )
    b, t, n = leaves["observations"].shape[:3]
    for key in ("rewards", "terminals", "truncations"):
        check_shape(uid, f"leaf {key!r}", leaves[key].shape, (b, t, n))
    check_shape(uid, "leaf 'actions'", leaves["actions"].shape, (b, t, n, None))
    for key in ("infos.state", FINAL_STATE):
        if key in leaves and leaves[key].ndim == 4:  # state replicated per agent: (B, T, N, S)
            check_shape(uid, f"leaf {key!r}", leaves[key].shape, (b, t, n, None))
            leaves[key] = leaves[key][:, :, 0]
    for key, value in leaves.items():
        if entry is not None:
            entry.check_shape(uid, key, value.shape)
        check_finite(uid, f"leaf {key!r}", value)
    return leaves


def load_vault(
    path: Path,
    *,
    spec: EnvSpec | None = None,
    reward_convention: str | None = None,
    entry: catalogue.CatalogueEntry | None = None,
) -> OfflineDataset:
    """Load a vault as transitions (see the module docstring for the rule)."""
    uid = vault_dir(path)
    structure, meta = read_structure(uid)
    entry = entry or catalogue.identify(uid, "vault")
    leaves = _read_leaves(uid, structure, entry)
    own = meta.get("dmarl", {})
    b, t = leaves["observations"].shape[:2]

    def flat(x: np.ndarray) -> np.ndarray:  # (B, T, ...) -> (B * T, ...): rows one after another
        return x.reshape(b * t, *x.shape[2:])

    row_last = np.zeros((b, t), dtype=bool)
    row_last[:, -1] = True
    row_last = row_last.reshape(-1)
    convention = "shared" if own else pick_convention(reward_convention, spec, entry)
    reward = reduce_rewards(uid, "leaf 'rewards'", flat(leaves["rewards"]), convention)
    flags = flat(leaves["terminals"]) != 0, flat(leaves["truncations"]) != 0
    has_final = FINAL_OBS in leaves and FINAL_STATE in leaves
    rule = entry.transition_rule if entry else "og_marl"
    if rule == "omiga":
        rows, next_rows, terminated, lengths, returns = omiga_rule(flags[0], row_last, reward)
    else:
        limit = entry.truncation_limit if entry else None
        rows, next_rows, terminated, lengths, returns = og_marl_rule(*flags, row_last, reward, has_final, limit)
    steps = {
        "obs": flat(leaves["observations"]).astype(np.float32, copy=False),
        "state": (
            flat(leaves["infos.state"])
            if "infos.state" in leaves
            else derived_state(flat(leaves["observations"]), (), padded=True)
        ),
        "actions": flat(leaves["actions"]).astype(np.float32, copy=False),
        "reward": reward,
    }
    final = {"obs": flat(leaves[FINAL_OBS])[rows], "state": flat(leaves[FINAL_STATE])[rows]} if has_final else None
    obs_dims = own.get("obs_dims") or (entry.obs_dims if entry and entry.obs_dims else None)
    metadata = {
        "format": "vault",
        "source": str(uid),
        "catalogue": entry.name if entry else None,
        "reward_convention": convention,
        "rows": b,
        "steps_per_row": [t] * b,
        "true_dims_known": obs_dims is not None,
        "provenance": own.get("provenance", {}),
        "vault_metadata_style": "structure_shape" if "structure_shape" in meta else "structure",
        "transition_rule": rule,
    }
    dataset = build_dataset(
        steps,
        rows,
        next_rows,
        terminated,
        lengths,
        returns,
        final=final,
        obs_dims=obs_dims,
        action_dims=own.get("action_dims"),
        metadata=metadata,
    )
    return finish(dataset, uid, spec, entry, check_state=rule != "omiga")


Transitions = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def og_marl_rule(
    terminals: np.ndarray,
    truncations: np.ndarray,
    row_last: np.ndarray,
    reward: np.ndarray,
    has_final: bool,
    limit: int | None,
) -> Transitions:
    """``rows, next_rows (-1: from the final leaves), terminated, lengths, returns`` of flat
    ``[B*T, N]`` flags under og-marl's rule: an episode ends where every agent's terminal or
    truncation flag is set, and is terminal where every agent's terminal flag is. With
    ``limit`` (a task that cannot terminate) a terminal end after ``limit`` steps is a
    truncation. Truncated ends keep their step only with recorded final observations."""
    terminal = terminals.all(axis=1)
    ends = terminal | (terminals | truncations).all(axis=1)
    lengths = segment_lengths(ends | row_last)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if limit is not None:
        position = np.arange(terminal.shape[0]) - np.repeat(starts, lengths)
        terminal &= position + 1 != limit
    returns = episode_returns(reward, lengths)
    keep = np.where(ends, terminal | has_final, ~row_last)
    rows = np.flatnonzero(keep)
    next_rows = np.where(ends, -1, np.arange(keep.shape[0]) + 1)[rows]
    kept = np.add.reduceat(keep.astype(np.int64), starts)
    return rows, next_rows, terminal[rows], kept[kept > 0], returns[kept > 0]


def omiga_rule(terminals: np.ndarray, row_last: np.ndarray, reward: np.ndarray) -> Transitions:
    """OMIGA's rule on flat ``[B*T, N]`` terminal flags (its ``d``, on every agent): a row
    whose flag is set only holds its episode's final observation; every other row t that is
    not its row's last is a transition to t+1 with ``terminated = d[t+1]`` (1001 rows per
    1000-step episode; OMIGA treats the time limit as terminal too)."""
    done = terminals.all(axis=1)
    rows = np.flatnonzero(~done & ~row_last)
    terminated = done[rows + 1]
    lengths = segment_lengths(terminated | row_last[rows + 1])
    return rows, rows + 1, terminated, lengths, episode_returns(reward[rows], lengths)


def _episode_ends(dataset: OfflineDataset) -> np.ndarray:
    last = np.zeros(len(dataset), dtype=bool)
    last[dataset.episodes.starts + dataset.episodes.lengths - 1] = True
    return last


def _check_chained(dataset: OfflineDataset, path: Path, last: np.ndarray) -> None:
    """A vault stores next observations only as the following row: they must chain."""
    inner = np.flatnonzero(~last)
    for name, source in (("next_obs", "obs"), ("next_state", "state")):
        same = np.all(
            dataset.arrays[name][inner] == dataset.arrays[source][inner + 1],
            axis=tuple(range(1, dataset.arrays[name].ndim)),
        )
        if not same.all():
            row = int(inner[np.flatnonzero(~same)[0]])
            raise UserError(
                f"cannot write {path} as a vault: transition {row} (episode {int(dataset.episode_id[row])}) has a "
                f"{name} that differs from the {source} of the next transition; a vault keeps next observations only "
                f"as the following step (write the native format instead)"
            )
    if np.any(dataset.terminated[inner] != 0):
        row = int(inner[np.flatnonzero(dataset.terminated[inner] != 0)[0]])
        raise UserError(f"cannot write {path} as a vault: transition {row} is terminal but not its episode's last")


def vault_leaves(dataset: OfflineDataset, path: Path) -> dict[str, np.ndarray]:
    """The dataset as B = 1 vault leaves (flat dotted names), after checking it chains."""
    last = _episode_ends(dataset)
    _check_chained(dataset, path, last)
    n = dataset.n_agents
    terminal = (dataset.terminated != 0) & last
    final_obs = np.zeros_like(dataset.obs)
    final_state = np.zeros_like(dataset.state)
    final_obs[last] = dataset.next_obs[last]
    final_state[last] = dataset.next_state[last]
    per_agent = lambda x: np.repeat(x.astype(np.float32)[:, None], n, axis=1)[None]  # noqa: E731
    return {
        "observations": np.asarray(dataset.obs)[None],
        "actions": np.asarray(dataset.actions)[None],
        "rewards": per_agent(np.asarray(dataset.reward)),
        "terminals": per_agent(terminal),
        "truncations": per_agent(last & ~terminal),
        "infos.state": np.asarray(dataset.state)[None],
        FINAL_OBS: final_obs[None],
        FINAL_STATE: final_state[None],
    }


def nest_leaves(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"infos.state": x}`` -> ``{"infos": {"state": x}}`` (a vault's leaf tree)."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def write_vault_leaves(uid: Path, leaves: dict[str, np.ndarray], *, extra: dict[str, Any] | None = None) -> None:
    """Write flat-named ``(B, T, ...)`` leaves as a new vault at ``uid`` (must not exist), with
    the released flashbax metadata layout (``structure_shape`` / ``structure_dtype``)."""
    import tensorstore as ts

    uid.mkdir(parents=True)
    shapes = {k: str((v.shape[0], TIME_AXIS_MAX_LENGTH, *v.shape[2:])) for k, v in leaves.items()}
    dtypes = {k: v.dtype.name for k, v in leaves.items()}
    meta = {"version": VERSION, "structure_shape": nest_leaves(shapes), "structure_dtype": nest_leaves(dtypes)}
    (uid / "metadata.json").write_text(json.dumps({**meta, **(extra or {})}))
    steps = next(iter(leaves.values())).shape[1]
    for key, value in leaves.items():
        spec = {**_store_spec(uid, f"{key}."), "metadata": {"compressor": COMPRESSION}}
        store = ts.open(
            spec, create=True, shape=(value.shape[0], TIME_AXIS_MAX_LENGTH, *value.shape[2:]), dtype=value.dtype.name
        ).result()
        store[:, :steps].write(value).result()
    index = ts.open(_store_spec(uid, "vault_index"), create=True, shape=(1,), dtype="int32").result()
    index.write(np.array([steps], dtype=np.int32)).result()


def write_vault(
    dataset: OfflineDataset,
    path: Path,
    *,
    force: bool = False,
) -> Path:
    """Write ``dataset`` as a vault UID directory at ``path`` (atomically; see module docstring)."""
    path = Path(path)
    if len(dataset) == 0:
        raise UserError(f"cannot write {path}: the dataset holds no transitions")
    leaves = vault_leaves(dataset, path)
    extra = {
        "dmarl": {
            "format_version": 1,
            "reward_layout": REWARD_LAYOUT,
            "obs_dims": list(dataset.obs_dims),
            "action_dims": list(dataset.action_dims),
            "task": dataset.metadata.get("task"),
            "team_reward_convention": dataset.metadata.get("reward_convention"),
            "provenance": written_provenance(dataset),
        }
    }
    with atomic_output(path, force) as tmp:
        write_vault_leaves(tmp, leaves, extra=extra)
    return path
