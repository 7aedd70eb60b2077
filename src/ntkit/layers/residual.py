"""`Residual`: x + branch(x), the skip connection of residual networks.

The branch must keep the shape and end with a weight layer (Linear or Conv; pooling, Flatten or LayerNorm may follow
it): it is then odd in those weights and independent of x in the limit, so (neural-tangents' FanOut,
parallel(branch, Identity), FanInSum)

    Sigma'(x, y) = Sigma(x, y) + Sigma_branch(x, y),      Theta'(x, y) = Theta(x, y) + Theta_branch(x, y).

It is `Parallel((), branch)` with combine="sum" (`ntkit.layers.parallel`): the composer runs the branches, this layer
checks them (`check_branches`) and wraps the finite branch as x + branch(x).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Layer, LayerError
from .parallel import Parallel, _positions, ends_with_weights


class Residual(Parallel):
    """x + branch(x), the branch given as layers: Residual(nk.ReLU(), nk.Conv2d(3), nk.ReLU(), nk.Conv2d(3)).
    The special case Parallel((), branch) of `Parallel`."""

    def __init__(self, *branch: Layer):
        if not branch:
            raise LayerError("Residual needs a branch of at least one layer, got none")
        for index, layer in enumerate(branch):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {index} of the Residual branch must be an ntkit layer, got "
                                f"{type(layer).__name__}")
        self.layers: tuple[Layer, ...] = tuple(branch)
        self.combine, self.proportions = "sum", (1, 1)
        self.parts = ((), self.layers)       # the skip first: x + branch(x)

    def describe(self) -> str:
        return f"Residual({', '.join(layer.describe() for layer in self.layers)})"

    def check_branches(self, shape, outs, gaussians, where):
        branch_shape = outs[1]
        if len(branch_shape) != len(shape) or branch_shape[1:] != shape[1:]:
            raise LayerError(f"Residual ({where}): its branch changes the shape per example from "
                             f"{_positions(shape)} to {_positions(branch_shape)}; x + branch(x) needs the same")
        if not ends_with_weights(self.layers):
            raise LayerError(f"Residual ({where}): its branch must end with a Linear or Conv layer (pooling, "
                             f"Flatten or LayerNorm may follow it), so that it is independent of the skip "
                             f"connection in the limit")
        return shape, gaussians[0]

    def wrap(self, branches: list[nn.Module]) -> nn.Module:
        return ResidualModule(branches[1])


class ResidualModule(nn.Module):
    """x + branch(x)."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)
