"""`Unflatten`: the units of a fully-connected layer laid out on positions, (N, d) -> (N, d / P, *S), P = prod(S), as
torch's nn.Unflatten(1, (C, *S)) after an nn.Linear (the first layer of a decoder or a generator).

Different units of a weight layer are independent and centred (odd in their own weights), so with infinitely many
channels at each position the positions are independent copies of the flat kernel:

    Sigma'(x_p, y_q) = delta_pq Sigma(x, y),        Theta'(x_p, y_q) = delta_pq Theta(x, y)

The input must therefore be such an output (a Linear, possibly through layers that keep it odd); inputs that are
data have a finite channel count: reshape the data instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_positive_int
from .base import Layer, LayerError
from .record import Record


class Unflatten(Layer):
    """``(N, d) -> (N, d / P, *spatial)``: the width's units at the positions `spatial` (1 to 3 axes)."""

    odd_preserving = True

    @property
    def width_factor(self) -> int:
        """The finite network gives the weight layer before it width * P units (`width` channels at each position)."""
        return math.prod(self.spatial)

    def __init__(self, spatial: tuple[int, ...]):
        spatial = tuple(spatial) if isinstance(spatial, (tuple, list)) else (spatial,)
        if not 1 <= len(spatial) <= 3:
            raise ValueError(f"spatial must have 1 to 3 sizes (L, (H, W) or (D, H, W)), got {spatial!r}")
        self.spatial = tuple(check_positive_int(s, "spatial") for s in spatial)

    def describe(self) -> str:
        return f"Unflatten(spatial={self.spatial})"

    def out_shape(self, shape, where):
        if len(shape) != 1:
            raise LayerError(f"Unflatten ({where}) needs flat inputs (d,) per example, got shape {shape}")
        positions = math.prod(self.spatial)
        if shape[0] % positions:     # 0: a width, which the finite network makes a multiple
            raise LayerError(f"Unflatten ({where}): {shape[0]} features do not divide into the {positions} positions "
                             f"{self.spatial}")
        return (shape[0] // positions, *self.spatial)

    def gaussian(self, in_gaussian, where):
        if not in_gaussian:
            raise LayerError(f"Unflatten ({where}) needs the output of a weight layer (Linear) before it: the "
                             f"positions are then independent units; to lay out input data on positions, reshape "
                             f"the inputs instead")
        return True

    def need(self, out_need):
        return "flat"

    def apply(self, record: Record, ctx) -> Record:
        P = math.prod(self.spatial)
        eye = torch.eye(P, dtype=record.sigma.dtype, device=record.sigma.device)

        def spread(t: torch.Tensor) -> torch.Tensor:       # (*batch) -> (*batch, *S, *S), delta_pq t
            return (t[..., None, None] * eye).reshape(*t.shape, *self.spatial, *self.spatial)
        out = record.map(spread)
        return Record(out.sigma, out.theta, "full", record.nbatch, self.spatial)

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return nn.Unflatten(1, (in_shape[0] // math.prod(self.spatial), *self.spatial))
