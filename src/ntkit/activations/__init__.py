"""Nonlinearities: the function, its derivative, and the Sigma / SigmaDot Gaussian maps.

`get_activation` turns a name, a torch callable or an `Activation` into an `Activation`.
Closed forms: relu, leaky_relu, abs, identity, erf, sign, step, sin, cos, gelu.
Any other elementwise function goes through 2-D Gaussian quadrature in polar coordinates (`Quadrature`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import Activation, angle, safe_sqrt
from .closed import Cos, Erf, Gelu, Identity, PiecewiseLinear, Sign, Sin, Step
from .quadrature import DEFAULT_DEGREE, Quadrature, radial_rule

CLOSED_FORMS: dict[str, Callable[[], Activation]] = {
    "relu": lambda: PiecewiseLinear(0.0, name="relu"),
    "leaky_relu": lambda: PiecewiseLinear(0.01, name="leaky_relu"),
    "abs": lambda: PiecewiseLinear(-1.0, name="abs"),
    "identity": Identity,
    "linear": Identity,
    "erf": Erf,
    "sign": Sign,
    "step": Step,
    "sin": Sin,
    "cos": Cos,
    "gelu": Gelu,
}

F = torch.nn.functional
QUADRATURE_NAMES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "elu": F.elu,
    "selu": F.selu,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "softsign": F.softsign,
}


def leaky_relu(negative_slope: float = 0.01) -> Activation:
    """Leaky ReLU with any slope (closed form)."""
    return PiecewiseLinear(float(negative_slope), name=f"leaky_relu({float(negative_slope):g})")


def get_activation(activation: str | Callable | Activation, degree: int = DEFAULT_DEGREE) -> Activation:
    """An `Activation` from a name, a torch callable (quadrature), or an `Activation` itself."""
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        key = activation.lower()
        if key in CLOSED_FORMS:
            return CLOSED_FORMS[key]()
        if key in QUADRATURE_NAMES:
            return Quadrature(QUADRATURE_NAMES[key], name=key, degree=degree)
        known = ", ".join(sorted({*CLOSED_FORMS, *QUADRATURE_NAMES}))
        raise ValueError(f"activation {activation!r} is unknown; use one of {known}, or pass a torch callable")
    if callable(activation):
        return Quadrature(activation, degree=degree)
    raise TypeError(f"activation must be a name, a callable or an Activation, got {type(activation).__name__}")


__all__ = [
    "Activation", "Cos", "Erf", "Gelu", "Identity", "PiecewiseLinear", "Quadrature", "Sign", "Sin",
    "Step", "angle", "get_activation", "radial_rule", "leaky_relu", "safe_sqrt", "DEFAULT_DEGREE",
]
