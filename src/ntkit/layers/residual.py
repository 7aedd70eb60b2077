"""`Residual`: x + branch(x), the skip connection of residual networks.

The branch must keep the shape and end with a weight layer (Linear or Conv; pooling, Flatten or LayerNorm may follow
it): it is then odd in those weights and independent of x in the limit, so (neural-tangents' FanOut,
parallel(branch, Identity), FanInSum)

    Sigma'(x, y) = Sigma(x, y) + Sigma_branch(x, y),      Theta'(x, y) = Theta(x, y) + Theta_branch(x, y).

The composer runs the branch (its plans and kernels, `ntkit.layers.plan` and `execute`); this layer declares it
(`branch`), checks it (`check_branch`) and combines the two records (`merge`) and the two finite modules (`wrap`).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Layer, LayerError
from .record import Record


class Residual(Layer):
    """x + branch(x), the branch given as layers: Residual(nk.ReLU(), nk.Conv2d(3), nk.ReLU(), nk.Conv2d(3))."""

    def __init__(self, *branch: Layer):
        if not branch:
            raise LayerError("Residual needs a branch of at least one layer, got none")
        for index, layer in enumerate(branch):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {index} of the Residual branch must be an ntkit layer, got "
                                f"{type(layer).__name__}")
        self.layers: tuple[Layer, ...] = tuple(branch)

    @property
    def branch(self) -> tuple[Layer, ...]:
        return self.layers

    def describe(self) -> str:
        return f"Residual({', '.join(layer.describe() for layer in self.layers)})"

    def check_branch(self, shape, branch_shape, where):
        if len(branch_shape) != len(shape) or branch_shape[1:] != shape[1:]:
            raise LayerError(f"Residual ({where}): its branch changes the shape per example from "
                             f"{_positions(shape)} to {_positions(branch_shape)}; x + branch(x) needs the same")
        if not _ends_with_weights(self.layers):
            raise LayerError(f"Residual ({where}): its branch must end with a Linear or Conv layer (pooling, "
                             f"Flatten or LayerNorm may follow it), so that it is independent of the skip "
                             f"connection in the limit")

    def merge(self, skip: Record, branch: Record) -> Record:
        theta = None if skip.theta is None else skip.theta + branch.theta
        return Record(skip.sigma + branch.sigma, theta, skip.layout, skip.nbatch, skip.spatial)

    def wrap(self, branch: nn.Module) -> nn.Module:
        return ResidualModule(branch)


def _ends_with_weights(layers) -> bool:
    """Whether the last weight layer is followed only by layers that keep their input odd in its weights (pooling,
    Flatten, LayerNorm: `Layer.odd_preserving`): then the branch is odd in those weights and independent of the skip
    connection in the limit."""
    for layer in reversed(layers):
        if layer.weights:
            return True
        if not layer.odd_preserving:
            return False
    return False


def _positions(shape: tuple[int, ...]) -> str:
    return "(d,)" if len(shape) == 1 else f"(C, {', '.join(map(str, shape[1:]))})"


class ResidualModule(nn.Module):
    """x + branch(x)."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)
