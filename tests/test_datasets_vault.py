"""OG-MARL vaults read with tensorstore: both metadata styles, B > 1, terminals vs truncations
(og-marl's rule: all agents' flags), next observations from row t+1, padded agents, replicated
states; the vault writer; bad input. Current-style vaults are written by flashbax itself
(``write_flashbax_vault``); the pre-2024 ``structure`` style and damaged ``vault_index``
values, which no released flashbax writes, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dmarl.data.offline import EpisodeIndex, OfflineDataset
from dmarl.envs.base import EnvSpec
from dmarl.envs.datasets import detect_format, load_dataset, write_dataset
from dmarl.envs.datasets.ogmarl import load_vault, nest_leaves, write_vault
from dmarl.errors import UserError

CAPACITY = 10**13


def write_flashbax_vault(uid: Path, leaves: dict[str, np.ndarray]) -> None:
    """Write flat-named ``(B, T, ...)`` leaves with flashbax's own ``Vault`` (the producer's
    writer): a trajectory buffer holding the B rows, written once."""
    import flashbax as fbx
    import jax
    import jax.numpy as jnp
    from flashbax.vault import Vault

    tree = nest_leaves(leaves)
    b, t = next(iter(leaves.values())).shape[:2]
    buffer = fbx.make_trajectory_buffer(
        add_batch_size=b, max_length_time_axis=t + 1, min_length_time_axis=1,
        sample_batch_size=1, sample_sequence_length=1, period=1,
    )
    state = buffer.init(jax.tree.map(lambda x: jnp.asarray(x[0, 0]), tree))
    state = buffer.add(state, jax.tree.map(jnp.asarray, tree))
    vault = Vault(
        vault_name=uid.parent.name, experience_structure=state.experience, rel_dir=str(uid.parent.parent),
        vault_uid=uid.name,
    )
    assert vault.write(state) == t


def write_raw_vault(
    uid: Path, leaves: dict[str, np.ndarray], *, style: str = "flashbax", vault_index: int | None = None
) -> None:
    """A vault: by flashbax, or by hand in the current (``structure_shape``) or the older
    (``structure``) style, e.g. with a damaged ``vault_index``: zarr arrays in an OCDBT store
    + metadata.json."""
    if style == "flashbax":
        return write_flashbax_vault(uid, leaves)
    import tensorstore as ts

    uid.mkdir(parents=True)
    base = f"file://{uid}"
    for key, value in leaves.items():
        spec = {
            "driver": "zarr",
            "kvstore": {"driver": "ocdbt", "base": base, "path": f"{key}."},
            "metadata": {"compressor": {"id": "gzip", "level": 5}},
        }
        store = ts.open(
            spec, create=True, shape=(value.shape[0], CAPACITY, *value.shape[2:]), dtype=value.dtype.name
        ).result()
        store[:, : value.shape[1]].write(value).result()
    steps = next(iter(leaves.values())).shape[1]
    index = ts.open(
        {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": base, "path": "vault_index"}},
        create=True,
        shape=(1,),
        dtype="int32",
    ).result()
    index.write(np.array([steps if vault_index is None else vault_index], np.int32)).result()

    shape = {k: str((v.shape[0], CAPACITY, *v.shape[2:])) for k, v in leaves.items()}
    if style == "current":
        meta = {
            "version": 1.1,
            "structure_shape": nest_leaves(shape),
            "structure_dtype": nest_leaves({k: v.dtype.name for k, v in leaves.items()}),
        }
    else:
        meta = {"version": 0.1, "structure": nest_leaves({k: [shape[k], v.dtype.name] for k, v in leaves.items()})}
    (uid / "metadata.json").write_text(json.dumps(meta))


def make_leaves(
    b: int, t: int, n: int, o: int, a: int, s: int, seed: int = 0, replicated_state: bool = False
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = rng.normal(size=(b, t, s)).astype(np.float32)
    reward = rng.normal(size=(b, t, 1)).astype(np.float32)
    return {
        "observations": rng.normal(size=(b, t, n, o)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(b, t, n, a)).astype(np.float32),
        "rewards": np.repeat(reward, n, axis=2),
        "terminals": np.zeros((b, t, n), np.float32),
        "truncations": np.zeros((b, t, n), np.float32),
        "infos.state": np.repeat(state[:, :, None], n, axis=2) if replicated_state else state,
    }


def reference_transitions(leaves: dict[str, np.ndarray]) -> tuple[dict[str, list], list[int], list[float]]:
    """og-marl's vault transition rule written as a plain loop (what the loader must reproduce)."""
    obs, state = leaves["observations"], leaves["infos.state"]
    state = state[:, :, 0] if state.ndim == 4 else state
    out: dict[str, list] = {
        k: [] for k in ("obs", "next_obs", "state", "next_state", "actions", "reward", "terminated")
    }
    lengths, returns = [], []
    b_rows, t_steps = obs.shape[:2]
    for b in range(b_rows):
        kept, ret = 0, 0.0
        for t in range(t_steps):
            terminal = leaves["terminals"][b, t].all()
            end = terminal or (leaves["terminals"][b, t] + leaves["truncations"][b, t] > 0).all()
            ret += float(leaves["rewards"][b, t, 0])
            if (not end and t < t_steps - 1) or terminal:
                out["obs"].append(obs[b, t])
                out["next_obs"].append(obs[b, t + 1] if not end else np.zeros_like(obs[b, t]))
                out["state"].append(state[b, t])
                out["next_state"].append(state[b, t + 1] if not end else np.zeros_like(state[b, t]))
                out["actions"].append(leaves["actions"][b, t])
                out["reward"].append(leaves["rewards"][b, t, 0])
                out["terminated"].append(float(terminal))
                kept += 1
            if end or t == t_steps - 1:
                if kept:
                    lengths.append(kept)
                    returns.append(ret)
                kept, ret = 0, 0.0
    return out, lengths, returns


