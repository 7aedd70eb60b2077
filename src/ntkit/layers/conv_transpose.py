"""`ConvTranspose1d`, `ConvTranspose2d`: transposed convolutions in the NTK parametrization (neural-tangents'
`stax.ConvTranspose`, with XLA's output sizes: n s + max(k - s, 0) for "valid", n s for "same").

Input position p reaches output position i = s p + d - o through tap d (o: the offset of the padding), so with
infinitely many channels

    Sigma'(x_i, y_j) = W_std^2 (1 / k) sum_d sum_{s p + d - o = i, s q + d - o = j} Sigma(x_p, y_q) + b_std^2

and Theta' = W_std^2 (1 / k) (the same sum of Theta) + Sigma'. i = j needs p = q, so the positions' diagonal suffices
when only it is wanted.

"circular" (neural-tangents' CIRCULAR, the transpose of a circular convolution): the "valid" output, V = n s +
max(k - s, 0) positions, folded onto n s positions periodically, position j added to (j - c) mod n s with
c = (V - n s) // 2 (within neural-tangents' window of 2h + 1 periods, h = ceil(V / n s) // 2). The fold is linear,
so the covariance is folded on both positions; on the diagonal, two positions that fold together are never reached
by the same tap, so folding the diagonal alone is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import check_channels, spatial_only
from .conv import WindowLayer, init_window_parameters


def _geometry(size: int, k: int, s: int, padding: str) -> tuple[int, int]:
    """(output size, offset o) of one axis, as XLA's conv_transpose ("circular": the size after folding)."""
    if padding == "circular":
        return size * s, 0
    if padding == "valid":
        return size * s + max(k - s, 0), 0
    pad_a = k - 1 if s > k - 1 else math.ceil((k + s - 2) / 2)
    return size * s, k - 1 - pad_a


def _spread(t: torch.Tensor, axes: tuple[int, ...], k: int, s: int, padding: str, scale: float) -> torch.Tensor:
    """sum_d of t placed at i = s p + d - o on every axis of `axes` (the same tap d on each), times `scale`;
    "circular": the "valid" spread folded (`_fold`)."""
    n = t.shape[axes[0]]
    if padding == "circular":
        out = _spread(t, axes, k, s, "valid", scale)
        for axis in axes:
            out = _fold(out, axis, n * s)
        return out
    size, offset = _geometry(n, k, s, padding)
    shape = list(t.shape)
    for axis in axes:
        shape[axis] = size
    out = t.new_zeros(shape)
    for d in range(k):
        first = max(0, -((d - offset) // s))            # the first p with s p + d - o >= 0
        last = min(n - 1, (size - 1 + offset - d) // s)
        if last < first:
            continue
        src, dst = [slice(None)] * t.ndim, [slice(None)] * t.ndim
        for axis in axes:
            src[axis] = slice(first, last + 1)
            start = s * first + d - offset
            dst[axis] = slice(start, start + s * (last - first) + 1, s)
        out[tuple(dst)] += t[tuple(src)] * scale
    return out


def _fold(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Fold `axis` (V positions) onto `size` positions as neural-tangents' circular transpose: out[i] = sum over
    |m| <= h of t[i + c + m size] (positions within 0..V-1), c = (V - size) // 2, h = ceil(V / size) // 2."""
    V = t.shape[axis]
    c, h = (V - size) // 2, math.ceil(V / size) // 2
    shape = list(t.shape)
    shape[axis] = size
    out = t.new_zeros(shape)
    for m in range(-h, h + 1):
        shift = c + m * size                    # out[i] += t[i + shift] for 0 <= i + shift < V
        first, last = max(0, -shift), min(size, V - shift)
        if first < last:
            out.narrow(axis, first, last - first).add_(t.narrow(axis, first + shift, last - first))
    return out


class _ConvTranspose(WindowLayer):
    window = staticmethod(_spread)

    def out_shape(self, shape, where):
        spatial_only(shape, self, where, self.dims)
        check_channels(self, shape, where)
        return (shape[0], *(_geometry(n, k, s, self.padding)[0]
                            for n, k, s in zip(shape[1:], self.kernel_size, self.stride, strict=True)))

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return NTKConvTranspose(in_shape[0], out_channels, self.kernel_size, self.stride, self.padding,
                                float(self.W_std), float(self.b_std), generator, dtype, self.parametrization, self.bias)


class ConvTranspose1d(_ConvTranspose):
    """A transposed 1-D convolution over (N, C, L): kernel_size, stride, padding "same" | "valid" | "circular".

    The finite layer, like torch's nn.ConvTranspose1d, is cropped or padded to XLA's output positions ("circular":
    folded periodically, see the module docstring)."""

    dims = 1


class ConvTranspose2d(_ConvTranspose):
    """A transposed 2-D convolution over (N, C, H, W): kernel_size, stride, padding "same" | "valid" | "circular"."""

    dims = 2


class NTKConvTranspose(nn.Module):
    """y = W_std / sqrt(C k) conv_transpose(x, weight) + b_std bias (weight `(C, out, *kernel)`, bias standard normal),
    cropped or padded to XLA's output positions i = s p + d - o (parametrization="standard": weight ~ N(0, W_std^2 /
    (C k)), bias ~ N(0, b_std^2), both multipliers 1; bias=False: none)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, ...], stride: tuple[int, ...],
                 padding: str, W_std: float, b_std: float, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, parametrization: str = "ntk", bias: bool = True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        init_window_parameters(self, (in_channels, out_channels, *kernel_size), out_channels,
                               in_channels * math.prod(kernel_size), W_std, b_std, generator, dtype, parametrization,
                               bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv_transpose1d if len(self.kernel_size) == 1 else F.conv_transpose2d
        y = conv(x, self.weight * self.weight_multiplier, stride=self.stride)     # positions s p + d
        circular = self.padding == "circular"
        for dim, (n, k, s) in enumerate(zip(x.shape[2:], self.kernel_size, self.stride, strict=True)):
            size, offset = _geometry(n, k, s, "valid" if circular else self.padding)
            axis = 2 + dim
            extra = offset + size - y.shape[axis]
            if extra > 0:
                pads = [0, 0] * (y.ndim - 1 - axis) + [0, extra]
                y = F.pad(y, pads)
            y = y.narrow(axis, offset, size)
            if circular:
                y = _fold(y, axis, n * s)
        if self.bias is None:
            return y
        return y + (self.bias * self.bias_multiplier).reshape(-1, *[1] * len(self.kernel_size))
