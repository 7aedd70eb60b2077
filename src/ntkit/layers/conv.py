"""`Conv1d`, `Conv2d` and `Conv3d`: convolutions over (N, C, L), (N, C, H, W) and (N, C, D, H, W) inputs, in the NTK
parametrization (or the standard one: the same NNGP, no NTK limit).

The finite layer: y = W_std / sqrt(C k) conv(x, W) + b_std b, all parameters standard normal, k the number of
taps. With infinitely many channels each output position is a Linear layer over its window of inputs, so
(Arora et al. 2019, eq. 7; neural-tangents' `stax.Conv` with parameterization="ntk")

    Sigma'(x_i, y_j) = W_std^2 (1 / k) sum_d Sigma(x_{s i + d}, y_{s j + d}) + b_std^2
    Theta'(x_i, y_j) = W_std^2 (1 / k) sum_d Theta(x_{s i + d}, y_{s j + d}) + Sigma'(x_i, y_j)

with positions outside the image zero ("same", zero padding) or wrapped ("circular"). The window mean needs only
the positions' diagonal when the output's is all that is wanted: O(HW) per pair, else O((HW)^2).

In the standard parametrization the NTK is that of the finite fan-in C k (C = `in_channels`, see `linear`):
Theta'(x_i, y_j) = C sum_d Sigma(x_{s i + d}, y_{s j + d}) + W_std^2 (1 / k) sum_d Theta(...) + 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_positive_int, check_real
from .base import Layer, LayerError, check_channels, spatial_only
from .linear import check_bias, fan_in_known, weight_map, weight_settings
from .record import Record, out_size, same_pads, window_sum

PADDINGS = ("same", "valid", "circular")


def _pair(value, dims: int, name: str) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims
    if len(values) != dims:
        raise ValueError(f"{name} must be an integer or {dims} integers, got {value!r}")
    return tuple(check_positive_int(v, name) for v in values)


class WindowLayer(Layer):
    """What convolutions and transposed convolutions share: their settings (W_std and b_std kept as given, tensors
    included, so that kernels differentiate in them), `describe`, and the kernel map `weight_map` with the covariance
    summed over the kernel's taps along each spatial axis by `window(t, axes, k, s, padding, scale)` (both examples'
    axes where the record keeps every pair of positions): `record.window_sum` for a convolution."""

    dims = 0
    weights = True
    window = staticmethod(window_sum)

    def __init__(self, kernel_size: int | tuple[int, ...], stride: int | tuple[int, ...] = 1, padding: str = "same",
                 W_std: float | torch.Tensor = 1.0, b_std: float | torch.Tensor | None = 0.1,
                 in_channels: int | None = None, parametrization: str = "ntk"):
        self.parametrization = check_choice(parametrization, "parametrization", ("ntk", "standard"))
        self.in_channels = None if in_channels is None else check_positive_int(in_channels, "in_channels")
        self.kernel_size = _pair(kernel_size, self.dims, "kernel_size")
        self.stride = _pair(stride, self.dims, "stride")
        self.padding = check_choice(padding, "padding", PADDINGS)
        self.W_std = check_real(W_std, "W_std", minimum=0.0)
        self.b_std, self.bias = check_bias(b_std)

    def describe(self) -> str:
        return (f"{self.name}(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
                f"{weight_settings(self)})")

    @property
    def has_ntk_limit(self) -> bool:
        return fan_in_known(self)

    def gaussian(self, in_gaussian, where):
        return True

    def apply(self, record: Record, ctx) -> Record:
        full = record.layout == "full"

        def total(t: torch.Tensor, scale: float) -> torch.Tensor:
            for k in range(self.dims):
                axes = (record.x_axis(k), record.y_axis(k)) if full else (record.x_axis(k),)
                t = self.window(t, axes, self.kernel_size[k], self.stride[k], self.padding, scale if k == 0 else 1.0)
            return t

        out = weight_map(self, record, total, math.prod(self.kernel_size))
        spatial = tuple(out.sigma.shape[record.nbatch:record.nbatch + self.dims])
        return Record(out.sigma, out.theta, record.layout, record.nbatch, spatial)


class _Conv(WindowLayer):
    def out_shape(self, shape, where):
        spatial_only(shape, self, where, self.dims)
        check_channels(self, shape, where)
        sizes = []
        for size, k, s in zip(shape[1:], self.kernel_size, self.stride, strict=True):
            if self.padding == "valid" and k > size:
                raise LayerError(f"{self.name} ({where}): kernel_size {self.kernel_size} is larger than the input "
                                 f"{'x'.join(map(str, shape[1:]))} with padding='valid'")
            sizes.append(out_size(size, k, s, self.padding))
        return (shape[0], *sizes)

    def start(self, X, Y, in_need, want_ntk, paired):
        """A first convolution whose output keeps every pair of positions: one product of the inputs' patches."""
        return first_conv_record(self, X, Y, want_ntk, paired) if in_need == "full" else None

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return NTKConv(in_shape[0], out_channels, self.kernel_size, self.stride, self.padding, float(self.W_std),
                       float(self.b_std), generator, dtype, self.parametrization, self.bias)


class Conv1d(_Conv):
    """A 1-D convolution over (N, C, L): kernel_size, stride, padding "same" | "valid" | "circular"."""

    dims = 1


class Conv2d(_Conv):
    """A 2-D convolution over (N, C, H, W): kernel_size, stride, padding "same" | "valid" | "circular"."""

    dims = 2


class Conv3d(_Conv):
    """A 3-D convolution over (N, C, D, H, W): kernel_size, stride, padding "same" | "valid" | "circular"."""

    dims = 3


