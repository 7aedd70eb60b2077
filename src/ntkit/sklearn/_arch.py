"""Architectures as the scikit-learn and GPyTorch adapters use them: their weight layers' scales, copies with new
scales, and flat feature rows reshaped into the images or sequences the architecture takes.

scikit-learn and GPyTorch pass inputs as rows of features (N, d); an architecture of convolutions takes (N, C, H, W)
or (N, C, L). `Reshaped(arch, in_shape)` is the architecture seen from flat rows: it has the same `kernel`,
`kernel_tiles` and `kernel_diag` methods (what `ntkit.dynamics.InfiniteWidthGP` and the solvers use), on (N, d)
inputs with d = prod(in_shape).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._checks import check_positive_int
from ..layers import Layer, Parallel, Residual, Sequential
from ..mlp import MLP


def check_arch(arch: Any, name: str = "arch") -> MLP | Sequential:
    """An ntkit architecture (`nk.MLP`, `nk.Sequential`, what `nk.infinite(model)` returns), else a TypeError."""
    if isinstance(arch, (MLP, Sequential)):
        if isinstance(arch, MLP) and arch.parametrization != "ntk":
            raise ValueError(f"{name}: the NTK of parametrization='standard' is not defined in the limit "
                             "(Remark 1); use an MLP with parametrization='ntk'")
        return arch
    hint = " (translate a torch model with nk.infinite(model))" if isinstance(arch, torch.nn.Module) else ""
    raise TypeError(f"{name} must be an ntkit architecture (nk.MLP, nk.Sequential or nk.infinite(model)), got "
                    f"{type(arch).__name__}{hint}")


def _scaled(layer: Layer) -> bool:
    """A weight layer with one weight scale and one bias scale (Linear, Conv, TokenLinear); others (attention,
    with scales of its own) keep theirs."""
    settable = not isinstance(getattr(type(layer), "W_std", None), property)  # attention derives its W_std
    return layer.weights and settable and hasattr(layer, "W_std") and hasattr(layer, "b_std")


def weight_layers(arch: MLP | Sequential) -> list[Layer]:
    """The weight layers with a W_std and a b_std (Linear, Conv, ...) of `arch` in order, those of the branches of a
    `Parallel` or `Residual` where it stands (branch after branch)."""
    layers = arch.layers if isinstance(arch, MLP) else arch

    def walk(items: Sequence[Layer]) -> list[Layer]:
        found = []
        for layer in items:
            if isinstance(layer, Parallel):    # Residual included: its parts are ((), branch)
                for part in layer.branches:
                    found += walk(part)
            elif _scaled(layer):
                found.append(layer)
        return found

    return walk(layers.layers)


def scales(arch: MLP | Sequential, name: str) -> np.ndarray:
    """`name` ("W_std" or "b_std") of each weight layer of `arch`, float64 (n_weight_layers,)."""
    if isinstance(arch, MLP):
        return np.full(arch.depth, float(getattr(arch, name)))
    return np.array([float(getattr(layer, name)) for layer in weight_layers(arch)])


def with_scales(arch: MLP | Sequential, W_std: Any, b_std: Any) -> MLP | Sequential:
    """A copy of `arch` whose weight layers have these scales: each a float or 0-d tensor shared by every weight
    layer, or a sequence with one per weight layer (in the order of `weight_layers`). A shared value keeps an MLP
    on its fused recursion."""
    shared = all(_is_scalar(v) for v in (W_std, b_std))
    if isinstance(arch, MLP) and shared:
        return MLP(arch.depth, arch.activation, W_std=W_std, b_std=b_std)
    layers = arch.layers if isinstance(arch, MLP) else arch
    n = len(weight_layers(layers))
    W_all, b_all = _per_layer(W_std, n, "W_std"), _per_layer(b_std, n, "b_std")
    position = iter(range(n))

    def rebuild(items: Sequence[Layer]) -> list[Layer]:
        out = []
        for layer in items:
            if isinstance(layer, Residual):
                out.append(Residual(*rebuild(layer.layers)))
            elif isinstance(layer, Parallel):
                out.append(Parallel(*(tuple(rebuild(part)) for part in layer.branches), combine=layer.combine,
                                    proportions=layer.proportions if layer.combine == "concat" else None))
            elif _scaled(layer):
                index = next(position)
                layer = copy.copy(layer)
                layer.W_std, layer.b_std = W_all[index], b_all[index]
                out.append(layer)
            else:
                out.append(layer)
        return out

    return Sequential(*rebuild(layers.layers))


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) or (
        isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0)


def _per_layer(value: Any, n: int, name: str) -> list[Any]:
    if _is_scalar(value):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} must be one value or one per weight layer ({n} in this architecture), got "
                         f"{len(values)} values")
    return values


def check_in_shape(in_shape: Any, n_features: int) -> tuple[int, ...] | None:
    """The shape per example that rows of `n_features` features are reshaped into (None: rows as they are)."""
    if in_shape is None:
        return None
    shape = (in_shape,) if isinstance(in_shape, (int, np.integer)) else tuple(in_shape)
    shape = tuple(check_positive_int(s, "in_shape") for s in shape)
    if not shape or math.prod(shape) != n_features:
        raise ValueError(f"in_shape {shape} must have as many entries as the inputs have features ({n_features}): "
                         f"each row of X is reshaped into one example of shape in_shape")
    return shape


class Reshaped:
    """`arch` on rows of features: each row of X (N, d) is reshaped to `in_shape` (prod(in_shape) = d) before the
    architecture sees it. Has `kernel`, `kernel_tiles`, `kernel_diag` and `describe` like the architecture."""

    def __init__(self, arch: MLP | Sequential, in_shape: tuple[int, ...]):
        self.arch, self.in_shape = arch, tuple(in_shape)

    def _shape(self, X: Any) -> Any:
        if X is None:
            return None
        if X.ndim != 2 or X.shape[1] != math.prod(self.in_shape):
            raise ValueError(f"X must have {math.prod(self.in_shape)} features per row (in_shape {self.in_shape}), "
                             f"got shape {tuple(X.shape)}")
        return X.reshape(X.shape[0], *self.in_shape)

    def describe(self) -> str:
        return f"Reshaped({self.arch.describe()}, in_shape={self.in_shape})"

    def __repr__(self) -> str:
        return self.describe()

    def kernel(self, X: Any, Y: Any = None, get: Any = "ntk", **kwargs: Any) -> Any:
        return self.arch.kernel(self._shape(X), self._shape(Y), get=get, **kwargs)

    def kernel_tiles(self, X: torch.Tensor, Y: torch.Tensor | None = None, get: Any = "ntk", **kwargs: Any) -> Any:
        return self.arch.kernel_tiles(self._shape(X), self._shape(Y), get=get, **kwargs)

    def kernel_diag(self, X: Any, get: Any = "ntk") -> Any:
        return self.arch.kernel_diag(self._shape(X), get=get)


def on_rows(arch: MLP | Sequential, in_shape: tuple[int, ...] | None) -> Any:
    """`arch` itself (rows are its inputs) or `Reshaped(arch, in_shape)`."""
    return arch if in_shape is None else Reshaped(arch, in_shape)
