"""`Activation`: an elementwise nonlinearity, with short forms `ReLU()`, `Erf()`, `Tanh()`, ...

Its kernel map at each pair of positions (Proposition 1, Theorem 1; `ntkit.activations` holds the maps):

    Sigma'(x_p, y_q) = E[sigma(u) sigma(v)],      (u, v) ~ N(0, [[q(x_p), Sigma(x_p, y_q)], [., q(y_q)]])
    Theta'(x_p, y_q) = Theta(x_p, y_q) E[sigma'(u) sigma'(v)]

(the weight scale W_std^2 of the paper's SigmaDot is applied by the next weight layer). Every activation of
`MLP` works: closed forms where they exist, quadrature for any other torch callable.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..activations import DEFAULT_DEGREE, get_activation
from ..activations import Activation as Nonlinearity
from ..nets import ActivationLayer
from .base import Layer, LayerError
from .record import Record


class Activation(Layer):
    """An elementwise nonlinearity: a name ("relu", "erf", "tanh", ...), a torch callable (quadrature), or an
    `ntkit.activations.Activation`. quadrature_degree: radial nodes of the quadrature (see `MLP`)."""

    def __init__(self, activation: str | Callable | Nonlinearity = "relu", quadrature_degree: int = DEFAULT_DEGREE):
        self.activation = get_activation(activation, degree=quadrature_degree)

    def describe(self) -> str:
        return f"Activation({self.activation!r})"

    def gaussian(self, in_gaussian, where):
        if not in_gaussian:
            raise LayerError(f"{self.name} ({where}) needs a Gaussian input in the limit: put a Linear or Conv layer "
                             f"before it (pooling, Flatten, LayerNorm or a Residual may come in between)")
        return False

    def apply(self, record: Record, ctx) -> Record:
        act = self.activation
        q1, q2 = ctx.variances(record)
        if ctx.is_self and record.layout != "full":  # each position with itself: the exact diagonal maps
            sigma = act.sigma_diag(record.sigma)
            theta = None if record.theta is None else record.theta * act.sigma_dot_diag(record.sigma)
        elif record.theta is None:
            sigma, theta = act.sigma(record.sigma, q1, q2), None
        else:
            sigma, dot = act.sigma_both(record.sigma, q1, q2)
            theta = record.theta * dot
        return Record(sigma, theta, record.layout, record.nbatch, record.spatial)

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return ActivationLayer(self.activation)


def _short(class_name: str, name: str, doc: str) -> type[Activation]:
    """A named subclass of Activation for one nonlinearity (nk.ReLU() is nk.Activation("relu"))."""

    def __init__(self, quadrature_degree: int = DEFAULT_DEGREE):
        Activation.__init__(self, name, quadrature_degree)

    return type(class_name, (Activation,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


ReLU = _short("ReLU", "relu", "max(x, 0) (closed form).")
GELU = _short("GELU", "gelu", "x Phi(x) (closed form).")
Erf = _short("Erf", "erf", "erf(x) (closed form).")
Tanh = _short("Tanh", "tanh", "tanh(x) (quadrature).")
Sigmoid = _short("Sigmoid", "sigmoid", "1 / (1 + exp(-x)) (quadrature).")
Abs = _short("Abs", "abs", "|x| (closed form).")
Softplus = _short("Softplus", "softplus", "log(1 + exp(x)) (quadrature).")
ELU = _short("ELU", "elu", "x for x > 0, exp(x) - 1 otherwise (quadrature).")
SiLU = _short("SiLU", "silu", "x sigmoid(x) (quadrature).")


class LeakyReLU(Activation):
    """max(x, 0) + negative_slope min(x, 0) (closed form)."""

    def __init__(self, negative_slope: float = 0.01):
        from ..activations import leaky_relu

        Activation.__init__(self, leaky_relu(negative_slope))
