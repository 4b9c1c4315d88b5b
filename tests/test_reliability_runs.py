"""Runs end in the right MLflow state with a reason, and resume refuses what it must (issue 17
items 2, 6, 10, 11, 16 and item 14's `--resume` with another algorithm's checkpoint)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import REPO, cli_env
from dmarl.cli import main
from dmarl.errors import UserError
from dmarl.runners import checkpoint
from dmarl.train import FAILURE_TAG, _checkpoint_note, run_training

CONFIG = str(REPO / "gin/experiments/hasac_simple_spread_cpu.gin")
BUDGET = 800
TINY = [
    "HASAC.hidden = (16, 16)",
    f"OnlineRunner.total_env_steps = {BUDGET}",
    "OnlineRunner.random_steps = 100",
    "OnlineRunner.learning_starts = 100",
    "OnlineRunner.batch_size = 32",
    "OnlineRunner.eval_interval = 200",
    "OnlineRunner.eval_episodes = 2",
    "OnlineRunner.eval_num_envs = 2",
    "OnlineRunner.final_eval_multiplier = 1",
    "OnlineRunner.checkpoint_interval = 200",
    "OnlineRunner.log_interval = 100",
]


def client() -> MlflowClient:
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def all_runs() -> list:
    c = client()
    return [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]


def failed_run(monkeypatch: pytest.MonkeyPatch) -> str:
    """A run stopped by a NaN loss after its first checkpoint (200 env steps): FAILED, resumable."""
    from dmarl.algorithms.baselines.hasac import HASAC

    update, calls = HASAC.update, {"n": 0}

    def poisoned(self: HASAC, batch: object) -> dict[str, float]:
        calls["n"] += 1
        metrics = update(self, batch)
        if calls["n"] > 60:  # updates start at 100 env steps, 0.25 per env step: NaN at ~344, after the log at 300
            metrics["train/critic_loss"] = float("nan")
        return metrics

    with monkeypatch.context() as m:
        m.setattr(HASAC, "update", poisoned)
        result = run_training([CONFIG], TINY, experiment="rel", progress=False)
    assert result.status == "FAILED"
    return result.run_id


def run_state(run_id: str) -> tuple[str, str | None]:
    run = client().get_run(run_id)
    return run.info.status, run.data.tags.get(FAILURE_TAG)


def corrupt_weight_bytes(path: Path, n: int = 32) -> None:
    """Overwrite ``n`` bytes in the middle of the largest tensor storage of a torch zip."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(start)
        old = f.read(n)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in old))


def test_checkpoint_without_checksum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"x": torch.ones(3)})
    assert torch.equal(checkpoint.load(path)["x"], torch.ones(3))
    checkpoint.checksum_path(path).unlink()
    with pytest.raises(UserError, match="no checksum file checkpoint.pt.sha256"):
        checkpoint.load(path)


def test_checksum_sidecar_is_consistent_at_every_step_of_a_save(tmp_path: Path, monkeypatch) -> None:
    """A crash between any two file operations of `save` leaves a payload the sidecar lists."""
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"step": torch.tensor(1)})
    real_replace, seen = os.replace, []

    def replace_and_check(src: object, dst: object) -> None:
        real_replace(src, dst)
        checkpoint.verify(path)  # what a resume after a crash right here would check
        seen.append(Path(str(dst)).name)

    monkeypatch.setattr(checkpoint.os, "replace", replace_and_check)
    checkpoint.save(path, {"step": torch.tensor(2)})
    assert seen == ["checkpoint.pt.sha256", "checkpoint.pt", "checkpoint.pt.sha256"]
    assert len(checkpoint.checksum_path(path).read_text().splitlines()) == 1
    assert int(checkpoint.load(path)["step"]) == 2


