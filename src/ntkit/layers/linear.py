"""`Linear`: a fully-connected layer on flat inputs (N, d), in the NTK parametrization.

    Sigma'(x, y) = W_std^2 Sigma(x, y) + b_std^2                 (Proposition 1)
    Theta'(x, y) = W_std^2 Theta(x, y) + Sigma'(x, y)            (Theorem 1)

In the standard parametrization (Remark 1; Sohl-Dickstein et al. 2020, neural-tangents' parameterization="standard")
the NNGP is the same and the NTK is that of the finite fan-in n (`in_channels`), which it grows with:

    Theta'(x, y) = n Sigma(x, y) + W_std^2 Theta(x, y) + 1       (the 1: the bias's gradient; none without a bias)
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_choice, check_positive_int, check_real
from ..nets import NTKLinear
from .base import Layer, LayerError, check_channels
from .record import Record


def affine(record: Record, W_std, b_std, total=None, taps: int = 1) -> Record:
    """The kernel map of a weight layer: Sigma' = W_std^2 mean(Sigma) + b_std^2, Theta' = W_std^2 mean(Theta) + Sigma',
    where mean is the identity (Linear) or the mean over `taps` window positions (Conv).

    total(t, scale): the window sum of t times the float `scale`, a new tensor (None: the identity); with plain float
    scales and no autograd the scaling is folded into it and the rest done in place."""
    w2, b2 = W_std**2 / taps, b_std**2
    zero_theta = record.theta is not None and record.theta.ndim == 0   # Theta = 0 before the first weight layer
    plain = not isinstance(w2, torch.Tensor) and not isinstance(b2, torch.Tensor) \
        and not (torch.is_grad_enabled() and record.sigma.requires_grad)
    if total is not None and plain:
        sigma = total(record.sigma, float(w2)).add_(b2)
        theta = None if record.theta is None else sigma.clone() if zero_theta else \
            total(record.theta, float(w2)).add_(sigma)
    elif plain:     # one pass each: b_std^2 + W_std^2 Sigma, then Sigma' + W_std^2 Theta
        shift = torch.tensor(float(b2), dtype=record.sigma.dtype, device=record.sigma.device)
        sigma = torch.add(shift, record.sigma, alpha=float(w2))
        theta = None if record.theta is None else sigma.clone() if zero_theta else \
            torch.add(sigma, record.theta, alpha=float(w2))
    else:
        mean = (lambda t: t) if total is None else (lambda t: total(t, 1.0))
        sigma = mean(record.sigma) * w2 + b2
        theta = None if record.theta is None else sigma.clone() if zero_theta else mean(record.theta) * w2 + sigma
    return Record(sigma, theta, record.layout, record.nbatch, record.spatial)


def standard_affine(record: Record, W_std, b_std, channels: int, bias: bool, total=None, taps: int = 1) -> Record:
    """The kernel map of a weight layer in the standard parametrization with `channels` finite input channels (fan-in
    channels * taps): Sigma' = W_std^2 mean(Sigma) + b_std^2 as in `affine`, and

        Theta' = channels taps mean(Sigma) + W_std^2 mean(Theta) + [bias]        (neural-tangents' Dense and Conv)

    where mean is the identity or the window mean over `taps` positions (`total(t, scale)` as in `affine`)."""
    window = (lambda t: t) if total is None else (lambda t: total(t, 1.0))
    summed = window(record.sigma)                        # taps mean(Sigma)
    sigma = summed * (W_std**2 / taps) + b_std**2
    theta = None
    if record.theta is not None:
        theta = summed * float(channels)
        if record.theta.ndim != 0:                       # Theta = 0 before the first weight layer
            theta = theta + window(record.theta) * (W_std**2 / taps)
        if bias:
            theta = theta + 1.0
    return Record(sigma, theta, record.layout, record.nbatch, record.spatial)


def weight_map(layer: Layer, record: Record, total=None, taps: int = 1) -> Record:
    """The kernel map of a weight layer (Linear, TokenLinear, convolutions): `affine` in the NTK parametrization,
    `standard_affine` at the fan-in `in_channels` where the standard parametrization's NTK is wanted."""
    if layer.parametrization == "standard" and record.theta is not None:
        return standard_affine(record, layer.W_std, layer.b_std, layer.in_channels, layer.bias, total, taps)
    return affine(record, layer.W_std, layer.b_std, total, taps=taps)


