"""Plain MLPs: activations by name, CrossQ-style optional normalisation, scaled output init."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dmarl.nn.batch_renorm import make_norm

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "mish": nn.Mish,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (relu, gelu, mish, silu, tanh, elu)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def uniform_init_(weight: Tensor, bias: Tensor | None, fan_in: int, scale: float = 1.0) -> None:
    """``nn.Linear``'s default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), times ``scale``.

    ``fan_in`` is explicit so that a layer split into parts (see ``ScoreMLP``) is initialised
    like the single layer it replaces.
    """
    bound = scale / math.sqrt(max(fan_in, 1))
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        if bias is not None:
            bias.uniform_(-bound, bound)


class Linear(nn.Linear):
    """``nn.Linear`` initialised by ``uniform_init_`` with an explicit ``fan_in`` and ``scale``
    (the default is ``nn.Linear``'s distribution; zero input features are allowed)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, fan_in: int | None = None, scale: float = 1.0
    ) -> None:
        super().__init__(in_features, out_features, bias)
        uniform_init_(self.weight, self.bias, fan_in or in_features, scale)

    def reset_parameters(self) -> None:
        uniform_init_(self.weight, self.bias, self.in_features)


class MLP(nn.Module):
    """``in_dim -> hidden[0] -> ... -> out_dim`` with an activation after every hidden layer.

    Normalisation (CrossQ layout): ``input_norm`` on the input, ``hidden_norm`` after each
    hidden activation; names as in ``make_norm``, ``norm_kwargs`` passed to both.
    ``out_init_scale`` multiplies the default init of the output layer (near-zero output at
    init for score networks).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        input_norm: str | None = None,
        hidden_norm: str | None = None,
        norm_kwargs: dict[str, Any] | None = None,
        out_init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        kw = dict(norm_kwargs or {})
        dims = [in_dim, *hidden, out_dim]
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim, tuple(hidden)
        self.activation = activation
        self.input_norm = make_norm(input_norm, in_dim, **kw)
        scales = [1.0] * len(hidden) + [out_init_scale]
        self.linears = nn.ModuleList(Linear(a, b, scale=c) for a, b, c in zip(dims[:-1], dims[1:], scales))
        self.norms = nn.ModuleList(make_norm(hidden_norm, h, **kw) for h in hidden)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_norm(x)
        for linear, norm in zip(self.linears, self.norms):  # norms has one entry fewer: stops before the last
            x = norm(self.act(linear(x)))
        return self.linears[-1](x)
