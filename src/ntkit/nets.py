"""The paper's network as a torch.nn.Module (Section 2), and the classical one of Remark 1.

NTK parametrization (the paper), all parameters iid N(0, 1):
    alpha^(0)(x)        = x
    tilde_alpha^(l+1)(x) = W_std / sqrt(n_l) W^(l) alpha^(l)(x) + b_std b^(l)     (b_std = beta)
    alpha^(l)(x)        = sigma(tilde_alpha^(l)(x)),      f(x) = tilde_alpha^(L)(x)
Standard parametrization (Remark 1): W^(l) ~ N(0, W_std^2 / n_l), b^(l) ~ N(0, b_std^2) and
tilde_alpha^(l+1) = W^(l) alpha^(l) + b^(l): the same functions at initialization, but gradients
scaled differently (the NTK then grows with the width).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .activations import Nonlinearity


class NTKLinear(nn.Module):
    """y = weight_multiplier * x @ weight.T + bias_multiplier * bias.

    ntk:      weight, bias ~ N(0, 1); weight_multiplier = W_std / sqrt(in), bias_multiplier = b_std.
    standard: weight ~ N(0, W_std^2 / in), bias ~ N(0, b_std^2); both multipliers 1.
    """

    def __init__(self, in_features: int, out_features: int, W_std: float, b_std: float,
                 parametrization: str = "ntk", generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.parametrization = parametrization
        dtype = dtype or torch.get_default_dtype()
        weight = torch.randn(out_features, in_features, generator=generator, dtype=dtype)
        bias = torch.randn(out_features, generator=generator, dtype=dtype)
        if parametrization == "ntk":
            self.weight_multiplier, self.bias_multiplier = float(W_std) / math.sqrt(in_features), float(b_std)
        else:
            weight *= float(W_std) / math.sqrt(in_features)
            bias *= float(b_std)
            self.weight_multiplier, self.bias_multiplier = 1.0, 1.0
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias * self.bias_multiplier, x, self.weight.T, alpha=self.weight_multiplier) \
            if x.ndim == 2 else self.weight_multiplier * x @ self.weight.T + self.bias_multiplier * self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weight_multiplier={self.weight_multiplier:.4g}, bias_multiplier={self.bias_multiplier:.4g}")


class ActivationLayer(nn.Module):
    """An elementwise nonlinearity as a module (no parameters)."""

    def __init__(self, activation: Nonlinearity):
        super().__init__()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x)

    def extra_repr(self) -> str:
        return self.activation.name


class NTKNetwork(nn.Sequential):
    """NTKLinear, ActivationLayer, ..., NTKLinear: L weight layers, no nonlinearity on the output."""

    def __init__(self, widths: list[int], activation: Nonlinearity, W_std: float, b_std: float,
                 parametrization: str, generator: torch.Generator | None, dtype: torch.dtype | None):
        layers: list[nn.Module] = []
        for index, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            if index > 0:
                layers.append(ActivationLayer(activation))
            layers.append(NTKLinear(n_in, n_out, W_std, b_std, parametrization, generator, dtype))
        super().__init__(*layers)
        self.widths = list(widths)

    @classmethod
    def of(cls, modules: list[nn.Module], widths: list[int]) -> NTKNetwork:
        """The network of the given modules (NTKLinear, ActivationLayer, ..., NTKLinear, as `ntkit.MLP.layers`
        builds them), with its `widths` [n0, n1, ..., nL]."""
        net = cls.__new__(cls)
        nn.Sequential.__init__(net, *modules)
        net.widths = list(widths)
        return net
