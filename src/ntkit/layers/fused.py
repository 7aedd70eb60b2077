"""The fused recursion of `ntkit.kernels` inside the composer: fully-connected chains, whole or as a plan's prefix.

A chain of dense weight layers and closed-form elementwise nonlinearities (`plan.fused_recursion`, each layer with
its own settings) runs the fused recursion on every tile (`fc_tiles`, `fc_block`): O(rows cols (n0 + L)) per tile
after the per-layer diagonals, the exact diagonal, and the near pairs recomputed without cancellation
(`ntkit.coincident`). A plan that starts with such a chain and goes on with other layers (LayerNorm, a Residual,
...) computes that prefix the same way and hands its record to the layer-by-layer execution of the rest
(`Prefix`), so its near pairs enter the rest with the prefix's accurate values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import gram
from .._checks import check_positive_int
from ..kernels import Recursion, kernel_block, kernel_diag, sigma_diagonals
from .aggregate import reads_graphs
from .base import Layer, Pass
from .execute import Names, exact_pairs, run
from .plan import Step, fused_prefix, fused_recursion
from .record import Record, at_pairs, input_record


def fc_tiles(Xt: torch.Tensor, Yt: torch.Tensor, symmetric: bool, rec: Recursion, names: Names, tile: int | None,
             compile: bool, describe: str) -> gram.KernelTiles:
    """The tiles of a fully-connected chain: the fused recursion of `ntkit.kernels` (the paper's network).

    The per-layer diagonals Sigma^(l)(x, x) are computed once (O(N L)); each tile costs O(rows cols (n0 + L)).
    """
    if Yt.shape[1] != Xt.shape[1]:
        raise ValueError(f"X and Y must have the same number of features, got {Xt.shape[1]} and {Yt.shape[1]}")
    want_ntk = "ntk" in names
    edge = gram.default_tile(Xt.device) if tile is None else check_positive_int(tile, "tile")
    with torch.no_grad():
        qx = sigma_diagonals(Xt, rec, want_ntk)     # range-checked, the Theta diagonal too
        qy = qx if symmetric else sigma_diagonals(Yt, rec, want_ntk)

    def diag(rows: gram.Index) -> list[torch.Tensor]:
        sigma, theta = kernel_diag(Xt[rows], rec, want_ntk)
        return [theta if name == "ntk" else sigma for name in names]

    def tile_fn(rows: gram.Index, cols: gram.Index) -> list[torch.Tensor]:
        on_diagonal = symmetric and isinstance(rows, slice) and rows == cols
        sigma, theta = kernel_block(Xt[rows], Yt[cols], rec, want_ntk, [q[rows] for q in qx],
                                    [q[cols] for q in qy], compiled=compile, exact_diagonal=on_diagonal)
        tiles = {"nngp": sigma, "ntk": theta}
        if on_diagonal:  # the exact diagonal: no rounding noise
            for name, values in zip(names, diag(rows), strict=True):
                tiles[name].diagonal().copy_(values)
        return [tiles[name] for name in names]

    return gram.KernelTiles(exact_pairs(tile_fn, Xt, Yt, symmetric, diag), Xt.shape[0], Yt.shape[0], names,
                            symmetric, Xt.dtype, Xt.device, edge, describe=describe,
                            inputs=(Xt,) if symmetric else (Xt, Yt), diag=diag if symmetric else None)


def fc_block(X: torch.Tensor, Y: torch.Tensor, symmetric: bool, rec: Recursion, want_ntk: bool
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Sigma, Theta) of a fully-connected chain on one block, with autograd; a symmetric block carries the exact
    diagonal (no sqrt(eps) of the angle), as the tiles do."""
    sigma, theta = kernel_block(X, Y, rec, want_ntk)
    if symmetric:
        exact = kernel_diag(X, rec, want_ntk)
        sigma = sigma.diagonal_scatter(exact[0])
        theta = None if theta is None else theta.diagonal_scatter(exact[1])
    return sigma, theta


class Prefix:
    """The leading fully-connected chain of a plan on flat inputs (`plan.fused_prefix`), computed fused on each tile.

    `rest`: the steps after it; `skip`: how many of the self pass's variances its nonlinearities asked for (the
    rest's `Pass` reads from there on). The per-layer diagonals of X and Y are computed once, by `prepare`, after
    the plan's self pass has range-checked every layer (so errors name the layers as that pass does).
    """

    def __init__(self, layers: Sequence[Layer], steps: list[Step], Xt: torch.Tensor, Yt: torch.Tensor,
                 symmetric: bool, want_ntk: bool):
        length = fused_prefix(layers)
        self.rec: Recursion = fused_recursion(layers[:length])
        self.rest, self.want_ntk, self.X, self.Y = steps[length:], want_ntk, Xt, Yt
        ctx = Pass()       # one example with itself through the prefix: the variances its layers keep
        run(steps[:length], input_record(Xt.new_ones(1, Xt.shape[1]), None, "flat", want_ntk), ctx)
        self.skip, self.symmetric = len(ctx.kept), symmetric

    @torch.no_grad()
    def prepare(self) -> None:
        """The chain's per-layer diagonals Sigma^(l)(x, x) of X and Y (O(N L))."""
        self.qx = sigma_diagonals(self.X, self.rec, self.want_ntk)
        self.qy = self.qx if self.symmetric else sigma_diagonals(self.Y, self.rec, self.want_ntk)

    @staticmethod
    def of(layers: Sequence[Layer], steps: list[Step], Xt: torch.Tensor, Yt: torch.Tensor, symmetric: bool,
           want_ntk: bool) -> Prefix | None:
        """The prefix of a plan, or None where it has none (or the inputs are not flat, or are graphs)."""
        if Xt.ndim != 2 or reads_graphs(layers) or not fused_prefix(layers):
            return None
        return Prefix(layers, steps, Xt, Yt, symmetric, want_ntk)

    def block(self, rows: gram.Index, cols: gram.Index, exact_diagonal: bool = False) -> Record:
        """The record after the prefix for the tile (X[rows], Y[cols]): Sigma and Theta (rows, cols), near pairs
        refined (`ntkit.kernels.kernel_block`)."""
        sigma, theta = kernel_block(self.X[rows], self.Y[cols], self.rec, self.want_ntk,
                                    [q[rows] for q in self.qx], [q[cols] for q in self.qy],
                                    exact_diagonal=exact_diagonal)
        return Record(sigma, theta, "flat", 2, ())

    def pairs(self, rows: slice, i: torch.Tensor, j: torch.Tensor) -> Record:
        """The record after the prefix for the pairs (X[rows][i], X[rows][j]) of a diagonal tile of a symmetric Gram
        (one batch axis): the tile's block, read at the pairs."""
        return at_pairs(self.block(rows, rows, exact_diagonal=True), i, j)
