"""`dmarl.algorithms.state`: checkpoint state from declared attributes. Every supported kind
round-trips through ``torch.save`` / ``torch.load(weights_only=True)`` and training continues
identically; missing, unexpected or mismatched entries are refused naming them; every
registered algorithm keeps its checkpoint keys (old checkpoints keep loading) and round-trips."""
from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from dmarl.algorithms.state import Checkpointed
from dmarl.envs.base import EnvSpec
from torch import nn

import gin
from dmarl import registry
from dmarl.errors import UserError
from dmarl.runners.checkpoint import load_algorithm_state

from conftest import algorithm_test_spec


class Toy(Checkpointed):
    """One attribute of every supported kind (``renamed`` is stored under another key)."""

    checkpointed = (
        "net", "optim", "scheduler", "nets", "optims", "log_alpha", "updates", "eta", "ready", "note", "counters",
        "norm", ("renamed", "hidden"),
    )

    def __init__(self, seed: int, with_norm: bool = False) -> None:
        torch.manual_seed(seed)
        self.net, self.hidden = nn.Linear(3, 2), nn.Linear(2, 1)
        self.log_alpha = torch.zeros(2, requires_grad=True)
        self.optim = torch.optim.Adam([*self.net.parameters(), *self.hidden.parameters(), self.log_alpha], lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optim, lambda k: 0.5**k)
        self.nets = [nn.Linear(2, 2) for _ in range(2)]
        self.optims = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for n in self.nets]
        self.updates, self.eta, self.ready, self.note = 0, 1.0, False, "untrained"
        self.counters = {"steps": 0}
        self.norm = nn.BatchNorm1d(2) if with_norm else None

    def step(self) -> None:
        x = torch.randn(4, 3)
        h = self.net(x)
        loss = self.hidden(h).square().sum() + sum(n(h).square().sum() for n in self.nets) + (self.log_alpha * x[0, :2]).sum()
        for optim in (self.optim, *self.optims):
            optim.zero_grad()
        loss.backward()
        for optim in (self.optim, *self.optims):
            optim.step()
        self.scheduler.step()
        self.updates, self.eta, self.ready, self.note = self.updates + 1, self.eta * 0.7, True, "trained"
        self.counters["steps"] += 2


