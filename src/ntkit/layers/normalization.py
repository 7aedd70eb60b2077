"""`LayerNorm`: normalization over channels at each position (no affine parameters).

The finite layer: y = (x - mean_c x) / sqrt(var_c x + eps) at each position. With infinitely many channels
the mean is zero and the variance is Sigma(x_p, x_p) when the input is a centred Gaussian (it must follow a
weight layer), so (neural-tangents' `stax.LayerNorm` over the channel axis):

    Sigma'(x_p, y_q) = Sigma(x_p, y_q) / sqrt((q(x_p) + eps) (q(y_q) + eps)),   and the same for Theta.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_real
from .base import Layer, LayerError
from .record import Record


class LayerNorm(Layer):
    """Normalizes each position of `(N, C, *S)` (or each row of (N, d)) over its channels; eps as in torch."""

    odd_preserving = True     # x / |x| is odd in the weights before it

    def __init__(self, eps: float = 1e-5, flat_only: bool = False):
        self.eps = float(check_real(eps, "eps", minimum=0.0))
        self.flat_only = bool(flat_only)  # translated from torch.nn.LayerNorm, which normalizes the last axis

    def out_shape(self, shape, where):
        if self.flat_only and len(shape) > 1:
            raise LayerError(f"LayerNorm ({where}, from torch.nn.LayerNorm) normalizes the last axis in torch, not "
                             f"the channels of inputs of shape {shape}; use nk.LayerNorm() to normalize channels")
        return shape

    def describe(self) -> str:
        return f"LayerNorm(eps={self.eps!r})"

    def gaussian(self, in_gaussian, where):
        if not in_gaussian:
            raise LayerError(f"LayerNorm ({where}) needs a centred Gaussian input in the limit: put it after a "
                             f"Linear or Conv layer (after a nonlinearity its limit is not a plain rescaling)")
        return True

    def apply(self, record: Record, ctx) -> Record:
        q1, q2, _ = ctx.variances(record)
        scale = torch.rsqrt(q1 + self.eps) * torch.rsqrt(q2 + self.eps)   # no product of variances: no overflow
        return record.map(lambda t: t * scale)

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return ChannelLayerNorm(self.eps)


class ChannelLayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) over dimension 1 (the channels), biased variance, no parameters."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = x.var(1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"
