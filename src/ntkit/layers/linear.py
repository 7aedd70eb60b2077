"""`Linear`: a fully-connected layer on flat inputs (N, d), in the NTK parametrization.

    Sigma'(x, y) = W_std^2 Sigma(x, y) + b_std^2                 (Proposition 1)
    Theta'(x, y) = W_std^2 Theta(x, y) + Sigma'(x, y)            (Theorem 1)
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_positive_int, check_real
from ..nets import NTKLinear
from .base import Layer, LayerError, check_channels
from .record import Record


def affine(record: Record, W_std, b_std, mean, fresh: bool = False, divisor: int = 1) -> Record:
    """The kernel map of a weight layer whose unscaled map is `mean` (the identity for Linear, a window mean for
    Conv): Sigma' = W_std^2 mean(Sigma) + b_std^2, Theta' = W_std^2 mean(Theta) + Sigma'.

    fresh: `mean` returns new tensors, which are then scaled in place (plain float scales, no autograd).
    divisor: `mean` returns sums of this many terms (divided here, in the same pass as the scaling)."""
    w2, b2 = W_std**2 / divisor, b_std**2
    in_place = fresh and not isinstance(w2, torch.Tensor) and not isinstance(b2, torch.Tensor) \
        and not (torch.is_grad_enabled() and record.sigma.requires_grad)
    if record.theta is not None and record.theta.ndim == 0:  # Theta = 0 before the first weight layer
        sigma = mean(record.sigma) * w2 + b2
        theta = sigma.clone()
    elif in_place:
        sigma = mean(record.sigma).mul_(w2).add_(b2)
        theta = None if record.theta is None else mean(record.theta).mul_(w2).add_(sigma)
    else:
        sigma = mean(record.sigma) * w2 + b2
        theta = None if record.theta is None else mean(record.theta) * w2 + sigma
    return Record(sigma, theta, record.layout, record.nbatch, record.spatial)


class Linear(Layer):
    """y = W_std / sqrt(d) W x + b_std b, with W and b standard normal; the input must be flat (N, d)
    (use Flatten or GlobalAvgPool after convolutions)."""

    weights = True

    def __init__(self, W_std: float | torch.Tensor = 1.0, b_std: float | torch.Tensor = 0.1,
                 in_channels: int | None = None):
        self.W_std = check_real(W_std, "W_std", minimum=0.0)
        self.b_std = check_real(b_std, "b_std", minimum=0.0)
        self.in_channels = None if in_channels is None else check_positive_int(in_channels, "in_channels")

    def describe(self) -> str:
        known = "" if self.in_channels is None else f", in_channels={self.in_channels}"
        return f"Linear(W_std={float(self.W_std)!r}, b_std={float(self.b_std)!r}{known})"

    def out_shape(self, shape, where):
        if len(shape) != 1:
            raise LayerError(f"Linear ({where}) needs flat inputs (d,) per example, got shape {shape}; "
                             f"put Flatten() or GlobalAvgPool() before it")
        check_channels(self, shape, where)
        return shape  # the channel count is the (infinite) width

    def need(self, out_need):
        return "flat"

    def gaussian(self, in_gaussian, where):
        return True

    def apply(self, record, ctx):
        return affine(record, self.W_std, self.b_std, lambda t: t)

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return NTKLinear(in_shape[0], out_channels, float(self.W_std), float(self.b_std), "ntk", generator, dtype)
