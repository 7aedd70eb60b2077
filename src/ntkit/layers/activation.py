"""`Activation`: an elementwise nonlinearity, with short forms `ReLU()`, `Erf()`, `Tanh()`, ...

Its kernel map at each pair of positions (Proposition 1, Theorem 1; `ntkit.activations` holds the maps):

    Sigma'(x_p, y_q) = E[sigma(u) sigma(v)],      (u, v) ~ N(0, [[q(x_p), Sigma(x_p, y_q)], [., q(y_q)]])
    Theta'(x_p, y_q) = Theta(x_p, y_q) E[sigma'(u) sigma'(v)]

(the weight scale W_std^2 of the paper's SigmaDot is applied by the next weight layer). Every activation of
`MLP` works: closed forms where they exist, quadrature for any other torch callable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..activations import DEFAULT_DEGREE, Nonlinearity, PiecewiseLinear, get_activation, registry
from ..activations.base import moderate as variances_moderate
from ..nets import ActivationLayer
from .base import Layer, LayerError
from .record import Record


class Activation(Layer):
    """An elementwise nonlinearity: a name ("relu", "erf", "tanh", ...: `ntkit.activations.names()`), a torch
    callable (quadrature), or an `ntkit.activations.Nonlinearity`. quadrature_degree: radial nodes of the
    quadrature (see `MLP`)."""

    def __init__(self, activation: str | Callable | Nonlinearity = "relu", quadrature_degree: int = DEFAULT_DEGREE):
        self.activation = get_activation(activation, degree=quadrature_degree)

    @property
    def elementwise(self) -> Nonlinearity:
        return self.activation

    def describe(self) -> str:
        return f"Activation({self.activation!r})"

    def gaussian(self, in_gaussian, where):
        if not in_gaussian:
            raise LayerError(f"{self.name} ({where}) needs a Gaussian input in the limit: put a Linear or Conv layer "
                             f"before it (pooling, Flatten, LayerNorm or a Residual may come in between)")
        return False

    def apply(self, record: Record, ctx) -> Record:
        act = self.activation
        q1, q2, moderate = ctx.variances(record)
        if ctx.is_self and record.layout != "full":  # each position with itself: the exact diagonal maps
            sigma = act.sigma_diag(q1)
            theta = None if record.theta is None or record.theta.ndim == 0 else record.theta * act.sigma_dot_diag(q1)
        elif isinstance(act, PiecewiseLinear) and not _needs_grad(record, q1, q2):
            if ctx.is_self and q1.device.type == "cpu":   # a synchronization costs nothing on a CPU
                moderate = bool(variances_moderate(q1))
            sigma, theta = act.pair_maps(record.sigma, record.theta, q1, q2, moderate)
        elif record.theta is None:
            sigma, theta = act.sigma(record.sigma, q1, q2), None
        else:
            sigma, dot = act.sigma_both(record.sigma, q1, q2)
            theta = record.theta * dot if record.theta.ndim else record.theta
        return Record(sigma, theta, record.layout, record.nbatch, record.spatial)

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return ActivationLayer(self.activation)


def _needs_grad(record: Record, *more: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (record.sigma, record.theta,
                                                                                        *more))


def short_form(entry: registry.Entry) -> type[Activation]:
    """The layer class of a registered nonlinearity: nk.ReLU() is nk.Activation("relu"); its settings (`entry.params`,
    as nk.LeakyReLU(negative_slope)) positional or by keyword, and `quadrature_degree` by keyword."""
    defaults = dict(entry.params)

    def __init__(self, *args, quadrature_degree: int = DEFAULT_DEGREE, **kwargs):
        if len(args) > len(defaults):
            raise TypeError(f"{entry.layer} takes at most {len(defaults)} positional settings, got {len(args)}")
        settings = {**defaults, **dict(zip(defaults, args, strict=False))}
        for key, value in kwargs.items():
            if key not in defaults:
                raise TypeError(f"{entry.layer} got an unknown setting {key!r}")
            settings[key] = value
        Activation.__init__(self, entry.build(quadrature_degree, **settings))

    return type(entry.layer, (Activation,), {"__init__": __init__, "__doc__": entry.doc, "__module__": __name__})


#: the short forms of every registered nonlinearity that names one (`ntkit.activations.registry`): class name -> class
SHORT_FORMS: dict[str, type[Activation]] = {entry.layer: short_form(entry) for entry in registry.REGISTRY.values()
                                            if entry.layer is not None}
globals().update(SHORT_FORMS)
