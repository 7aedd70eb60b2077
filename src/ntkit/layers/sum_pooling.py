"""`SumPool1d`, `SumPool2d`, `SumPool3d` and `GlobalSumPool`: sums over positions (no parameters; neural-tangents'
`stax.SumPool` and `stax.GlobalSumPool`). Sums mix positions, so the kernel needs every pair of positions before them:

    SumPool:        Sigma'(x_i, y_j) = sum_{d, e} Sigma(x_{s i + d}, y_{s j + e})
    GlobalSumPool:  Sigma'(x, y)     = sum_{p, q} Sigma(x_p, y_q)

and the same for Theta: the average pools' maps times (window size)^2 or P^2. GlobalSumPool is the readout of
graph networks (`Aggregate`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .pooling import GlobalAvgPool, _AvgPool
from .record import Record


class _SumPool(_AvgPool):
    def apply(self, record: Record, ctx) -> Record:
        scale = float(math.prod(self.kernel_size)) ** 2
        return super().apply(record, ctx).map(lambda t: t * scale)

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return _Scaled(super().module(in_shape, out_channels, generator, dtype), math.prod(self.kernel_size))


class SumPool1d(_SumPool):
    """Sum over windows of a sequence (N, C, L); stride defaults to kernel_size."""

    dims = 1


class SumPool2d(_SumPool):
    """Sum over windows of an image (N, C, H, W); stride defaults to kernel_size."""

    dims = 2


class SumPool3d(_SumPool):
    """Sum over windows of a volume (N, C, D, H, W); stride defaults to kernel_size."""

    dims = 3


class GlobalSumPool(GlobalAvgPool):
    """The sum over all positions: `(N, C, *S) -> (N, C)` (the readout of a graph network). Shapes and needs as
    GlobalAvgPool's; after a Mask the padding adds nothing (its kernel is 0), so no mask is consulted."""

    def apply(self, record: Record, ctx) -> Record:
        axes = tuple(range(record.nbatch, record.sigma.ndim))
        out = record.map(lambda t: t.sum(dim=axes))
        return Record(out.sigma, out.theta, "flat", record.nbatch, ())

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return _SumOverPositions()


class _Scaled(nn.Module):
    def __init__(self, module: nn.Module, factor: int):
        super().__init__()
        self.module, self.factor = module, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * self.factor


class _SumOverPositions(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).sum(2)
