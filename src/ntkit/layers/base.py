"""What every layer provides: its shape rule, its kernel map on a `Record`, and its finite torch module.

Shapes are per example, without the batch axis: (C, H, W) for images, (C, L) for sequences, (d,) for
vectors. Channel counts are the widths of the finite network and are infinite in the kernel.
"""

from __future__ import annotations

import torch
from torch import nn

from ..activations import Nonlinearity
from .record import Record, broadcast_variances, self_variances

#: the layouts ordered by how much of the spatial covariance they keep
_ORDER = {"flat": 0, "diag": 1, "full": 2}


def wider(a: str, b: str) -> str:
    """The layout that keeps at least what both keep."""
    return a if _ORDER[a] >= _ORDER[b] else b


class LayerError(ValueError):
    """Bad input or a bad architecture, naming the layer."""


class Pass:
    """The variances q(x_p) = Sigma(x_p, x_p) the nonlinearities and LayerNorm need, in the order they ask.

    The self pass (each example with itself) computes them from its own record and keeps them, and keeps each
    layer's diagonal for the range checks (`ntkit.layers.ranges`); a pass over a tile of pairs reads the variances
    of its rows and columns back, in the same order. `moderate[i]`: whether the i-th variances of the rows and
    the columns are all 0 or well inside the dtype's range, so that products q(x_p) q(y_q) are too (when not
    known, as in the self pass, the maps use their overflow-safe forms). `graphs`: the adjacencies (rows, columns)
    of graph inputs (`ntkit.layers.aggregate`), else None.
    """

    def __init__(self, qx: list[torch.Tensor] | None = None, qy: list[torch.Tensor] | None = None,
                 moderate: list[bool] | None = None, graphs: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.qx, self.qy, self.moderate, self.graphs = qx, qy, moderate, graphs
        self.kept: list[torch.Tensor] = []
        #: the self pass: (where, Sigma(x_p, x_p), Theta(x_p, x_p) or None, low, layer) after each layer
        self.diagonals: list[tuple[str, torch.Tensor, torch.Tensor | None, bool, Layer]] = []
        self.index = 0

    @property
    def is_self(self) -> bool:
        return self.qx is None

    def variances(self, record: Record) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """q(x_p) and q(y_q) shaped to broadcast against the record's Sigma, and whether they are moderate."""
        if self.is_self:   # a variance is >= 0; a pooled one that cancels may round below 0, which maps take to NaN
            q = self_variances(record).clamp(min=0.0)
            self.kept.append(q)
            return (*broadcast_variances(record, q, q), False)
        qx, qy = self.qx[self.index], self.qy[self.index]
        known = self.moderate is not None and self.moderate[self.index]
        self.index += 1
        return (*broadcast_variances(record, qx, qy), known)

    def keep(self, where: str, record: Record, low: bool, layer: Layer) -> None:
        """After each layer of the self pass: the diagonals of its record, (B, *S) or (B,), for the range checks
        (`low`: whether values below the normal range are to be judged, see `ntkit.layers.ranges`)."""
        if self.is_self:
            theta = None if record.theta is None or record.theta.ndim == 0 else self_variances(record, record.theta)
            self.diagonals.append((where, self_variances(record), theta, low, layer))


class Layer:
    """Base class of the layers. Subclasses implement `out_shape`, `apply`, `module` and `describe`, and declare
    what the composer (`ntkit.layers.plan`, `ntkit.layers.execute`) needs to know of them, instead of being
    recognized by class::

        weights          a weight layer (Linear, Conv): its channel count is the width, its output a Gaussian
        pools            it averages over positions (the range checks judge small values only before pooling)
        odd_preserving   its output stays odd in the weights of the layer before (pooling, Flatten, LayerNorm):
                         it may follow the last weight layer of a Residual branch
        branches         parallel branches (each a tuple of layers, () the identity), run by the composer on the
                         layer's input and combined by `merge` (Parallel, Residual)
        dense_scales     (W_std, b_std) of a fully-connected weight layer, else None     } chains of these run the
        elementwise      the `Nonlinearity` of an elementwise layer, else None           } fused recursion
        has_ntk_limit    False where the NTK grows with the width (a Linear in the standard parametrization
                         without its fan-in `in_channels`)
        width_factor     the finite network gives the weight layer before it width * width_factor units (an
                         Unflatten lays them out on its positions: `width` channels at each)
        need, gaussian   the spatial covariance it needs of its input; whether its output is Gaussian
        start            the record of its output straight from the inputs, when it is the first layer (or None)
    """

    weights: bool = False
    pools: bool = False
    odd_preserving: bool = False
    branches: tuple[tuple[Layer, ...], ...] | None = None
    dense_scales: tuple | None = None
    elementwise: Nonlinearity | None = None
    has_ntk_limit: bool = True
    width_factor: int = 1

    @property
    def name(self) -> str:
        return type(self).__name__

    def describe(self) -> str:
        """Every setting, exactly (floats by repr): part of a Gram's fingerprint."""
        return f"{self.name}()"

    def __repr__(self) -> str:
        return self.describe()

    def out_shape(self, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
        """The output shape for an input of `shape` (per example); a LayerError naming `where` if not valid."""
        return shape

    def need(self, out_need: str) -> str:
        """The layout this layer needs of its input for its output to have `out_need` (spatial inputs)."""
        return out_need

    def gaussian(self, in_gaussian: bool, where: str) -> bool:
        """Whether the output is, in the limit, a centred Gaussian odd in the last weights (what LayerNorm and
        Residual need); elementwise nonlinearities end it, weight layers start it."""
        return in_gaussian

    def apply(self, record: Record, ctx: Pass) -> Record:
        """The kernel map: the record of the outputs from the record of the inputs."""
        raise NotImplementedError

    def module(self, in_shape: tuple[int, ...], out_channels: int | None, generator: torch.Generator | None,
               dtype: torch.dtype) -> nn.Module:
        """The finite layer in the NTK parametrization (weight layers get `out_channels`)."""
        raise NotImplementedError

    def start(self, X: torch.Tensor, Y: torch.Tensor | None, in_need: str, want_ntk: bool, paired: bool
              ) -> Record | None:
        """As the first layer: the record of its output straight from the inputs X (r, C, S...) and Y (c, C, S...)
        (None: each example with itself; `paired`: the pairs (X[b], Y[b])) whose input record has layout `in_need`,
        when that is cheaper than the input record and `apply`; None to let the composer do the latter."""
        return None

    # ------------------------------------------------------------- layers with branches (`branches` set)
    def check_branches(self, shape: tuple[int, ...], outs: list[tuple[int, ...]], gaussians: list[bool],
                       where: str) -> tuple[tuple[int, ...], bool]:
        """The output shape and Gaussianity from those of the branches on an input of `shape`, or a LayerError."""
        raise NotImplementedError

    def merge(self, records: list[Record]) -> Record:
        """The record of the output from the records of the branches' outputs, in order."""
        raise NotImplementedError

    def branch_channels(self, shape: tuple[int, ...], widths) -> list[int]:
        """In the finite network: the channel count of each branch's last weight layer (`widths`: an iterator over
        the hidden widths, drawn from as many times as `count_widths` says)."""
        raise NotImplementedError

    def count_widths(self) -> int:
        """How many hidden widths `branch_channels` draws."""
        return 0

    def wrap(self, branches: list[nn.Module]) -> nn.Module:
        """The finite layer, given the finite modules of the branches (an empty nn.Sequential: the identity)."""
        raise NotImplementedError


def spatial_only(shape: tuple[int, ...], layer: Layer, where: str, dims: int | None = None) -> None:
    """Refuse flat (or wrong-rank) inputs for a layer that works on positions."""
    if dims is None and len(shape) < 2:
        raise LayerError(f"{layer.name} ({where}) needs inputs with positions, (C, L) or (C, H, W) per example; "
                         f"got shape {shape}")
    if dims is not None and len(shape) != dims + 1:
        want = {1: "(C, L)", 2: "(C, H, W)", 3: "(C, D, H, W)"}[dims]
        raise LayerError(f"{layer.name} ({where}) needs inputs of shape {want} per example, got shape {shape}")


def check_channels(layer: Layer, shape: tuple[int, ...], where: str) -> None:
    """A layer translated from torch knows its input channel count: refuse inputs with another."""
    expected = getattr(layer, "in_channels", None)
    if expected is not None and shape[0] not in (0, expected):  # 0: a width
        raise LayerError(f"{layer.name} ({where}) expects {expected} input channels, got {shape[0]} "
                         f"(input shape {shape} per example)")