def flag_episodes(leaves: dict[str, np.ndarray]) -> None:
    """Awkward episode ends over five rows (T = 12)."""
    term, trunc = leaves["terminals"], leaves["truncations"]
    term[0, 2, 0] = 1  # row 0: one agent's terminal alone does not end the episode,
    term[0, 3] = 1  # all agents' terminals do,
    term[0, 5, 1] = trunc[0, 5, 0] = 1  # one agent's terminal + the other's truncation end it (not terminal),
    trunc[0, 7] = 1  # a truncation drops its last step, the tail 8..11 is unfinished
    trunc[2, 11] = 1  # row 2: truncation on the last stored step; row 1: no flags at all
    term[3, 0] = term[3, 11] = 1  # row 3: a one-step terminal episode, terminal at the end
    term[4, 5] = trunc[4, 5] = 1  # row 4: terminal and truncation together: terminal wins


@pytest.mark.parametrize("style", ["flashbax", "legacy"])
@pytest.mark.parametrize("replicated", [True, False])
def test_b5_vault_both_styles_terminals_truncations_replicated_state(
    tmp_path: Path, style: str, replicated: bool
) -> None:
    leaves = make_leaves(5, 12, 2, 6, 3, 17, replicated_state=replicated)
    flag_episodes(leaves)
    uid = tmp_path / "vaults" / "omar" / "mamujoco" / "2halfcheetah.vlt" / "Medium"
    write_raw_vault(uid, leaves, style=style)
    assert detect_format(uid) == "vault" and detect_format(uid.parent) == "vault"
    ds = load_dataset(uid.parent)  # the .vlt directory holds one UID
    ref, lengths, returns = reference_transitions(leaves)
    for key, values in ref.items():
        np.testing.assert_array_equal(ds.arrays[key], np.asarray(values, np.float32), err_msg=key)
    np.testing.assert_array_equal(ds.episodes.lengths, lengths)
    np.testing.assert_allclose(ds.episodes.returns, returns, rtol=1e-6)
    np.testing.assert_array_equal(ds.episodes.ids, np.arange(len(lengths)))
    assert ds.metadata["catalogue"] == "omar/mamujoco/2halfcheetah/Medium" and ds.metadata["rows"] == 5
    assert ds.metadata["vault_metadata_style"] == ("structure_shape" if style == "flashbax" else "structure")
    assert ds.state_dim == 17 and ds.obs_dims == (6, 6)