def weight_settings(layer: Layer) -> str:
    """W_std, b_std (None without a bias), then in_channels and parametrization where set: the end of every weight
    layer's `describe()` (part of a Gram's fingerprint)."""
    text = f"W_std={float(layer.W_std)!r}, b_std={float(layer.b_std) if layer.bias else None!r}"
    if layer.in_channels is not None:
        text += f", in_channels={layer.in_channels}"
    if layer.parametrization != "ntk":
        text += f", parametrization={layer.parametrization!r}"
    return text


def fan_in_known(layer: Layer) -> bool:
    """Whether a weight layer has an NTK here: the NTK parametrization's limit, or the standard one at a known fan-in
    (`in_channels`)."""
    return layer.parametrization == "ntk" or layer.in_channels is not None


def check_bias(b_std) -> tuple[float | torch.Tensor, bool]:
    """b_std and whether the layer has a bias: None is no bias (as neural-tangents' b_std=None), b_std 0 then."""
    return (0.0, False) if b_std is None else (check_real(b_std, "b_std", minimum=0.0), True)


class Linear(Layer):
    """y = W_std / sqrt(d) W x + b_std b, with W and b standard normal; the input must be flat (N, d)
    (use Flatten or GlobalAvgPool after convolutions). b_std=None: no bias.

    parametrization="standard" (Remark 1 of the paper): W ~ N(0, W_std^2 / d), b ~ N(0, b_std^2) in the finite layer
    (torch's nn.Linear with that initialization), the same NNGP, and an NTK that grows with the fan-in d: get="ntk"
    needs `in_channels` = d, the finite number of inputs (the width of the weight layer before, times the positions a
    Flatten joins), and is then neural-tangents' standard-parametrization kernel at those widths."""

    weights = True

    def __init__(self, W_std: float | torch.Tensor = 1.0, b_std: float | torch.Tensor | None = 0.1,
                 in_channels: int | None = None, parametrization: str = "ntk"):
        self.parametrization = check_choice(parametrization, "parametrization", ("ntk", "standard"))
        self.W_std = check_real(W_std, "W_std", minimum=0.0)
        self.b_std, self.bias = check_bias(b_std)
        self.in_channels = None if in_channels is None else check_positive_int(in_channels, "in_channels")

    @property
    def dense_scales(self) -> tuple | None:
        """The fused recursion computes the NTK parametrization's NTK; a standard layer with a known fan-in runs
        layer by layer."""
        return None if self.parametrization == "standard" and self.in_channels is not None else (self.W_std,
                                                                                                 self.b_std)

    def describe(self) -> str:
        return f"Linear({weight_settings(self)})"

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

    @property
    def has_ntk_limit(self) -> bool:
        return fan_in_known(self)

    def apply(self, record, ctx):
        return weight_map(self, record)

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        if self.parametrization == "standard" and not self.bias:   # torch's own layer, without a bias
            linear = nn.Linear(in_shape[0], out_channels, bias=False, dtype=dtype)
            with torch.no_grad():
                weight = torch.randn(out_channels, in_shape[0], generator=generator, dtype=linear.weight.dtype)
                linear.weight.copy_(weight * (float(self.W_std) / in_shape[0] ** 0.5))
            return linear
        return NTKLinear(in_shape[0], out_channels, float(self.W_std), float(self.b_std), self.parametrization,
                         generator, dtype)
