"""OMAD update time before / after the issue-16 speed paths, interleaved in one process.

The "before" path runs the same OMAD object type with the previous implementations loaded from
a git revision (``--base-rev``, default cd72416, the commit before them): ``ou_sample`` and
OMAD's residual-score lambda, ``AgentBatchedScoreMLP.denoise`` / ``conditioned`` (time
features per step), ``BatchRenorm.forward`` (autograd through separate passes) and torch's
for-loop Adam. The "after" path is the working tree. Both start from the same seed and replay
buffer; blocks of ``--block`` updates alternate (``--pairs`` rounds); printed: median ms per
update of each and the median of the per-round ratios (robust to load on a shared machine).

    python scripts/bench_omad_speedup.py [--paper-scale] [--block 20] [--pairs 7]
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dmarl.algorithms.omad as omad_module  # noqa: E402
from bench_algorithm_speed import PAPER_SCALE, ROOT, UpdateBench  # noqa: E402
from dmarl.diffusion.score_networks import AgentBatchedScoreMLP  # noqa: E402
from dmarl.nn.batch_renorm import BatchRenorm  # noqa: E402

CONFIG = "gin/experiments/omad_simple_spread_cpu.gin"
OLD_FILES = ("dmarl/diffusion/samplers.py", "dmarl/diffusion/score_networks.py", "dmarl/nn/batch_renorm.py")


def load_old(rev: str, tmp: str) -> dict[str, ModuleType]:
    """The files ``OLD_FILES`` at ``rev`` as standalone modules (they import the current dmarl)."""
    archive = subprocess.run(["git", "archive", rev, *OLD_FILES], cwd=ROOT, check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp, filter="data")
    modules = {}
    for rel in OLD_FILES:
        name = "old_" + Path(rel).stem
        spec = importlib.util.spec_from_file_location(name, Path(tmp) / rel)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their module by name
        spec.loader.exec_module(module)
        modules[Path(rel).stem] = module
    return modules


def old_sample_method(old_ou_sample: Any) -> Any:
    """OMAD._sample as before: residual score as a lambda around the network."""

    def _sample(self: Any, policy: Any, obs: torch.Tensor, *, requires_grad: bool, deterministic: bool = False) -> Any:
        shape = (obs.shape[0], self.spec.n_agents, self.spec.act_max)
        noise = obs.new_zeros((self.schedule.num_steps + 1, *shape)) if deterministic else None
        network = policy.conditioned(obs)
        score = (lambda a, t: network(a, t) - a / self.eta**2) if self.residual_score else network
        sample = old_ou_sample(
            score, self.schedule, shape, eta=self.eta, squash=self.squash,
            action_mask=self.action_mask, noise=noise, requires_grad=requires_grad,
        )
        action = sample.action if self.squash else sample.action.clamp(-1.0, 1.0)
        return action * self.action_mask, sample.entropy_lower_bound().sum(-1), sample

    return _sample


@contextmanager
def old_paths(old: dict[str, ModuleType]) -> Iterator[None]:
    """The previous implementations in place of the current ones, restored on exit."""
    old_net = old["score_networks"].AgentBatchedScoreMLP
    swaps = [
        (omad_module.OMAD, "_sample", old_sample_method(old["samplers"].ou_sample)),
        (AgentBatchedScoreMLP, "denoise", vars(old_net)["denoise"]),
        (AgentBatchedScoreMLP, "conditioned", vars(old_net)["conditioned"]),
        (BatchRenorm, "forward", vars(old["batch_renorm"].BatchRenorm)["forward"]),
    ]
    current = [(cls, name, vars(cls)[name]) for cls, name, _ in swaps]
    for cls, name, value in swaps:
        setattr(cls, name, value)
    try:
        yield
    finally:
        for cls, name, value in current:
            setattr(cls, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-rev", default="cd72416")
    parser.add_argument("--paper-scale", action="store_true", help="paper network sizes (OMAD 2x2048 critic)")
    parser.add_argument("--block", type=int, default=20, help="updates per block")
    parser.add_argument("--pairs", type=int, default=7, help="rounds of interleaved blocks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bindings = PAPER_SCALE if args.paper_scale else []
    with tempfile.TemporaryDirectory() as tmp:
        old = load_old(args.base_rev, tmp)
        torch.manual_seed(0)
        after = UpdateBench(CONFIG, bindings)
        with old_paths(old):
            torch.manual_seed(0)
            before = UpdateBench(CONFIG, [*bindings, "OMAD.adam_implementation = 'for-loop'"])
        times: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.pairs):
            with old_paths(old):
                times["before"].append(before.block(args.block))
            times["after"].append(after.block(args.block))
    scale = "paper" if args.paper_scale else "CPU"
    ratio = statistics.median(a / b for a, b in zip(times["after"], times["before"]))
    print(f"OMAD update, {scale}-scale networks, 1 thread, {args.pairs} rounds of {args.block}-update blocks:")
    print(f"  before ({args.base_rev}): {1e3 * statistics.median(times['before']):8.2f} ms/update")
    print(f"  after (working tree): {1e3 * statistics.median(times['after']):8.2f} ms/update   after / before: {ratio:.2f}")


if __name__ == "__main__":
    main()