def test_padded_prey_agent_with_catalogue_and_unknown_vault(tmp_path: Path) -> None:
    leaves = make_leaves(5, 10, 4, 16, 2, 64, seed=1)
    leaves["observations"][:, :, 3, 14:] = 0.0  # the prey's 14-dim observation padded to 16
    leaves["rewards"] = np.random.default_rng(2).normal(size=(5, 10, 4)).astype(np.float32)  # per-agent rewards
    leaves["truncations"][:, 4] = 1
    known = tmp_path / "vaults" / "omar" / "mpe" / "simple_tag.vlt" / "Expert"
    write_raw_vault(known, leaves)
    ds = load_vault(known)
    assert ds.obs_dims == (16, 16, 16, 14) and ds.metadata["reward_convention"] == "agent0"
    np.testing.assert_array_equal(ds.reward[:4], leaves["rewards"][0, :4, 0])
    np.testing.assert_array_equal(ds.episodes.lengths, [4, 4] * 5)  # steps 4 (truncated) and 9 (unfinished) dropped
    spec = EnvSpec("test/tag", "mpe", ("a", "b", "c", "p"), (16, 16, 16, 14), (2,) * 4, 64, 25, "sum")
    unknown = tmp_path / "elsewhere" / "tag.vlt" / "mine"
    write_raw_vault(unknown, leaves)
    raw = load_vault(unknown)
    assert raw.metadata["catalogue"] is None and not raw.metadata["true_dims_known"]
    conformed = load_vault(unknown, spec=spec)
    assert conformed.obs_dims == (16, 16, 16, 14) and conformed.metadata["reward_convention"] == "sum"
    np.testing.assert_allclose(conformed.reward[:4], leaves["rewards"][0, :4].sum(axis=1), rtol=1e-6)
    with pytest.raises(UserError, match=r"observations: expected per-agent observation dims \(18, 18, 18, 18\)"):
        load_vault(unknown, spec=EnvSpec("test/wide", "mpe", spec.agent_ids, (18,) * 4, (2,) * 4, 64, 25, "sum"))


def chained_dataset(lengths: list[int], terminal_last: list[bool], seed: int = 0) -> OfflineDataset:
    """Transitions whose next observations chain within episodes (what collection produces)."""
    rng = np.random.default_rng(seed)
    n, o, a, s = 3, 4, 2, 5
    arrays: dict[str, list] = {
        k: [] for k in ("obs", "next_obs", "state", "next_state", "actions", "reward", "terminated")
    }
    for length, terminal in zip(lengths, terminal_last):
        obs_seq = rng.normal(size=(length + 1, n, o)).astype(np.float32)
        state_seq = rng.normal(size=(length + 1, s)).astype(np.float32)
        arrays["obs"].append(obs_seq[:-1])
        arrays["next_obs"].append(obs_seq[1:])
        arrays["state"].append(state_seq[:-1])
        arrays["next_state"].append(state_seq[1:])
        arrays["actions"].append(rng.uniform(-1, 1, size=(length, n, a)).astype(np.float32))
        arrays["reward"].append(rng.normal(size=length).astype(np.float32))
        arrays["terminated"].append(np.eye(1, length, length - 1, dtype=np.float32)[0] * terminal)
    cat = {k: np.concatenate(v) for k, v in arrays.items()}
    returns = [r.sum(dtype=np.float64) for r in arrays["reward"]]
    return OfflineDataset(
        cat,
        EpisodeIndex.from_lengths(lengths, returns),
        obs_dims=(4, 4, 3),
        action_dims=(2, 1, 2),
        metadata={"provenance": {"policy": "test"}},
    )


def test_writer_round_trip_is_exact_and_flashbax_reads_it(tmp_path: Path) -> None:
    ds = chained_dataset([3, 1, 5, 2], [True, False, False, True])
    uid = tmp_path / "vaults" / "dmarl" / "toy" / "x.vlt" / "uid"
    write_vault(ds, uid)
    meta = json.loads((uid / "metadata.json").read_text())
    assert "structure" not in meta and meta["dmarl"]["obs_dims"] == [4, 4, 3]
    from flashbax.vault import Vault

    read = Vault(vault_name="x.vlt", rel_dir=str(uid.parent.parent), vault_uid="uid").read()
    np.testing.assert_array_equal(np.asarray(read.experience["observations"])[0], ds.obs)
    back = load_vault(uid)
    for key in ds.arrays:
        np.testing.assert_array_equal(back.arrays[key], ds.arrays[key], err_msg=key)
    np.testing.assert_array_equal(back.episodes.lengths, ds.episodes.lengths)
    np.testing.assert_array_equal(back.episodes.returns, ds.episodes.returns)
    assert back.obs_dims == (4, 4, 3) and back.action_dims == (2, 1, 2)
    assert (
        back.metadata["provenance"]["policy"] == "test" and back.metadata["provenance"]["return_stats"]["episodes"] == 4
    )
    with pytest.raises(UserError, match="already exists; pass --force"):
        write_vault(ds, uid)
    write_vault(chained_dataset([2], [True], seed=5), uid, force=True)
    assert len(load_vault(uid)) == 2
    assert sorted(p.name for p in uid.parent.iterdir()) == ["uid"]  # no temporaries left


def test_writer_refuses_unchained_transitions_and_writes_nothing(tmp_path: Path) -> None:
    ds = chained_dataset([4, 3], [False, False])
    ds.arrays["next_obs"][1, 0, 0] += 1.0
    out = tmp_path / "v.vlt" / "uid"
    with pytest.raises(UserError, match="transition 1 .* next_obs that differs from the obs of the next transition"):
        write_dataset(ds, out, "vault")
    assert not out.parent.exists()  # checked before anything is created