def init_window_parameters(module: nn.Module, weight_shape: tuple[int, ...], out_channels: int, fan_in: int,
                           W_std: float, b_std: float, generator: torch.Generator | None, dtype: torch.dtype | None,
                           parametrization: str, bias: bool) -> None:
    """A (transposed) convolution's `weight` of `weight_shape` and `bias` (None without), standard normal, with
    the multipliers W_std / sqrt(fan_in) and b_std (NTK parametrization); "standard" folds them into the initial
    values (the same functions at initialization, another gradient) and sets both multipliers to 1."""
    dtype = dtype or torch.get_default_dtype()
    module.weight = nn.Parameter(torch.randn(*weight_shape, generator=generator, dtype=dtype))
    module.bias = nn.Parameter(torch.randn(out_channels, generator=generator, dtype=dtype)) if bias else None
    module.weight_multiplier = W_std / math.sqrt(fan_in)
    module.bias_multiplier = b_std
    if parametrization == "standard":
        with torch.no_grad():
            module.weight.mul_(module.weight_multiplier)
            if bias:
                module.bias.mul_(module.bias_multiplier)
        module.weight_multiplier = module.bias_multiplier = 1.0


class NTKConv(nn.Module):
    """y = W_std / sqrt(C k) conv(pad(x), weight) + b_std bias, weight `(out, C, *kernel)` and bias standard normal
    (parametrization="standard": weight ~ N(0, W_std^2 / (C k)), bias ~ N(0, b_std^2), both multipliers 1;
    bias=False: no bias parameter).

    "same" pads with zeros as XLA does (the extra position at the end when the total is odd), so any stride
    works; "circular" pads by the same amounts periodically; "valid" does not pad.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, ...], stride: tuple[int, ...],
                 padding: str, W_std: float, b_std: float, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, parametrization: str = "ntk", bias: bool = True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        init_window_parameters(self, (out_channels, in_channels, *kernel_size), out_channels,
                               in_channels * math.prod(kernel_size), W_std, b_std, generator, dtype, parametrization,
                               bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding != "valid":
            pads: list[int] = []
            for size, k, s in reversed(list(zip(x.shape[2:], self.kernel_size, self.stride, strict=True))):
                pads += list(same_pads(size, k, s))
            x = F.pad(x, pads, mode="constant" if self.padding == "same" else "circular")
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(self.kernel_size)]
        bias = None if self.bias is None else self.bias * self.bias_multiplier
        return conv(x, self.weight * self.weight_multiplier, bias, stride=self.stride)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}, weight_multiplier={self.weight_multiplier:.4g}, "
                f"bias_multiplier={self.bias_multiplier:.4g}")


def first_conv_record(conv: _Conv, X: torch.Tensor, Y: torch.Tensor | None, want_ntk: bool,
                      paired: bool = False) -> Record:
    """The "full" record after a first convolution, straight from the inputs' patches (one matrix product):

        Sigma'(x_i, y_j) = W_std^2 / (C k) <patch_i(x), patch_j(y)> + b_std^2,     Theta' = Sigma'

    the same as `input_record` followed by `conv.apply`, in a few passes over memory instead of a dozen.
    X (r, C, *S) and Y (c, C, *S), or Y None for each example with itself, or `paired`: the pairs (X[b], Y[b]).
    """
    def patches(Z: torch.Tensor) -> torch.Tensor:  # (n, P_out, C k)
        if conv.padding != "valid":
            pads: list[int] = []
            for size, k, s in reversed(list(zip(Z.shape[2:], conv.kernel_size, conv.stride, strict=True))):
                pads += list(same_pads(size, k, s))
            Z = F.pad(Z, pads, mode="constant" if conv.padding == "same" else "circular")
        for dim, (k, s) in enumerate(zip(conv.kernel_size, conv.stride, strict=True)):
            Z = Z.unfold(2 + dim, k, s)                        # (n, C, *S_out, *kernel)
        n, C = Z.shape[:2]
        dims = conv.dims
        order = (0, *range(2, 2 + dims), 1, *range(2 + dims, 2 + 2 * dims))
        return Z.permute(order).reshape(n, -1, C * math.prod(conv.kernel_size))

    Ux = patches(X)
    sizes = [out_size(n, k, s, conv.padding) for n, k, s in zip(X.shape[2:], conv.kernel_size, conv.stride,
                                                                 strict=True)]
    spatial = tuple(sizes)
    P, width = Ux.shape[1], Ux.shape[2]
    scale = conv.W_std**2 / width
    if Y is None or paired:
        other = Ux if Y is None else patches(Y)
        sigma = torch.bmm(Ux, other.transpose(1, 2)).reshape(X.shape[0], *spatial, *spatial)
        nbatch = 1
    else:
        Uy = patches(Y)
        r, c = X.shape[0], Y.shape[0]
        sigma = (Ux.reshape(r * P, width) @ Uy.reshape(c * P, width).T).reshape(r, P, c, P)
        sigma = sigma.permute(0, 2, 1, 3).reshape(r, c, *spatial, *spatial)
        nbatch = 2
    standard = want_ntk and conv.parametrization == "standard"     # Theta' = C k mean(Sigma) + 1 (`standard_affine`)
    theta = (sigma + 1.0 if conv.bias else sigma.clone()) if standard else None
    sigma = sigma.mul_(scale).add_(conv.b_std**2) if _plain(conv) else sigma * scale + conv.b_std**2
    if want_ntk and not standard:
        theta = sigma.clone()
    return Record(sigma, theta, "full", nbatch, spatial)


def _plain(conv: _Conv) -> bool:
    return not isinstance(conv.W_std, torch.Tensor) and not isinstance(conv.b_std, torch.Tensor)