def test_resume_refuses_corrupt_foreign_and_finished_and_never_flips_the_run(workdir: Path, monkeypatch, capsys) -> None:
    """One FAILED run, resumed from a checkpoint that is corrupt, another run's, another
    algorithm's (by name, then by state-dict shape): each refused with one message and the run
    left FAILED; the real checkpoint then resumes to FINISHED, which cannot be resumed again."""
    from dmarl import registry
    from dmarl.envs.factory import make_env

    run_id = failed_run(monkeypatch)
    before = run_state(run_id)
    path = workdir / "runs" / run_id / "checkpoint.pt"
    assert before[0] == "FAILED" and f"last good checkpoint kept at {path}" in before[1]
    good = checkpoint.load(path)
    capsys.readouterr()

    def refused(message: str) -> None:
        assert main(["train", "--resume", run_id, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, err
        assert run_state(run_id) == before  # a failed --resume does not flip FAILED to RUNNING

    corrupt_weight_bytes(path)
    torch.load(path, weights_only=True)  # torch itself does not notice: the old behaviour resumed silently
    with pytest.raises(UserError, match=r"checkpoint .*checkpoint.pt is corrupt: sha256 .* does not match checkpoint.pt.sha256"):
        checkpoint.load(path)
    refused("checkpoint.pt is corrupt")
    assert _checkpoint_note(path).startswith("no verified checkpoint to resume from")  # never called "last good"

    checkpoint.save(path, {**good, "run_id": "0123456789abcdef"})  # valid checksum, another run's id
    refused(f"belongs to run '0123456789abcdef'; expected run '{run_id}'")

    checkpoint.save(path, {**good, "algorithm_name": "hatd3"})
    refused("holds algorithm 'hatd3'; expected 'hasac'")

    registry.load_all()  # a checkpoint without the name: the state dict itself does not fit
    spec = make_env("mpe/simple_spread_n3", 1).spec
    hatd3 = registry.get_algorithm("hatd3").cls(spec=spec, device=torch.device("cpu"))
    foreign = {k: v for k, v in good.items() if k != "algorithm_name"}
    checkpoint.save(path, {**foreign, "algorithm": hatd3.state_dict()})
    refused("does not fit algorithm 'hasac'")

    assert good["counters"]["env_steps"] == 200
    logged = [m.step for m in client().get_metric_history(run_id, "train/critic_loss")]
    assert max(logged) > 200  # logged after the checkpoint: a resume replays that step
    checkpoint.save(path, good)  # the real checkpoint resumes to the end (replaying steps 200..300)
    assert main(["train", "--resume", run_id, "--no-progress"]) == 0
    assert run_state(run_id) == ("FINISHED", None)  # the old failure reason is cleared
    for key in client().get_run(run_id).data.metrics:  # item 16: no step is logged twice
        steps = [m.step for m in client().get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, sorted(steps))
    after = [m.step for m in client().get_metric_history(run_id, "train/critic_loss")]
    assert after[: len(logged)] == logged and after == sorted(after) and after[-1] == BUDGET
    capsys.readouterr()
    assert main(["train", "--resume", run_id, "--no-progress"]) == 2
    assert f"cannot resume run {run_id}: it is FINISHED" in capsys.readouterr().err
    assert run_state(run_id) == ("FINISHED", None)
    assert [m.step for m in client().get_metric_history(run_id, "final/return_mean")] == [BUDGET]


@pytest.mark.parametrize(
    "binding, message",
    [
        ("OnlineRunner.total_env_steps = 0", "OnlineRunner.total_env_steps = 0 is out of range"),
        ("OnlineRunner.eval_episodes = 0", "OnlineRunner.eval_episodes = 0 is out of range"),
        ("OnlineRunner.final_eval_multiplier = 0", "OnlineRunner.final_eval_multiplier = 0 is out of range"),
    ],
)
def test_configs_without_a_score_are_refused_before_a_run_exists(workdir: Path, capsys, binding: str, message: str) -> None:
    assert main(["train", CONFIG, "--no-progress", "--bind", binding]) == 2
    assert message in capsys.readouterr().err
    assert not (workdir / "mlflow.db").exists() or all_runs() == []


def test_non_finite_final_score_fails_the_run(workdir: Path, monkeypatch) -> None:
    from dmarl.runners import evaluation

    monkeypatch.setattr(
        evaluation, "evaluation_metrics",
        lambda algorithm, env, episodes, seed, prefix: {f"{prefix}/return_mean": float("nan"), f"{prefix}/return_std": 0.0},
    )
    result = run_training([CONFIG], TINY, experiment="rel", progress=False)
    assert result.status == "FAILED" and result.final_score is None
    status, reason = run_state(result.run_id)
    assert status == "FAILED" and "final/return_mean = nan" in reason


def test_bad_checkpoint_dir_is_refused_before_a_run_exists(workdir: Path, capsys) -> None:
    (workdir / "afile").write_text("x")
    for where, message in (
        (workdir / "afile", "is a file; expected a directory"),
        (workdir / "afile" / "sub", "is not writable"),
    ):
        assert main(["train", CONFIG, "--no-progress", "--bind", f"run.checkpoint_dir = '{where}'"]) == 2
        err = capsys.readouterr().err
        assert f"checkpoint directory {where} {message}" in err and "Traceback" not in err
    assert not (workdir / "mlflow.db").exists() or all_runs() == []


def test_unwritable_checkpoint_dir_is_refused_before_a_run_exists(workdir: Path, capsys) -> None:
    target = Path("/sys/dmarl-unwritable-runs")  # read-only even for root
    try:
        target.mkdir()
    except OSError:
        pass
    else:
        target.rmdir()
        pytest.skip("/sys is writable here")
    assert main(["train", CONFIG, "--no-progress", "--bind", f"run.checkpoint_dir = '{target}'"]) == 2
    assert f"checkpoint directory {target} is not writable" in capsys.readouterr().err
    assert not (workdir / "mlflow.db").exists() or all_runs() == []


@pytest.mark.slow  # three runs, two of them in fresh interpreters: ~20 s of CPU
def test_sigterm_marks_killed_keeps_checkpoint_and_resume_logs_each_step_once(workdir: Path) -> None:
    full = run_training([CONFIG], TINY, experiment="full", progress=False)
    env = cli_env(workdir)
    base = [sys.executable, "-m", "dmarl.cli", "train", CONFIG, "--no-progress", "--experiment", "term"]
    proc = subprocess.Popen(base + [a for b in TINY for a in ("--bind", b)], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_id, deadline = None, time.time() + 300
    while time.time() < deadline and proc.poll() is None and run_id is None:
        for ckpt in (workdir / "runs").glob("*/checkpoint.pt"):
            if ckpt.parent.name == full.run_id:
                continue
            try:  # wait until metrics past the checkpoint are logged: those a resume replays
                step = int(checkpoint.load(ckpt)["counters"]["env_steps"])
                history = client().get_metric_history(ckpt.parent.name, "train/critic_loss")
            except Exception:  # noqa: BLE001 - mid-write; poll again
                continue
            if any(m.step > step for m in history):
                os.kill(proc.pid, signal.SIGTERM)
                run_id = ckpt.parent.name
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    assert run_id is not None, "the run finished before it could be terminated"
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert f"terminated by SIGTERM; run {run_id} is marked KILLED" in err and "Traceback" not in err
    status, reason = run_state(run_id)
    assert status == "KILLED" and reason.startswith("terminated by SIGTERM; last good checkpoint kept at")
    saved = checkpoint.load(workdir / "runs" / run_id / "checkpoint.pt")  # kept and verified
    assert saved["counters"]["env_steps"] < BUDGET

    resumed = subprocess.run([sys.executable, "-m", "dmarl.cli", "train", "--resume", run_id, "--no-progress"],
                             cwd=workdir, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in run.data.metrics:
        steps = [m.step for m in client().get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, sorted(steps))
    full_metrics = client().get_run(full.run_id).data.metrics
    for key in ("final/return_mean", "eval/return_mean", "train/critic_loss"):
        assert run.data.metrics[key] == full_metrics[key], key
    assert [m.step for m in client().get_metric_history(run_id, "eval/return_mean")] == list(range(0, BUDGET + 1, 200))
