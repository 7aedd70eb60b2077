"""`AvgPool1d`, `AvgPool2d` and `GlobalAvgPool`: averages over positions (no parameters).

Averaging mixes positions, so the kernel after it needs every pair of positions before it:

    AvgPool:        Sigma'(x_i, y_j) = (1 / k^2) sum_{d, e} Sigma(x_{s i + d}, y_{s j + e})
    GlobalAvgPool:  Sigma'(x, y)     = (1 / P^2) sum_{p, q} Sigma(x_p, y_q)

and the same for Theta (neural-tangents' `stax.AvgPool`, `stax.GlobalAvgPool`). Networks with pooling cost
O(N^2 (HW)^2) memory and time for the layers before the (last) pooling, instead of O(N^2 HW).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import all_finite
from .base import Layer, LayerError, spatial_only
from .conv import _pair
from .masking import MaskedMean, building_mask, masked_mean, masks_of
from .record import Record, out_size, window_sum


class _AvgPool(Layer):
    dims = 0
    pools = True
    odd_preserving = True

    def __init__(self, kernel_size: int | tuple[int, ...], stride: int | tuple[int, ...] | None = None,
                 padding: str = "valid"):
        self.kernel_size = _pair(kernel_size, self.dims, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, self.dims, "stride")
        if padding != "valid":
            raise ValueError(f"{self.name} supports padding='valid' only, got {padding!r}")
        self.padding = padding

    def describe(self) -> str:
        return f"{self.name}(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r})"

    def out_shape(self, shape, where):
        spatial_only(shape, self, where, self.dims)
        for size, k in zip(shape[1:], self.kernel_size, strict=True):
            if k > size:
                raise LayerError(f"{self.name} ({where}): a window of {self.kernel_size} leaves no positions of the "
                                 f"input {'x'.join(map(str, shape[1:]))}")
        return (shape[0], *(out_size(n, k, s, "valid")
                            for n, k, s in zip(shape[1:], self.kernel_size, self.stride, strict=True)))

    def need(self, out_need):
        return "full"

    def apply(self, record: Record, ctx) -> Record:
        scale = 1.0 / math.prod(self.kernel_size) ** 2

        def pool(t: torch.Tensor) -> torch.Tensor:
            for k in range(self.dims):
                t = window_sum(t, (record.x_axis(k),), self.kernel_size[k], self.stride[k], "valid",
                               scale if k == 0 else 1.0)
                t = window_sum(t, (record.y_axis(k),), self.kernel_size[k], self.stride[k], "valid")
            return t

        out = record.map(pool)
        return Record(out.sigma, out.theta, "full", record.nbatch,
                      tuple(out.sigma.shape[record.nbatch:record.nbatch + self.dims]))

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[self.dims]
        return pool(self.kernel_size, self.stride)


class AvgPool1d(_AvgPool):
    """Average over windows of a sequence (N, C, L); stride defaults to kernel_size (as in torch)."""

    dims = 1


class AvgPool2d(_AvgPool):
    """Average over windows of an image (N, C, H, W); stride defaults to kernel_size (as in torch)."""

    dims = 2


class AvgPool3d(_AvgPool):
    """Average over windows of a volume (N, C, D, H, W); stride defaults to kernel_size (as in torch)."""

    dims = 3


class GlobalAvgPool(Layer):
    """The mean over all positions: `(N, C, *S) -> (N, C)`."""

    pools = True
    odd_preserving = True

    def out_shape(self, shape, where):
        spatial_only(shape, self, where)
        return shape[:1]

    def need(self, out_need):
        return "full"

    def apply(self, record: Record, ctx) -> Record:
        if (masks := masks_of(ctx)) is not None:      # after a Mask: the mean over the unmasked positions
            return masked_mean(record, masks)
        axes = tuple(range(record.nbatch, record.sigma.ndim))
        out = record.map(lambda t: mean(t, axes))
        return Record(out.sigma, out.theta, "flat", record.nbatch, ())

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        source = building_mask()
        return _MeanOverPositions() if source is None else MaskedMean(source)


class _MeanOverPositions(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # branch-free: the empirical NTK runs it under vmap
        return x.flatten(2).mean(2)


def mean(t: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """The mean of `t` over `axes`, finite wherever the entries are, even where their sum is not (entries within
    a factor of the count of the dtype's largest value: torch sums first). There the mean is taken over the entries
    scaled by a power of two 2^-k <= 1 / count (exact but for entries that become subnormal) and scaled back."""
    out = t.mean(dim=axes)
    if all_finite(out):
        return out
    k = math.ceil(math.log2(math.prod(t.shape[axis] for axis in axes)))
    return torch.where(torch.isfinite(out), out, (t * 2.0**-k).mean(dim=axes) * 2.0**k)
