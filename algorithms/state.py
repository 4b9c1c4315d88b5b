"""Checkpoint state from declared attributes: an algorithm names what it checkpoints once.

A class lists its checkpointed attributes in ``checkpointed`` (an entry is an attribute name,
or a pair ``(checkpoint key, attribute)`` where the two differ); :class:`Checkpointed` gives
it ``state_dict`` / ``load_state_dict`` over them, keys in the declared order. Kinds:

- ``nn.Module``, ``Optimizer``, LR scheduler: their own ``state_dict`` / ``load_state_dict``;
- a list or tuple of those: a list of their state dicts (loading checks the length);
- a tensor: saved as a detached clone, loaded in place under ``no_grad`` (same shape);
- a number, bool or string (counters, temperatures): saved and restored as is;
- a dict (counters, notes): saved and restored as a shallow copy;
- ``None`` (an optional module this configuration does not build): saved as ``{}``.

Loading refuses a state whose keys differ from the declared ones with one ``ValueError``
naming the missing and the unexpected keys (`dmarl.runners.checkpoint.load_algorithm_state`
reports it as "checkpoint ... does not fit algorithm ..."). A class that stores something
else (a derived layout, an old-checkpoint check) overrides the two methods and calls
:func:`save_state` / :func:`load_state`, passing the keys it handles itself as ``handled``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

Entry = str | tuple[str, str]  # attribute, or (checkpoint key, attribute)
STATEFUL = (nn.Module, Optimizer, LRScheduler)
SCALARS = (bool, int, float, str)


def _split(entry: Entry) -> tuple[str, str]:
    return (entry, entry) if isinstance(entry, str) else entry


def _keys(entries: Sequence[Entry]) -> list[str]:
    """The checkpoint keys of ``entries``, in order."""
    return [_split(entry)[0] for entry in entries]


def _is_stateful_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, STATEFUL) for v in value)


def _save_value(owner: str, attribute: str, value: Any) -> Any:
    if isinstance(value, STATEFUL):
        return value.state_dict()
    if _is_stateful_list(value):
        return [v.state_dict() for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, SCALARS):
        return value
    if isinstance(value, dict):
        return dict(value)
    if value is None:
        return {}
    raise TypeError(
        f"{owner}.{attribute} is of type {type(value).__name__}; a checkpointed attribute must be a module, optimiser, "
        "LR scheduler, a list of those, a tensor, a number, a string, a dict or None"
    )


def save_state(owner: Any, entries: Sequence[Entry]) -> dict[str, Any]:
    """``{key: state of the attribute}`` for ``entries`` of ``owner``, in order."""
    name = type(owner).__name__
    return {key: _save_value(name, attribute, getattr(owner, attribute)) for key, attribute in map(_split, entries)}


def _check_keys(owner: Any, state: Mapping[str, Any], keys: Sequence[str]) -> None:
    """One ``ValueError`` naming the missing and unexpected keys unless ``state`` has exactly ``keys``."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{type(owner).__name__} state: expected a dict of {list(keys)}; found {type(state).__name__}")
    missing = [key for key in keys if key not in state]
    unexpected = [key for key in state if key not in keys]
    if missing or unexpected:
        raise ValueError(
            f"{type(owner).__name__} state: missing keys {missing}, unexpected keys {unexpected}; "
            f"expected exactly {list(keys)}"
        )


def _load_value(owner: Any, attribute: str, key: str, saved: Any) -> None:
    where = f"{type(owner).__name__} state {key!r}"
    current = getattr(owner, attribute)
    if isinstance(current, STATEFUL):
        current.load_state_dict(saved)
    elif _is_stateful_list(current):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(current):
            found = f"{len(saved)} entries" if isinstance(saved, (list, tuple)) else type(saved).__name__
            raise ValueError(f"{where}: the checkpoint holds {found}; expected {len(current)} entries")
        for target, value in zip(current, saved):
            target.load_state_dict(value)
    elif isinstance(current, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.shape != current.shape:
            found = f"shape {tuple(saved.shape)}" if isinstance(saved, torch.Tensor) else type(saved).__name__
            raise ValueError(f"{where}: the checkpoint holds {found}; expected shape {tuple(current.shape)}")
        with torch.no_grad():
            current.copy_(saved)
    elif current is None:
        if not isinstance(saved, Mapping) or saved:
            raise ValueError(f"{where}: the checkpoint holds state this configuration does not build")
    elif isinstance(current, dict):
        if not isinstance(saved, Mapping):
            raise TypeError(f"{where}: the checkpoint holds {type(saved).__name__}; expected dict")
        setattr(owner, attribute, dict(saved))
    else:  # a scalar: restored as saved, if of the same kind (numbers are interchangeable)
        kind = str if isinstance(current, str) else (bool, int, float)
        if not isinstance(saved, kind):
            raise TypeError(f"{where}: the checkpoint holds {type(saved).__name__}; expected {type(current).__name__}")
        setattr(owner, attribute, saved)


def load_state(owner: Any, state: Mapping[str, Any], entries: Sequence[Entry], handled: Sequence[str] = ()) -> None:
    """Load ``state`` (from :func:`save_state`) into ``owner``'s ``entries``; ``handled``: further
    keys the caller loads itself (accepted here, not loaded)."""
    _check_keys(owner, state, [*handled, *_keys(entries)])
    for key, attribute in map(_split, entries):
        _load_value(owner, attribute, key, state[key])


class Checkpointed:
    """``state_dict`` / ``load_state_dict`` over the attributes named in ``checkpointed``."""

    checkpointed: ClassVar[tuple[Entry, ...]] = ()

    def state_dict(self) -> dict[str, Any]:
        return save_state(self, self.checkpointed)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_state(self, state, self.checkpointed)
