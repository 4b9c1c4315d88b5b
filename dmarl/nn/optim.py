"""Adam by implementation name: the same update rule, different kernels (speed on CPU).

torch's default on CPU is the ``'for-loop'`` implementation (about ten elementwise ops per
parameter tensor). ``'foreach'`` runs the same ops over all tensors at once and gives
bit-identical parameters; ``'fused'`` does one pass per tensor (about 7x faster than the
for-loop on a 2 x 2048 critic on one CPU thread) and differs from the others by float32
rounding (~1 ulp per step). ``scripts/bench_core_speed.py`` (c) prints the times.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from dmarl.errors import UserError

ADAM_IMPLEMENTATIONS = ("for-loop", "foreach", "fused")
ADAM_BETAS = (0.9, 0.999)  # torch's defaults


def make_adam(
    params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float], implementation: str, field: str
) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr, betas)`` with the kernel ``implementation``; ``field``
    names the config field in the error for an unknown name."""
    if implementation not in ADAM_IMPLEMENTATIONS:
        raise UserError(f"{field} = {implementation!r}: expected one of {', '.join(map(repr, ADAM_IMPLEMENTATIONS))}")
    flags = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[implementation]
    return torch.optim.Adam(params, lr=lr, betas=betas, **flags)
