"""`Residual`: x + branch(x), the skip connection of residual networks.

The branch must keep the shape and end with a weight layer (Linear or Conv; pooling, Flatten or LayerNorm may follow
it): it is then odd in those weights and independent of x in the limit, so (neural-tangents' FanOut,
parallel(branch, Identity), FanInSum)

    Sigma'(x, y) = Sigma(x, y) + Sigma_branch(x, y),      Theta'(x, y) = Theta(x, y) + Theta_branch(x, y).

`Sequential` runs the branch (its plans and kernels); this module only holds the description and the finite module.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Layer, LayerError


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

    def describe(self) -> str:
        return f"Residual({', '.join(layer.describe() for layer in self.layers)})"


class ResidualModule(nn.Module):
    """x + branch(x)."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)
