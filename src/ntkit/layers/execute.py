"""Running a plan (`ntkit.layers.plan`): the self pass, the tiles of a Gram, and one differentiable block.

Each layer's kernel map acts on a `Record` of the spatial covariance the rest of the network needs. The self pass
(each example with itself, in chunks of O(N) memory) keeps the variances q(x_p) every nonlinearity and LayerNorm
asks for, the exact diagonals and every layer's diagonals for the range checks (`ntkit.layers.ranges`). A tile of
example pairs then reads the variances of its rows and columns. A tile on the diagonal of a symmetric Gram computes
each pair once; a pair of identical examples anywhere gets the exact diagonal value (`exact_pairs`). A fully-connected
chain (`plan.fused_recursion`), whole or as the plan's prefix, runs the fused recursion of `ntkit.kernels` instead
(`ntkit.layers.fused`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from .. import coincident, gram
from .._checks import check_positive_int
from .aggregate import adjacencies, features, reads_graphs
from .base import Layer, Pass
from .plan import Step, elements
from .ranges import Diagonal, input_diagonal, moderate
from .ranges import check as check_range
from .record import Record, at_pairs, full_to_diag, input_record, paired_input_record

if TYPE_CHECKING:
    from .fused import Prefix

#: bytes of one tile's spatial covariance (Sigma or Theta); a tile's peak is a few of these. On a CPU small tiles
#: that stay in cache are several times faster than large ones (measured: 2 MB against 64 MB)
TILE_BYTES = {"cpu": 2 * 2**20, "cuda": 1024 * 2**20}
Names = tuple[str, ...]


def run(steps: list[Step], record: Record, ctx: Pass, pooled: bool = False) -> Record:
    """The kernel maps of a plan, one layer after the other, on one record. The self pass keeps each layer's
    diagonals for the range checks (`pooled`: a pooling layer came before)."""
    for step in steps:
        if step.subs is not None:   # each branch on the input (the identity: the input itself), then combined
            record = step.layer.merge([run(sub, record, ctx, pooled) if sub else reduce(record, step.out_need)
                                       for sub in step.subs])
        else:
            record = step.layer.apply(record, ctx)
        record = reduce(record, step.out_need)
        if ctx.is_self:
            pooled = pooled or step.pools
            ctx.keep(step.place, record, not pooled, step.layer)
    return record


def start(steps: list[Step], X: torch.Tensor, Y: torch.Tensor | None, in_need: str, want_ntk: bool,
          paired: bool = False) -> tuple[Record, list[Step]]:
    """The record the plan starts from and the steps left: a first layer may start it from the inputs itself
    (`Layer.start`, as a first convolution from the inputs' patches). `paired`: the pairs (X[b], Y[b]) only, in a
    record with one batch axis. Graph inputs start from their node features (`ntkit.layers.aggregate`)."""
    X, Y = features(steps, X), None if Y is None else features(steps, Y)
    if steps and not (X.requires_grad and torch.is_grad_enabled()):
        record = steps[0].layer.start(X, Y, in_need, want_ntk, paired)
        if record is not None:
            return record, steps[1:]
    if paired:
        return paired_input_record(X, Y, in_need, want_ntk), steps
    return input_record(X, Y, in_need, want_ntk), steps


def reduce(record: Record, need: str) -> Record:
    """The record with the layout `need` keeps: every pair of positions reduced to its diagonal where "diag"."""
    return full_to_diag(record) if record.layout == "full" and need == "diag" else record


def theta_of(record: Record) -> torch.Tensor | None:
    """Theta of a final record, full size (zero when the network has no weight layer)."""
    if record.theta is None or record.theta.ndim:
        return record.theta
    return torch.zeros_like(record.sigma)


def chunk_size(X: torch.Tensor, steps: list[Step], in_need: str) -> int:
    """Examples per chunk of the self pass: one chunk's covariance within `TILE_BYTES`."""
    itemsize = torch.finfo(X.dtype).bits // 8
    budget = TILE_BYTES.get(X.device.type, TILE_BYTES["cpu"])
    return max(1, budget // (elements(steps, in_need, tuple(X.shape[1:])) * itemsize))


def self_pass(X: torch.Tensor, steps: list[Step], in_need: str, want_ntk: bool, chunk: int
              ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None, list[Diagonal]]:
    """Each example with itself: the variances q(x_p) every nonlinearity and LayerNorm asks for (in order, each
    (N, *S)), the exact diagonals Sigma(x, x), Theta(x, x) of the output, and every layer's diagonals for the range
    checks (`ntkit.layers.ranges`; the input's x.x / C first)."""
    parts, kept, inputs = [], [], []
    for first in range(0, X.shape[0], chunk):
        Xc = X[first:first + chunk]
        ctx = Pass(graphs=adjacencies(steps, Xc, None))
        inputs.append(input_diagonal(features(steps, Xc)))
        record, rest = start(steps, Xc, None, in_need, want_ntk)
        if len(rest) < len(steps):    # the first layer, started from the inputs
            ctx.keep(steps[0].place, record, True, steps[0].layer)
        run(rest, record, ctx)
        parts.append(ctx.kept)
        kept.append(ctx.diagonals)
    if not parts:
        empty = X.new_zeros(0)
        return [], empty, empty if want_ntk else None, []
    q = [torch.cat(chunks) for chunks in zip(*parts, strict=True)]
    diagonals = [Diagonal("the input", _joined(inputs), None, True)]
    for layer in zip(*kept, strict=True):
        where, _, theta, low, kind = layer[0]
        diagonals.append(Diagonal(where, _joined([d[1] for d in layer]),
                                  None if theta is None else _joined([d[2] for d in layer]), low, kind))
    final = diagonals[-1]
    theta = (torch.zeros_like(final.sigma) if final.theta is None else final.theta) if want_ntk else None
    return q, final.sigma, theta, diagonals


def checked_self_pass(X: torch.Tensor, steps: list[Step], in_need: str, want_ntk: bool, chunk: int,
                      layers: Sequence[Layer]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """`self_pass`, range-checked (`ntkit.layers.ranges.check`: one synchronization)."""
    q, sigma, theta, diagonals = self_pass(X, steps, in_need, want_ntk, chunk)
    if X.shape[0]:
        check_range(X, diagonals, layers, lambda X64: self_pass(X64, steps, in_need, want_ntk, chunk)[3], want_ntk)
    return q, sigma, theta


def _joined(chunks: list[torch.Tensor]) -> torch.Tensor:
    """The chunks of the self pass along the examples (no copy for one chunk)."""
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def layer_tiles(Xt: torch.Tensor, Yt: torch.Tensor, symmetric: bool, steps: list[Step], in_need: str,
                layers: Sequence[Layer], names: Names, tile: int | None, describe: str,
                prefix: Prefix | None = None) -> gram.KernelTiles:
    """The tiles of a plan: each O(rows cols HW) or O(rows cols (HW)^2) after one self pass of X (and Y). A
    `prefix` (`ntkit.layers.fused.Prefix`: a leading fully-connected chain) starts each tile from its fused record."""
    want_ntk = "ntk" in names
    itemsize = torch.finfo(Xt.dtype).bits // 8
    if tile is None:
        budget = TILE_BYTES.get(Xt.device.type, TILE_BYTES["cpu"])
        size = elements(steps, in_need, tuple(Xt.shape[1:])) * itemsize
        edge = max(1, min(gram.default_tile(Xt.device), math.isqrt(budget // size)))
    else:
        edge = check_positive_int(tile, "tile")
    chunk = chunk_size(Xt, steps, in_need)
    with torch.no_grad():
        qx, sx, tx = checked_self_pass(Xt, steps, in_need, want_ntk, chunk, layers)
        qy = qx if symmetric else checked_self_pass(Yt, steps, in_need, want_ntk, chunk, layers)[0]
    if prefix is not None:
        prefix.prepare()
    plan = _PlanTiles(Xt, Yt, symmetric, steps, in_need, names, qx, qy, {"nngp": sx, "ntk": tx}, prefix)
    fn = exact_pairs(plan.tile, Xt, Yt, symmetric, plan.diag)
    return gram.KernelTiles(fn, Xt.shape[0], Yt.shape[0], names, symmetric, Xt.dtype, Xt.device, edge,
                            describe=describe, inputs=(Xt,) if symmetric else (Xt, Yt),
                            diag=plan.diag if symmetric else None)


class _PlanTiles:
    """The tile function of `layer_tiles`: the variances qx, qy and the exact diagonals of the self pass, read by
    each tile. With a `prefix` each tile starts from the prefix's fused record and reads the variances from the
    first the rest of the plan asked for (`prefix.skip`)."""

    def __init__(self, Xt: torch.Tensor, Yt: torch.Tensor, symmetric: bool, steps: list[Step], in_need: str,
                 names: Names, qx: list[torch.Tensor], qy: list[torch.Tensor], exact: dict,
                 prefix: Prefix | None):
        self.Xt, self.Yt, self.symmetric, self.steps, self.in_need = Xt, Yt, symmetric, steps, in_need
        self.names, self.want_ntk, self.exact, self.prefix = names, "ntk" in names, exact, prefix
        skip = 0 if prefix is None else prefix.skip
        self.flags = moderate(qx, qy)[skip:]    # per layer: the unscaled products of variances are safe
        self.qx, self.qy = qx[skip:], qy[skip:]
        self.graphs = reads_graphs([step.layer for step in steps])

    def diag(self, rows: gram.Index) -> list[torch.Tensor]:
        return [self.exact[name][rows] for name in self.names]

    def tile(self, rows: gram.Index, cols: gram.Index) -> list[torch.Tensor]:
        if self.symmetric and isinstance(rows, slice) and rows == cols:
            return self.triangle(rows)
        X, Y = self.Xt[rows], self.Yt[cols]
        if self.prefix is None:
            record, left = start(self.steps, X, Y, self.in_need, self.want_ntk)
        else:
            record, left = self.prefix.block(rows, cols), self.prefix.rest
        tiles = self.finish(record, left, rows, cols, adjacencies(self.steps, X, Y))
        return [tiles[name] for name in self.names]

    def triangle(self, rows: slice) -> list[torch.Tensor]:
        """A tile on the diagonal of a symmetric kernel: the pairs above the diagonal once, mirrored, and the
        exact diagonal."""
        Xr = self.Xt[rows]
        n = Xr.shape[0]
        i, j = torch.triu_indices(n, n, offset=1, device=Xr.device)
        blocks = [torch.empty(n, n, dtype=Xr.dtype, device=Xr.device) for _ in self.names]
        if len(i):
            if self.prefix is not None:
                record, left = self.prefix.pairs(rows, i, j), self.prefix.rest
            elif Xr.ndim == 2:     # flat inputs: one product for the tile, read at the pairs (no copies of rows)
                record, left = start(self.steps, Xr, Xr, self.in_need, self.want_ntk)
                record = at_pairs(record, i, j)
            else:
                record, left = start(self.steps, Xr[i], Xr[j], self.in_need, self.want_ntk, paired=True)
            positions = torch.arange(self.Xt.shape[0], device=Xr.device)[rows]
            graphs = adjacencies(self.steps, Xr[i], Xr[j]) if self.graphs else None
            values = self.finish(record, left, positions[i], positions[j], graphs)
            for block, name in zip(blocks, self.names, strict=True):
                block[i, j] = values[name]
                block[j, i] = values[name]
        for block, name in zip(blocks, self.names, strict=True):
            block.diagonal().copy_(self.exact[name][rows])
        return blocks

    def finish(self, record: Record, left: list[Step], rows, cols, graphs) -> dict:
        """The steps `left` on a record whose pairs have the variances qx[rows], qy[cols] (and the adjacencies
        `graphs` of graph inputs, else None): {name: kernel}."""
        out = run(left, record, Pass([q[rows] for q in self.qx], [q[cols] for q in self.qy], self.flags, graphs))
        return {"nngp": out.sigma, "ntk": theta_of(out)}


def layer_block(X: torch.Tensor, Y: torch.Tensor, symmetric: bool, steps: list[Step], in_need: str,
                layers: Sequence[Layer], want_ntk: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Sigma, Theta) of a plan on one block, with autograd (the differentiable path); a symmetric block carries
    the exact diagonal of the self pass, as the tiles do."""
    qx, sx, tx = checked_self_pass(X, steps, in_need, want_ntk, X.shape[0] or 1, layers)
    qy = qx if symmetric else checked_self_pass(Y, steps, in_need, want_ntk, Y.shape[0] or 1, layers)[0]
    out = run(steps, input_record(features(steps, X), features(steps, Y), in_need, want_ntk),
              Pass(qx, qy, graphs=adjacencies(steps, X, Y)))
    sigma, theta = out.sigma, theta_of(out)
    if symmetric:
        sigma = sigma.diagonal_scatter(sx)
        theta = None if theta is None else theta.diagonal_scatter(tx)
    return sigma, theta


def exact_pairs(tile_fn: Callable, Xt: torch.Tensor, Yt: torch.Tensor, symmetric: bool,
                exact: Callable[[torch.Tensor], list[torch.Tensor]]) -> Callable:
    """`tile_fn` with every pair of identical examples (a point with itself, wherever it falls in a tile: the
    diagonal of a symmetric Gram, a training point among Nystrom centres, a duplicate) set to its exact diagonal
    value, `exact(index)`: the kernels of X[index] with themselves (`coincident.identical_pairs`)."""
    fx = coincident.fingerprints(Xt)
    fy = fx if symmetric else coincident.fingerprints(Yt)

    def fn(rows: gram.Index, cols: gram.Index) -> list[torch.Tensor]:
        blocks = tile_fn(rows, cols)
        on_diagonal = symmetric and isinstance(rows, slice) and rows == cols     # its diagonal is exact already
        a, b = coincident.identical_pairs(Xt, Yt, rows, cols, fx, fy, skip_diagonal=on_diagonal)
        if len(a):
            index = torch.arange(Xt.shape[0], device=Xt.device)[rows][a]
            for block, values in zip(blocks, exact(index), strict=True):
                block[a, b] = values.to(block.dtype)
        return blocks

    return fn
