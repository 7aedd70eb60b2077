"""Nonlinearities: the function, its derivative, and the Sigma / SigmaDot Gaussian maps (`Nonlinearity`).

`get_activation` turns a name, a torch callable or a `Nonlinearity` into a `Nonlinearity`. Every name comes from one
table (`registry.py`), which also gives the layers' short forms (nk.ReLU(), ...), `nk.infinite`'s translation of
torch modules and the names the estimators accept (`names()`).
Closed forms: relu, leaky_relu, abs (`piecewise.py`), identity, erf, sign, step, gelu (`closed.py`), sin, cos
(`trig.py`), and neural-tangents' exp, gaussian, rbf (`exponential.py`), polynomial, monomial, hermite
(`polynomial.py`), rectified_monomial (`rectified.py`) and abrelu (`abrelu.py`). Any other elementwise function
goes through 2-D Gaussian quadrature in polar coordinates (`Quadrature`; the named ones in `by_quadrature.py`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from . import (  # noqa: F401  (abrelu, ..., rectified and by_quadrature register their nonlinearities)
    abrelu,
    by_quadrature,
    exponential,
    polynomial,
    rectified,
    registry,
)
from .base import Nonlinearity, angle, safe_sqrt
from .closed import Erf, Gelu, Identity, Sign, Step
from .piecewise import PiecewiseLinear, leaky_relu
from .quadrature import DEFAULT_DEGREE, Quadrature, radial_rule
from .registry import lookup, names, register
from .trig import Cos, Sin


def get_activation(activation: str | Callable | Nonlinearity, degree: int = DEFAULT_DEGREE) -> Nonlinearity:
    """A `Nonlinearity` from a registered name (`names()`), a torch callable (quadrature with `degree` radial
    nodes), or a `Nonlinearity` itself."""
    if isinstance(activation, Nonlinearity):
        return activation
    if isinstance(activation, str):
        entry = lookup(activation)
        if entry is None:
            raise ValueError(f"activation {activation!r} is unknown; use one of {', '.join(names())}, or pass a "
                             f"torch callable")
        return entry.build(degree)
    if callable(activation):
        return Quadrature(activation, degree=degree)
    raise TypeError(f"activation must be a name, a callable or a Nonlinearity, got {type(activation).__name__}")


def __getattr__(name: str):
    if name == "Activation":
        warnings.warn("ntkit.activations.Activation is renamed Nonlinearity (ntkit.Activation is the layer); the "
                      "old name will be removed in the next release", DeprecationWarning, stacklevel=2)
        return Nonlinearity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Cos", "Erf", "Gelu", "Identity", "Nonlinearity", "PiecewiseLinear", "Quadrature", "Sign", "Sin", "Step",
    "angle", "get_activation", "leaky_relu", "lookup", "names", "radial_rule", "register", "registry", "safe_sqrt",
    "DEFAULT_DEGREE",
]
