"""Running a plan (`ntkit.layers.plan`): the self pass, the tiles of a Gram, and one differentiable block.

Each layer's kernel map acts on a `Record` of the spatial covariance the rest of the network needs. The self pass
(each example with itself, in chunks of O(N) memory) keeps the variances q(x_p) every nonlinearity and LayerNorm
asks for, the exact diagonals and every layer's diagonals for the range checks (`ntkit.layers.ranges`). A tile of
example pairs then reads the variances of its rows and columns. A tile on the diagonal of a symmetric Gram computes
each pair once; a pair of identical examples anywhere gets the exact diagonal value (`exact_pairs`). A fully-connected
chain (`plan.fused_recursion`) runs the fused recursion of `ntkit.kernels` instead (`fc_tiles`, `fc_block`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .. import coincident, gram
from .._checks import check_positive_int
from ..kernels import Recursion, kernel_block, kernel_diag, sigma_diagonals
from .aggregate import adjacencies, features
from .base import Layer, Pass
from .plan import Step, elements
from .ranges import Diagonal, input_diagonal, moderate
from .ranges import check as check_range
from .record import Record, full_to_diag, input_record, paired_input_record

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
                layers: Sequence[Layer], names: Names, tile: int | None, describe: str) -> gram.KernelTiles:
    """The tiles of a plan: each O(rows cols HW) or O(rows cols (HW)^2) after one self pass of X (and Y)."""
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
        flags = moderate(qx, qy)    # per layer: the unscaled products of variances are safe
    exact = {"nngp": sx, "ntk": tx}

    def diag(rows: gram.Index) -> list[torch.Tensor]:
        return [exact[name][rows] for name in names]

    def tile_fn(rows: gram.Index, cols: gram.Index) -> list[torch.Tensor]:
        if symmetric and isinstance(rows, slice) and rows == cols:
            return triangle(rows)
        record, rest = start(steps, Xt[rows], Yt[cols], in_need, want_ntk)
        out = run(rest, record, Pass([q[rows] for q in qx], [q[cols] for q in qy], flags,
                                     adjacencies(steps, Xt[rows], Yt[cols])))
        tiles = {"nngp": out.sigma, "ntk": theta_of(out)}
        return [tiles[name] for name in names]

    def triangle(rows: slice) -> list[torch.Tensor]:
        """A tile on the diagonal of a symmetric kernel: the pairs above the diagonal once, mirrored, and the
        exact diagonal."""
        Xr = Xt[rows]
        n = Xr.shape[0]
        i, j = torch.triu_indices(n, n, offset=1, device=Xr.device)
        blocks = [torch.empty(n, n, dtype=Xr.dtype, device=Xr.device) for _ in names]
        if len(i):
            record, rest = start(steps, Xr[i], Xr[j], in_need, want_ntk, paired=True)
            out = run(rest, record, Pass([q[rows][i] for q in qx], [q[rows][j] for q in qx], flags,
                                         adjacencies(steps, Xr[i], Xr[j])))
            values = {"nngp": out.sigma, "ntk": theta_of(out)}
            for block, name in zip(blocks, names, strict=True):
                block[i, j] = values[name]
                block[j, i] = values[name]
        for block, name in zip(blocks, names, strict=True):
            block.diagonal().copy_(exact[name][rows])
        return blocks

    fn = exact_pairs(tile_fn, Xt, Yt, symmetric, diag)
    return gram.KernelTiles(fn, Xt.shape[0], Yt.shape[0], names, symmetric, Xt.dtype, Xt.device, edge,
                            describe=describe, inputs=(Xt,) if symmetric else (Xt, Yt),
                            diag=diag if symmetric else None)


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
