"""`linearize`: the first-order Taylor expansion of a model around its current parameters.

    f_lin(x; theta) = f(x; theta_0) + J(x; theta_0) (theta - theta_0)

computed with one forward-mode pass (`torch.func.jvp`). Its parameters theta are trainable and
its NTK is J(x; theta_0) J(y; theta_0)^T at every theta: the constant kernel that the paper's
Theorem 2 says an infinitely wide network keeps during training, for comparing a finite network
with its linearization.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import jvp

from .common import call, model_values


class LinearizedModel(nn.Module):
    """f_lin(x; theta) = f(x; theta_0) + J(x; theta_0)(theta - theta_0); see `linearize`.

    Attributes: `base` (a frozen copy of the model at theta_0, with its buffers), `params` (theta,
    an nn.ParameterList in the order of `names`), `names` (the model's trainable parameter names).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        trainable, _ = model_values(model, None)
        self.names = list(trainable)
        self.base = copy.deepcopy(model).requires_grad_(False)
        self.params = nn.ParameterList([nn.Parameter(value.clone()) for value in trainable.values()])

    def theta0(self) -> dict[str, torch.Tensor]:
        """The expansion point theta_0 (the frozen copy's parameters)."""
        own = dict(self.base.named_parameters())
        return {name: own[name] for name in self.names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta0 = self.theta0()
        delta = {name: p - theta0[name] for name, p in zip(self.names, self.params, strict=True)}

        def f(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            return call(self.base, theta, (x,))

        value, tangent = jvp(f, (theta0,), (delta,))
        return value + tangent


def linearize(model: nn.Module) -> LinearizedModel:
    """The linearization of `model` around its current trainable parameters, as a trainable module.

    At creation f_lin = f; training it with any optimizer moves theta while the Jacobian stays
    J(x; theta_0), so `empirical_ntk(f_lin, X)` is constant. Buffers (e.g. BatchNorm statistics)
    are copied and kept; put such models in eval mode first.
    """
    return LinearizedModel(model)
