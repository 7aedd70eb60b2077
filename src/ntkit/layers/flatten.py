"""`Flatten`: (N, C, *S) -> (N, C prod(S)) (no parameters).

A Linear layer after it averages over positions the covariance of each position with itself:
Sigma'(x, y) = (1 / P) sum_p Sigma(x_p, y_p) (neural-tangents' `stax.Flatten`), so a network that ends with
Flatten + Linear and has no pooling needs only the positions' diagonal: O(N^2 HW).
"""

from __future__ import annotations

from torch import nn

from .base import Layer
from .record import Record, full_to_diag


class Flatten(Layer):
    """Flattens channels and positions into features (the identity on flat inputs)."""

    odd_preserving = True

    def out_shape(self, shape, where):
        size = 1
        for s in shape:
            size *= s
        return (size,)

    def need(self, out_need):
        return "diag"

    def apply(self, record: Record, ctx) -> Record:
        if record.layout == "flat":
            return record
        record = full_to_diag(record)
        axes = tuple(range(record.nbatch, record.sigma.ndim))
        out = record.map(lambda t: t.mean(dim=axes))
        return Record(out.sigma, out.theta, "flat", record.nbatch, ())

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return nn.Flatten()
