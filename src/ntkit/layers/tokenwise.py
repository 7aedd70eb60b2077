"""`TokenLinear`: one Linear layer applied at every position (token) of a sequence or image, a 1x1 convolution (the
layers of a transformer's MLP block; neural-tangents' `stax.Dense` on inputs with positions).

Each position's output depends on that position's input only, with the same weights everywhere, so

    Sigma'(x_p, y_q) = W_std^2 Sigma(x_p, y_q) + b_std^2,        Theta'(x_p, y_q) = W_std^2 Theta(x_p, y_q) + Sigma'

on whatever spatial covariance the rest of the network needs (the positions' diagonal or every pair): the map of
`Linear` at every entry (the standard parametrization's too, at the fan-in `in_channels`). Flat inputs take `Linear`.
"""

from __future__ import annotations

from torch import nn

from .._checks import check_choice, check_positive_int, check_real
from .base import Layer, LayerError, check_channels
from .conv import NTKConv
from .linear import check_bias, fan_in_known, weight_map, weight_settings


class TokenLinear(Layer):
    """y_p = W_std / sqrt(C) W x_p + b_std b at every position p of (N, C, L) or (N, C, H, W) inputs, W and b
    standard normal (NTK parametrization); the same kernel as Conv1d(1) / Conv2d(1), for any number of spatial
    axes up to two. b_std=None: no bias; parametrization="standard" as `Linear`'s (get="ntk" needs `in_channels`)."""

    weights = True

    def __init__(self, W_std: float = 1.0, b_std: float | None = 0.1, in_channels: int | None = None,
                 parametrization: str = "ntk"):
        self.parametrization = check_choice(parametrization, "parametrization", ("ntk", "standard"))
        self.W_std = check_real(W_std, "W_std", minimum=0.0)
        self.b_std, self.bias = check_bias(b_std)
        self.in_channels = None if in_channels is None else check_positive_int(in_channels, "in_channels")

    def describe(self) -> str:
        return f"TokenLinear({weight_settings(self)})"

    @property
    def has_ntk_limit(self) -> bool:
        return fan_in_known(self)

    def out_shape(self, shape, where):
        if len(shape) not in (2, 3):
            raise LayerError(f"TokenLinear ({where}) acts at every position of inputs (C, L) or (C, H, W) per "
                             f"example, got shape {shape}; for flat inputs use Linear")
        check_channels(self, shape, where)
        return shape

    def gaussian(self, in_gaussian, where):
        return True

    def apply(self, record, ctx):
        return weight_map(self, record)

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        ones = (1,) * (len(in_shape) - 1)
        return NTKConv(in_shape[0], out_channels, ones, ones, "valid", float(self.W_std), float(self.b_std),
                       generator, dtype, self.parametrization, self.bias)
