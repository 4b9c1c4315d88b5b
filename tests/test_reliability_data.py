"""Datasets: the writer never deletes what it did not write (issue 17 item 1; `convert` into
`afile/sub` or `.`, item 14), and validation catches stored episode returns that disagree
with the rewards and actions outside [-1, 1] (item 7)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dmarl.cli import main
from dmarl.data.offline import EpisodeIndex, OfflineDataset
from dmarl.envs.datasets import load_dataset, write_dataset
from dmarl.envs.datasets.common import check_output, not_a_suite_dataset
from dmarl.envs.datasets.native import load_native, write_native
from dmarl.errors import UserError


def small_dataset(seed: int = 0, *, returns_offset: float = 0.0, action_scale: float = 1.0) -> OfflineDataset:
    """Four episodes of 2 agents; returns are the reward sums (plus ``returns_offset``)."""
    rng = np.random.default_rng(seed)
    lengths = [3, 5, 2, 4]
    t, n = sum(lengths), 2
    obs, state = rng.normal(size=(t + 1, n, 3)).astype(np.float32), rng.normal(size=(t + 1, 4)).astype(np.float32)
    arrays = {  # next_obs chains to the next row (a vault stores it only that way)
        "obs": obs[:-1],
        "next_obs": obs[1:],
        "state": state[:-1],
        "next_state": state[1:],
        "actions": (action_scale * rng.uniform(-1, 1, size=(t, n, 2))).astype(np.float32),
        "reward": rng.normal(size=t).astype(np.float32),
        "terminated": np.zeros(t, np.float32),
    }
    returns = np.add.reduceat(arrays["reward"].astype(np.float64), [0, 3, 8, 10]) + returns_offset
    return OfflineDataset(arrays, EpisodeIndex.from_lengths(lengths, returns), metadata={"task": "test/x"})


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ---- item 1: --force overwrites only a dataset dmarl wrote --------------------------------------------------


def test_issue_scenario_convert_into_parent_keeps_thesis_and_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mkdir -p u/sub; echo x > u/thesis.txt; cp -a bandit u/sub/bandit;
    dmarl datasets convert u/sub/bandit u --force` deleted u/thesis.txt and the source."""
    monkeypatch.chdir(tmp_path)
    write_native(small_dataset(), tmp_path / "bandit")
    (tmp_path / "u" / "sub").mkdir(parents=True)
    (tmp_path / "u" / "thesis.txt").write_text("x\n")
    shutil.copytree(tmp_path / "bandit", tmp_path / "u" / "sub" / "bandit")
    before = tree_digest(tmp_path / "u")

    assert main(["datasets", "convert", "u/sub/bandit", "u", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "output u is the source dataset u/sub/bandit or a folder holding it" in err
    assert tree_digest(tmp_path / "u") == before
    assert (tmp_path / "u" / "thesis.txt").read_text() == "x\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_force_refuses_a_folder_that_is_not_a_dmarl_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_native(small_dataset(), tmp_path / "src")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.txt").write_text("x")
    before = tree_digest(tmp_path / "notes")
    assert main(["datasets", "convert", "src", "notes", "--force"]) == 2
    assert "notes exists and is not a dataset dmarl wrote (it has no readable metadata.json)" in capsys.readouterr().err
    assert tree_digest(tmp_path / "notes") == before


def test_force_refuses_a_dmarl_dataset_holding_a_users_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_native(small_dataset(0), tmp_path / "src")
    write_native(small_dataset(1), tmp_path / "old")
    (tmp_path / "old" / "README.txt").write_text("mine")
    before = tree_digest(tmp_path / "old")
    assert main(["datasets", "convert", "src", "old", "--force"]) == 2
    assert "(it also holds README.txt)" in capsys.readouterr().err
    assert tree_digest(tmp_path / "old") == before


def test_force_refuses_a_foreign_json_folder(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metadata.json").write_text(json.dumps({"format": "something-else"}))
    assert not_a_suite_dataset(tmp_path / "d") == "its metadata.json does not say dmarl wrote it"
    with pytest.raises(UserError, match="not a dataset dmarl wrote"):
        write_native(small_dataset(), tmp_path / "d", force=True)
    assert (tmp_path / "d" / "metadata.json").is_file()


def test_convert_into_dot_or_under_a_file_is_one_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_native(small_dataset(), tmp_path / "src")
    (tmp_path / "afile").write_text("keep")
    before = tree_digest(tmp_path)
    for dst, force, message in (
        (".", [], "output . is the current directory or a folder above it"),
        (".", ["--force"], "output . is the current directory or a folder above it"),
        ("..", ["--force"], "output .. is the current directory or a folder above it"),
        ("afile/sub", [], "output afile/sub: afile is a file; expected a folder"),
        ("afile", ["--force"], "afile exists and is not a dataset dmarl wrote (it is a file"),
        ("src", ["--force"], "output src is the source dataset src"),
    ):
        assert main(["datasets", "convert", "src", dst, *force]) == 2, dst
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    assert tree_digest(tmp_path) == before


def test_force_replaces_a_dmarl_dataset_native_and_vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_native(small_dataset(0), tmp_path / "a")
    write_native(small_dataset(1), tmp_path / "b")
    assert main(["datasets", "convert", "a", "out"]) == 0
    assert main(["datasets", "convert", "a", "out"]) == 2  # exists: needs --force
    assert main(["datasets", "convert", "b", "out", "--force"]) == 0
    np.testing.assert_array_equal(load_dataset("out").reward, small_dataset(1).reward)
    assert main(["datasets", "convert", "a", "v.vlt/uid", "--format", "vault"]) == 0
    assert not_a_suite_dataset(tmp_path / "v.vlt" / "uid") is None
    assert main(["datasets", "convert", "b", "v.vlt/uid", "--format", "vault", "--force"]) == 0
    np.testing.assert_allclose(load_dataset("v.vlt/uid").reward, small_dataset(1).reward)
    (tmp_path / "empty").mkdir()  # an empty folder holds nothing to lose
    assert main(["datasets", "convert", "a", "empty"]) == 0


def test_collect_and_make_bandit_share_the_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "thesis.txt").write_text("x")
    before = tree_digest(tmp_path / "work")
    collect = ["collect", "--task", "toy/bandit", "--policy", "random", "--episodes", "3", "--num-envs", "2"]
    assert main([*collect, "--out", "work", "--force"]) == 2
    assert "work exists and is not a dataset dmarl wrote" in capsys.readouterr().err
    assert main(["datasets", "make-bandit", "--out", "work", "--size", "10", "--force"]) == 2
    assert "work exists and is not a dataset dmarl wrote" in capsys.readouterr().err
    assert tree_digest(tmp_path / "work") == before
    assert main([*collect, "--out", "ok"]) == 0
    assert main([*collect, "--out", "ok", "--seed", "1", "--force"]) == 0
    assert load_dataset("ok").metadata["provenance"]["seed"] == 1


def test_check_output_names_the_rule_for_library_callers(tmp_path: Path) -> None:
    check_output(tmp_path / "new")  # a new path is fine
    check_output(tmp_path / "x" / "y" / "new")
    with pytest.raises(UserError, match="is the current directory or a folder above it"):
        check_output(Path("/"), force=True)


# ---- item 7: returns and action range ------------------------------------------------------------------------


def test_stored_returns_that_disagree_with_rewards_are_an_error(tmp_path: Path, capsys) -> None:
    out = write_native(small_dataset(), tmp_path / "ds")
    assert json.loads((out / "metadata.json").read_text())["episode_returns"] == "reward_sum"
    returns = np.load(out / "episode_returns.npy")
    returns[2] = 999.0  # the issue: `info` then reported mean 999
    np.save(out / "episode_returns.npy", returns)
    with pytest.raises(UserError) as err:
        load_native(out)
    text = str(err.value)
    assert "episode_returns.npy: episode_returns: expected the sum of each episode's rewards (episode 2:" in text
    assert "found 999 (1 of 4 episodes differ)" in text
    assert main(["datasets", "validate", str(out)]) == 2
    assert main(["datasets", "info", str(out)]) == 2


def test_returns_within_float_rounding_pass_and_source_returns_are_kept(tmp_path: Path) -> None:
    ds = small_dataset()
    ds.episodes.returns[:] = ds.episodes.returns * (1 + 1e-9)  # rounding of another summation order
    load_native(write_native(ds, tmp_path / "close"))
    # returns that also count rewards of steps without a transition (a vault's truncated last step)
    shifted = write_native(small_dataset(returns_offset=0.5), tmp_path / "shifted")
    assert json.loads((shifted / "metadata.json").read_text())["episode_returns"] == "source"
    np.testing.assert_allclose(load_native(shifted).episodes.returns, small_dataset(returns_offset=0.5).episodes.returns)


def test_actions_outside_the_box_are_an_error_with_min_and_max(tmp_path: Path, capsys) -> None:
    out = write_native(small_dataset(), tmp_path / "ds")
    actions = np.load(out / "actions.npy")
    actions[4, 1, 0] = 1.5
    actions[7, 0, 1] = -2.25
    np.save(out / "actions.npy", actions)
    with pytest.raises(UserError, match=r"ds/actions.npy: actions: expected actions in \[-1, 1\] .*found min -2.25, max 1.5"):
        load_native(out)
    assert main(["datasets", "validate", str(out), "--task", "toy/bandit"]) == 2
    err = capsys.readouterr().err
    assert "found min -2.25, max 1.5" in err and "Traceback" not in err


def test_writer_refuses_out_of_box_actions_unless_the_dataset_declares_no_box(tmp_path: Path) -> None:
    wide = small_dataset(action_scale=2.0)
    with pytest.raises(UserError, match=r"actions: expected actions in \[-1, 1\]"):
        write_dataset(wide, tmp_path / "wide")
    assert not (tmp_path / "wide").exists()
    wide.metadata["action_range"] = None  # recorded without an action box (the OMSD bandit as drawn)
    back = load_dataset(write_dataset(wide, tmp_path / "wide"))
    assert back.metadata["action_range"] is None
    assert float(np.abs(back.actions).max()) > 1.0


def test_bandit_dataset_declares_its_box(tmp_path: Path) -> None:
    from dmarl.envs.toy_data import write_bandit_dataset

    drawn = load_dataset(write_bandit_dataset(tmp_path / "none", size=2000, boundary="none"))
    assert drawn.metadata["action_range"] is None and float(np.abs(drawn.actions).max()) > 1.0
    clipped = load_dataset(write_bandit_dataset(tmp_path / "clip", size=2000, boundary="clip"))
    assert clipped.metadata["action_range"] == [-1.0, 1.0]