def good_vault(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    leaves = make_leaves(1, 8, 2, 13, 3, 17)
    leaves["truncations"][0, 3] = 1
    uid = tmp_path / "vaults" / "og_marl" / "mamujoco" / "2halfcheetah.vlt" / "Good"
    return uid, leaves


@pytest.mark.parametrize(
    "damage, match",
    [
        ("no_metadata", r"Good/metadata\.json: metadata: expected an existing JSON file"),
        ("no_structure", r"metadata\.json: structure: expected 'structure_shape' and 'structure_dtype'"),
        ("no_rewards_leaf", r"metadata\.json: structure: expected leaves .*missing rewards"),
        ("leaf_not_in_store", r"manifest\.ocdbt: leaf 'infos\.final_state\.': expected a readable zarr array"),
        (
            "agents",
            r"Good: observations \(catalogue og_marl/mamujoco/2halfcheetah/Good\): "
            r"expected shape \(1, T, 2, 13\); found shape \(1, 8, 3, 13\)",
        ),
        ("obs_dim", r"expected shape \(1, T, 2, 13\); found shape \(1, 8, 2, 12\)"),
        ("nan", r"leaf 'rewards': expected finite values; found NaN/Inf at row 0"),
        ("index_negative", r"vault_index: expected a step count in 1\.\.10000000000000 .*; found -3"),
        ("index_zero", r"vault_index: expected a step count in 1\.\.10000000000000 .*; found 0"),
        ("discrete", r"leaf 'actions': expected continuous actions"),
        ("corrupt_chunk", r"Good/d: leaf '.*': expected 8 readable time steps; found corrupt data"),
        ("truncated_manifest", r"manifest\.ocdbt: leaf '.*': expected a readable zarr array"),
    ],
)
def test_bad_vaults(tmp_path: Path, damage: str, match: str) -> None:
    uid, leaves = good_vault(tmp_path)
    index = None
    if damage == "agents":
        leaves = make_leaves(1, 8, 3, 13, 3, 17)
    elif damage == "obs_dim":
        leaves["observations"] = leaves["observations"][..., :12].copy()
    elif damage == "nan":
        leaves["rewards"][0, 2, 1] = np.inf
    elif damage in ("index_negative", "index_zero"):
        index = -3 if damage == "index_negative" else 0
    elif damage == "discrete":
        leaves["actions"] = np.zeros((1, 8, 2), np.int32)
    write_raw_vault(uid, leaves, style="current", vault_index=index)  # by hand: damage follows
    meta_file = uid / "metadata.json"
    meta = json.loads(meta_file.read_text())
    if damage == "no_metadata":
        meta_file.unlink()
    elif damage == "no_structure":
        meta_file.write_text(json.dumps({"version": 1.1}))
    elif damage == "no_rewards_leaf":
        del meta["structure_shape"]["rewards"], meta["structure_dtype"]["rewards"]
        meta_file.write_text(json.dumps(meta))
    elif damage == "leaf_not_in_store":  # listed in metadata.json, absent from the OCDBT store
        meta["structure_shape"]["infos"]["legals"] = "(1, 10000000000000, 2, 3)"
        meta["structure_dtype"]["infos"]["legals"] = "float32"
        meta["structure_shape"]["infos"]["final_state"] = "(1, 10000000000000, 17)"
        meta["structure_dtype"]["infos"]["final_state"] = "float32"
        meta_file.write_text(json.dumps(meta))
    elif damage == "corrupt_chunk":
        biggest = max((uid / "d").iterdir(), key=lambda p: p.stat().st_size)
        data = bytearray(biggest.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
        biggest.write_bytes(bytes(data))
    elif damage == "truncated_manifest":
        (uid / "manifest.ocdbt").write_bytes((uid / "manifest.ocdbt").read_bytes()[:20])
    with pytest.raises(UserError, match=match):
        load_dataset(uid)


def test_vlt_directory_with_several_uids_is_ambiguous(tmp_path: Path) -> None:
    uid, leaves = good_vault(tmp_path)
    write_raw_vault(uid, leaves)
    write_raw_vault(uid.parent / "Medium", leaves)
    with pytest.raises(
        UserError,
        match=r"2halfcheetah\.vlt: vault UID: expected exactly one <UID>/metadata\.json inside; "
        r"found \['Good', 'Medium'\]",
    ):
        load_dataset(uid.parent)
    ds = load_dataset(uid)
    assert len(ds) == 6 and ds.metadata["catalogue"] == "og_marl/mamujoco/2halfcheetah/Good"
    assert any("1000000 steps" in w for w in ds.metadata["warnings"])
