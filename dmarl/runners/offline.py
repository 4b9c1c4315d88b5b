"""The offline loop: optional pretraining phases, then gradient updates on dataset batches,
with the same evaluation (fixed seeds, deterministic actions, final 10x episodes) and the
same checkpoint/resume and NaN handling as the online loop."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import gin
import numpy as np
import torch

from dmarl.algorithms.base import Algorithm
from dmarl.data.batch import Batch
from dmarl.data.offline import SAMPLERS, OfflineDataset, make_sampler
from dmarl.envs.base import MultiAgentVecEnv
from dmarl.errors import UserError
from dmarl.runners.evaluation import EvaluationSchedule
from dmarl.runners.online import CheckpointFn, LogFn, check_finite


class BatchSource(Protocol):
    """What the offline runner needs from a dataset."""

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device) -> Batch: ...


@gin.configurable
@dataclass
class OfflineRunner(EvaluationSchedule):
    """Budgets and schedule of an offline run (counts in gradient updates)."""

    total_updates: int = 100_000
    batch_size: int = 256
    dataset_fraction: float = 1.0
    subset_seed: int = 0
    sampler: str = "uniform"
    sampler_copies: int | None = None
    sampler_threshold: float | None = None
    sampler_temperature: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.dataset_fraction <= 1.0:
            raise UserError(f"OfflineRunner.dataset_fraction must be in (0, 1], got {self.dataset_fraction}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"OfflineRunner.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.sampler == "return_weighted" and (self.sampler_copies is None or self.sampler_threshold is None):
            raise UserError("OfflineRunner.sampler = 'return_weighted' needs sampler_copies and sampler_threshold")
        if self.sampler == "softmax" and self.sampler_temperature is None:
            raise UserError("OfflineRunner.sampler = 'softmax' needs sampler_temperature")

    def batch_source(self, dataset: OfflineDataset) -> BatchSource:
        """The training data: a reproducible by-episode fraction of the dataset, sampled
        uniformly or with trajectory reweighting by episode return (DOM2's, bound by
        gin/algorithms/dom2.gin): top-quantile episodes counted ``sampler_copies`` times
        ('return_weighted') or episode weights exp(R / ``sampler_temperature``) ('softmax')."""
        subset = dataset.subset(self.dataset_fraction, seed=self.subset_seed)
        try:
            return make_sampler(subset, self.sampler, copies=self.sampler_copies, threshold=self.sampler_threshold,
                                temperature=self.sampler_temperature)
        except ValueError as err:
            raise UserError(f"OfflineRunner.sampler = {self.sampler!r}: {err}") from None

    def run(
        self,
        algorithm: Algorithm,
        dataset: OfflineDataset,
        eval_env: MultiAgentVecEnv,
        *,
        seed: int,
        device: torch.device,
        log: LogFn,
        save_checkpoint: CheckpointFn,
        resume: dict[str, Any] | None = None,
        progress: Any = None,
    ) -> dict[str, float]:
        """Pretrain (if the algorithm has ``pretrain(source, rng=, device=, log=)``), then
        ``total_updates`` updates on batches of the dataset."""
        rng = np.random.default_rng(seed)
        source = self.batch_source(dataset)
        state = {"updates": 0, "pretrained": False}
        if resume is not None:
            rng.bit_generator.state = resume["np_rng"]
            state = dict(resume["counters"])

        def checkpoint() -> None:
            save_checkpoint({"np_rng": rng.bit_generator.state, "counters": dict(state)})

        pretrain: Callable[..., None] | None = getattr(algorithm, "pretrain", None)
        if pretrain is not None and not state["pretrained"]:
            pretrain(source, rng=rng, device=device, log=log)
            state["pretrained"] = True
            checkpoint()
        plan: Callable[[int], None] | None = getattr(algorithm, "plan_updates", None)
        if plan is not None:  # e.g. the horizon of an annealed actor lr
            plan(self.total_updates)
        if progress is not None:
            progress.update(state["updates"])
        window: dict[str, list[float]] = {}
        while state["updates"] < self.total_updates:
            start = time.perf_counter()
            metrics = algorithm.update(source.sample(self.batch_size, rng, device))
            metrics["time/update_ms"] = 1000.0 * (time.perf_counter() - start)
            state["updates"] += 1
            check_finite(metrics, f"update {state['updates']}")
            for name, value in metrics.items():
                window.setdefault(name, []).append(value)
            if progress is not None:
                progress.update(1)
            if state["updates"] % self.log_interval == 0:
                log({k: float(np.mean(v)) for k, v in window.items()}, state["updates"])
                window = {}
            if state["updates"] % self.eval_interval == 0:
                log(self.evaluation(algorithm, eval_env, final=False, progress=progress), state["updates"])
            if state["updates"] % self.checkpoint_interval == 0 or state["updates"] == self.total_updates:
                checkpoint()
        final = self.evaluation(algorithm, eval_env, final=True)
        log(final, state["updates"])
        return final
