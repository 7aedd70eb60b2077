"""`infinite(module)`: the infinite-width description of a torch `nn.Sequential`.

    net  = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    arch = nk.infinite(net)          # nk.Sequential(Conv2d(3, padding="same"), ReLU(), AvgPool2d(2), ...)
    K    = arch.kernel(X)

Kernel sizes, strides, paddings, input channel counts and activations come from the modules; the widths become
infinite. The result is the limit of the architecture in the NTK parametrization with W_std and b_std (torch's
own default initialization is a standard parametrization whose bias variance vanishes with the width).
"""

from __future__ import annotations

from torch import nn

from .._checks import check_choice
from ..activations import DEFAULT_DEGREE, registry
from .activation import SHORT_FORMS, Activation
from .base import Layer, LayerError
from .conv import Conv1d, Conv2d, Conv3d
from .flatten import Flatten
from .infinite_attention import attention_refusal
from .linear import Linear
from .normalization import LayerNorm
from .pooling import AvgPool1d, AvgPool2d, AvgPool3d, GlobalAvgPool
from .sequential import Sequential
from .trace import traced
from .unflatten import Unflatten


def infinite(module: nn.Module, W_std: float = 1.0, b_std: float = 0.1, parametrization: str = "ntk"
             ) -> Sequential:
    """Translate `module` (an nn.Sequential, nested ones included, or any module torch.fx traces) into an
    `ntkit.Sequential`.

    Supported: nn.Linear, nn.Conv1d / 2d / 3d (padding 0, "valid", "same", or (k - 1) / 2 with an odd kernel and
    stride 1, zeros or circular; no dilation or groups), the elementwise modules of the registered nonlinearities
    (`ntkit.activations.registry`: nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU,
    nn.Softplus; with other settings, as nn.GELU(approximate="tanh"), the module by quadrature), nn.Identity,
    nn.Dropout (as the evaluated network sees it: the identity; `nk.Dropout` is the training-mode kernel),
    nn.AvgPool1d / 2d / 3d (no padding), nn.AdaptiveAvgPool1d / 2d / 3d(1), nn.Flatten, ``nn.Unflatten(1, (C, *S))``
    after a Linear (`Unflatten`) and nn.LayerNorm over the features of flat inputs without affine parameters.
    Anything else raises a LayerError naming the module and its position. Any other module is traced by torch.fx
    (`ntkit.layers.trace`): residual additions, torch.cat along channels and products become `Residual` and
    `Parallel`.

    parametrization="standard": the weight layers in the standard parametrization at the module's own widths (each
    takes its in_features / in_channels), so get="ntk" is neural-tangents' standard-parametrization NTK of a network
    of those widths (a layer without a bias gets b_std=None).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"infinite needs a torch.nn.Module, got {type(module).__name__}")
    check_choice(parametrization, "parametrization", ("ntk", "standard"))
    scales = (W_std, b_std, parametrization)
    layers: list[Layer] = []
    if isinstance(module, nn.Sequential):
        _translate(module, "", layers, scales)
    else:   # a model that branches: traced by torch.fx (`ntkit.layers.trace`)
        layers = traced(module, lambda m, where: _one(m, where, scales))
    if not layers:
        raise LayerError("infinite: the nn.Sequential has no layers to translate")
    return Sequential(*layers)


def _refuse_dropout(where: str) -> Layer:
    raise LayerError(f"infinite: {where} drops every unit (p = 1): the network's output is constant")


def _translate(seq: nn.Sequential, prefix: str, layers: list[Layer], scales: tuple) -> None:
    for name, child in seq.named_children():
        where = f"module {prefix}{name} ({type(child).__name__})"
        if isinstance(child, nn.Sequential):
            _translate(child, f"{prefix}{name}.", layers, scales)
            continue
        layer = _one(child, where, scales)
        if layer is not None:
            layers.append(layer)


def _weights(m: nn.Module, scales: tuple) -> dict:
    """W_std, b_std and parametrization of a translated weight layer: without a bias, b_std 0 (NTK) or None (no
    bias parameter, standard: its gradient would add 1)."""
    W_std, b_std, parametrization = scales
    if m.bias is None:
        b_std = 0.0 if parametrization == "ntk" else None
    return {"W_std": W_std, "b_std": b_std, "parametrization": parametrization}


def _one(m: nn.Module, where: str, scales: tuple) -> Layer | None:
    if isinstance(m, nn.Identity):
        return None
    if isinstance(m, nn.Dropout):  # the identity of the evaluated network (the NTK is taken in eval mode)
        return None if m.p < 1 else _refuse_dropout(where)
    if (refusal := attention_refusal(m, where)) is not None:
        raise LayerError(refusal)
    if isinstance(m, nn.Linear):
        return Linear(in_channels=m.in_features, **_weights(m, scales))
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return _conv(m, where, scales)
    activation = _activation(m)
    if activation is not None:
        return activation
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        padding = m.padding if isinstance(m.padding, tuple) else (m.padding,)
        if any(p != 0 for p in padding) or m.ceil_mode:
            raise LayerError(f"infinite: {where} has padding={m.padding} or ceil_mode=True; only unpadded pooling "
                             f"maps")
        pool = {nn.AvgPool1d: AvgPool1d, nn.AvgPool2d: AvgPool2d, nn.AvgPool3d: AvgPool3d}[type(m)]
        return pool(m.kernel_size, m.stride)
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
        if any(s != 1 for s in size):
            raise LayerError(f"infinite: {where} has output_size={m.output_size}; only 1 (global pooling) maps")
        return GlobalAvgPool()
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise LayerError(f"infinite: {where} flattens dims {m.start_dim}..{m.end_dim}; only start_dim=1, "
                             f"end_dim=-1 maps")
        return Flatten()
    if isinstance(m, nn.Unflatten):
        size = tuple(m.unflattened_size)
        if m.dim not in (1, -1) or not 2 <= len(size) <= 4:
            raise LayerError(f"infinite: {where} unflattens dim {m.dim} into {size}; only dim=1 into (C, L), "
                             f"(C, H, W) or (C, D, H, W) maps")
        return Unflatten(size[1:])
    if isinstance(m, nn.LayerNorm):
        if m.elementwise_affine:
            raise LayerError(f"infinite: {where} has trainable scale and shift (elementwise_affine=True), which "
                             f"the infinite-width kernel here leaves out; use elementwise_affine=False")
        if len(m.normalized_shape) != 1:
            raise LayerError(f"infinite: {where} normalizes over {m.normalized_shape}; only the features of flat "
                             f"(N, d) inputs map (nk.LayerNorm() normalizes channels at each position)")
        return LayerNorm(m.eps, flat_only=True)
    raise LayerError(f"infinite: cannot translate {where}: no infinite-width counterpart (supported: Linear, "
                     f"Conv1d, Conv2d, elementwise activations, AvgPool, AdaptiveAvgPool(1), Flatten, Unflatten, "
                     f"LayerNorm)")


def _conv(m: nn.Conv1d | nn.Conv2d | nn.Conv3d, where: str, scales: tuple) -> Layer:
    dims = len(m.kernel_size)
    if any(d != 1 for d in m.dilation) or m.groups != 1:
        raise LayerError(f"infinite: {where} has dilation={m.dilation}, groups={m.groups}; only 1 and 1 map")
    if m.padding_mode not in ("zeros", "circular"):
        raise LayerError(f"infinite: {where} has padding_mode={m.padding_mode!r}; only 'zeros' and 'circular' map")
    k, s = tuple(m.kernel_size), tuple(m.stride)
    if m.padding == "valid" or all(p == 0 for p in m.padding):
        padding = "valid"
    elif m.padding == "same" or (all(p == (kk - 1) // 2 for p, kk in zip(m.padding, k, strict=True))
                                 and all(kk % 2 == 1 for kk in k) and all(ss == 1 for ss in s)):
        padding = "same" if m.padding_mode == "zeros" else "circular"
    else:
        raise LayerError(f"infinite: {where} has padding={m.padding} with kernel_size={k}, stride={s}; only 0 and "
                         f"'same' padding ((k - 1) / 2 for odd k, stride 1) map")
    conv = {1: Conv1d, 2: Conv2d, 3: Conv3d}[dims]
    return conv(k, s, padding, in_channels=m.in_channels, **_weights(m, scales))


def _activation(m: nn.Module) -> Layer | None:
    """The layer of a registered elementwise torch module (`ntkit.activations.registry`: `torch_module`): its short
    form with the module's settings, or, where its settings are not the registered map's (nn.ELU(alpha=2)), the
    module itself by quadrature; None for other modules."""
    for entry in registry.REGISTRY.values():
        if entry.torch_module is not None and type(m) is entry.torch_module:
            params = entry.torch_params(m)
            if params is None:
                return Activation(m)
            if entry.layer is not None:
                return SHORT_FORMS[entry.layer](**params)
            return Activation(entry.build(DEFAULT_DEGREE, **params))
    return None