def through_file(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same(a: Any, b: Any, path: str = "state") -> None:
    """Exact equality of nested state: same keys in the same order, types, tensors bit for bit."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (path, a, b)
        for key in a:
            assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert type(a) is type(b) and a == b, (path, a, b)


def test_every_kind_round_trips_and_training_continues_identically() -> None:
    trained = Toy(0)
    for _ in range(3):
        trained.step()
    state = trained.state_dict()
    assert list(state) == [*Toy.checkpointed[:-1], "renamed"]
    assert state["log_alpha"] is not trained.log_alpha and not state["log_alpha"].requires_grad  # a detached clone
    assert state["counters"] is not trained.counters and state["norm"] == {}
    assert len(state["nets"]) == len(state["optims"]) == 2 and state["optims"][0]["state"]  # momentum buffers saved
    fresh = Toy(1)
    log_alpha = fresh.log_alpha
    fresh.load_state_dict(through_file(state))
    assert fresh.log_alpha is log_alpha and fresh.log_alpha.requires_grad  # loaded in place: the optimiser still holds it
    assert (fresh.updates, fresh.eta, fresh.ready, fresh.note) == (3, trained.eta, True, "trained")
    assert fresh.counters == {"steps": 6} and fresh.counters is not trained.counters
    assert_same(fresh.state_dict(), trained.state_dict())
    for model in (trained, fresh):  # Adam moments, SGD momentum and the lr schedule all continue
        torch.manual_seed(5)
        model.step()
    assert_same(fresh.state_dict(), trained.state_dict())
    assert fresh.scheduler.get_last_lr()[0] == pytest.approx(0.1 * 0.5**4)


def test_missing_and_unexpected_keys_are_named() -> None:
    state = Toy(0).state_dict()
    del state["updates"], state["renamed"]
    state["bogus"] = 1
    with pytest.raises(ValueError, match=r"Toy state: missing keys \['updates', 'renamed'\], unexpected keys \['bogus'\]"):
        Toy(1).load_state_dict(state)
    payload = {"algorithm": state}
    with pytest.raises(UserError, match=r"does not fit algorithm 'toy': Toy state: missing keys \['updates'"):
        load_algorithm_state(Toy(1), payload, Path("checkpoint.pt"), "toy")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("nets", [nn.Linear(2, 2).state_dict()] * 3, r"'nets': the checkpoint holds 3 entries; expected 2 entries"),
        ("log_alpha", torch.zeros(3), r"'log_alpha': the checkpoint holds shape \(3,\); expected shape \(2,\)"),
        ("updates", "3", r"'updates': the checkpoint holds str; expected int"),
        ("note", 3, r"'note': the checkpoint holds int; expected str"),
        ("counters", [0], r"'counters': the checkpoint holds list; expected dict"),
        ("norm", nn.BatchNorm1d(2).state_dict(), r"'norm': the checkpoint holds state this configuration does not build"),
    ],
)
def test_mismatched_entries_are_refused(key: str, value: Any, message: str) -> None:
    state = {**Toy(0).state_dict(), key: value}
    with pytest.raises((ValueError, TypeError), match=message):
        Toy(1).load_state_dict(state)


def test_optional_module_and_unsupported_kinds() -> None:
    with_norm = Toy(0, with_norm=True)
    state = with_norm.state_dict()
    assert set(state["norm"]) >= {"weight", "running_mean"}
    Toy(1, with_norm=True).load_state_dict(state)
    toy = Toy(0)
    toy.note = object()
    with pytest.raises(TypeError, match=r"Toy\.note is of type object; a checkpointed attribute must be"):
        toy.state_dict()


# -- every registered algorithm --------------------------------------------------------------
_PER_AGENT = ["actor", "actor_optim", "updates"]
_TD3 = [*_PER_AGENT, "actor_target", "critic", "critic_target", "critic_optim"]
_SCORE_REGULARIZED = [
    "phases", "v_optims", "q_optims", "behaviour_optim", "actors", "actor_optims", "actor_schedulers", "counters",
    "phase_sources",
]
_JOINT_DIFFUSION = [
    "policy", "policy_optim", "critic", "critic_target", "critic_optim", "log_alpha", "alpha_optim", "q_stats",
    "q_stats_ready", "updates", "policy_updates",
]
_PPO = ["actors", "actor_optims", "critic", "critic_optim", "value_norm"]
# The top-level checkpoint keys of every algorithm, as written before this helper existed.
EXPECTED_KEYS: dict[str, list[str]] = {
    "bc": _PER_AGENT, "matd3_bc": _TD3, "macql": _TD3, "omar": _TD3,
    "iql": [*_PER_AGENT, "log_std", "critics", "v_optims", "q_optims"],
    "omsd": _SCORE_REGULARIZED, "brpo_ind": _SCORE_REGULARIZED, "brpo_ctde": _SCORE_REGULARIZED,
    "brpo_jal": _SCORE_REGULARIZED,
    "madpmd": _JOINT_DIFFUSION, "masdac": _JOINT_DIFFUSION, "mappo": _PPO, "happo": _PPO,
    "ddpl": [
        "policy", "policy_optim", "critic", "critic_target", "critic_optim", "updates", "sampling_policy",
        "policy_updates", "eta",
    ],
    "dom2": [
        "actor", "ema", "critic", "critic_target", "actor_optim", "critic_optim", "schedulers", "counters", "horizon",
    ],
    "hasac": ["actors", "actor_optims", "critic", "critic_target", "critic_optim", "log_alpha", "alpha_optim"],
    "hatd3": ["actors", "target_actors", "actor_optims", "critic", "critic_target", "critic_optim", "updates"],
    "omad": ["policy", "target_policy", "critics", "policy_optim", "critic_optim", "log_alpha", "alpha_optim", "updates"],
    "decspg": ["critic", "visits", "policy", "updates"],
}


@functools.cache
def _spec(name: str) -> EnvSpec:
    return algorithm_test_spec(name)


def _build(name: str, seed: int) -> Any:
    gin.clear_config()
    torch.manual_seed(seed)
    return registry.get_algorithm(name).cls(spec=_spec(name), device=torch.device("cpu"))


def test_every_algorithm_has_pinned_keys() -> None:
    registry.load_all()
    assert sorted(registry.ALGORITHMS) == sorted(EXPECTED_KEYS)


@pytest.mark.parametrize("name", sorted(EXPECTED_KEYS))
def test_algorithm_checkpoint_keys_and_round_trip(name: str) -> None:
    registry.load_all()
    trained = _build(name, 0)
    state = trained.state_dict()
    assert list(state) == EXPECTED_KEYS[name]
    fresh = _build(name, 1)
    fresh.load_state_dict(through_file(state))
    assert_same(fresh.state_dict(), state)
    broken = {key: value for key, value in state.items() if key != EXPECTED_KEYS[name][0]}
    with pytest.raises(UserError, match=rf"does not fit algorithm '{name}': .*missing keys \['{EXPECTED_KEYS[name][0]}'\]"):
        load_algorithm_state(_build(name, 2), {"algorithm": broken}, Path("checkpoint.pt"), name)
