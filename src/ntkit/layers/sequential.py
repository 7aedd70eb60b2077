"""`Sequential`: layers composed into one architecture, with both views.

    arch = nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.Conv2d(3), nk.ReLU(), nk.Flatten(), nk.Linear())
    net  = arch.network(in_shape=(1, 16, 16), width=256, seed=0)     # a torch.nn.Sequential, NTK parametrization
    K    = arch.kernel(X, get="ntk")                                  # exact infinite-width Theta, X (N, 1, 16, 16)

The kernel is computed in tiles of example pairs (`ntkit.gram.KernelTiles`), so the peak memory is the output
plus a few tiles. Each layer's kernel map acts on a `Record` of the spatial covariance the rest of the network
needs: only Sigma(x_p, y_p) at each position (O(N^2 HW) time, O(HW) per pair) when no pooling follows, every
pair Sigma(x_p, y_q) (O(N^2 (HW)^2), O((HW)^2) per pair) up to the last pooling layer. Tiles are sized so that
one tile's covariance stays within `TILE_BYTES`; a tile on the diagonal of a symmetric Gram computes each pair
once, and a first convolution that keeps every pair of positions is one product of the inputs' patches. A pure
fully-connected chain (Linear, Activation, Linear, ...
with one activation and one W_std, b_std) runs the fused recursion of `ntkit.kernels`, as `MLP` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import coincident, gram
from .._checks import as_tensor, check_choice, check_positive_int, to_output
from ..activations import Quadrature, get_activation
from ..kernels import Recursion, kernel_block, kernel_diag, sigma_diagonals
from .activation import Activation
from .base import Layer, LayerError, Pass, wider
from .conv import _Conv, first_conv_record
from .flatten import Flatten
from .linear import Linear
from .normalization import LayerNorm
from .pooling import GlobalAvgPool, _AvgPool
from .ranges import Diagonal, input_diagonal, moderate
from .ranges import check as check_range
from .record import Record, full_to_diag, input_record, paired_input_record
from .residual import Residual, ResidualModule

KERNELS = ("ntk", "nngp")
Array = torch.Tensor | np.ndarray
#: bytes of one tile's spatial covariance (Sigma or Theta); a tile's peak is a few of these. On a CPU small tiles
#: that stay in cache are several times faster than large ones (measured: 2 MB against 64 MB)
TILE_BYTES = {"cpu": 2 * 2**20, "cuda": 1024 * 2**20}


@dataclass
class Step:
    """One layer of a plan: its shapes and the layout its output must keep (`sub`: a Residual's branch)."""

    layer: Layer
    where: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    out_need: str = "flat"
    sub: list[Step] | None = field(default=None, repr=False)


def build(layers: Sequence[Layer], shape: tuple[int, ...], prefix: str, gaussian: bool
          ) -> tuple[list[Step], tuple[int, ...], bool]:
    """Forward over the layers: shapes and Gaussianity, validated (errors name the layer)."""
    steps = []
    for index, layer in enumerate(layers):
        where = f"layer {prefix}{index}"
        if isinstance(layer, Residual):  # x + branch(x)
            sub, branch_shape, _ = build(layer.layers, shape, f"{prefix}{index}.", gaussian)
            if len(branch_shape) != len(shape) or branch_shape[1:] != shape[1:]:
                raise LayerError(f"Residual ({where}): its branch changes the shape per example from "
                                 f"{_positions(shape)} to {_positions(branch_shape)}; x + branch(x) needs the same")
            if not _ends_with_weights(layer.layers):
                raise LayerError(f"Residual ({where}): its branch must end with a Linear or Conv layer (pooling, "
                                 f"Flatten or LayerNorm may follow it), so that it is independent of the skip "
                                 f"connection in the limit")
            steps.append(Step(layer, where, shape, shape, sub=sub))
            continue
        out = layer.out_shape(shape, where)
        if layer.weights:  # its channel count is the width: infinite here (0 stands for it)
            out = (0, *out[1:])
        gaussian = layer.gaussian(gaussian, where)
        steps.append(Step(layer, where, shape, out))
        shape = out
    return steps, shape, gaussian


def _ends_with_weights(layers: Sequence[Layer]) -> bool:
    """Whether the last weight layer is followed only by layers linear in its output (pooling, Flatten, LayerNorm):
    then the branch is odd in those weights and independent of the skip connection in the limit."""
    for layer in reversed(layers):
        if layer.weights:
            return True
        if not isinstance(layer, (Flatten, LayerNorm, GlobalAvgPool, _AvgPool)):
            return False
    return False


def assign_needs(steps: list[Step], out_need: str) -> str:
    """Backward over a plan: the layout each step's output must keep; returns what the input must have."""
    for step in reversed(steps):
        step.out_need = out_need if len(step.out_shape) > 1 else "flat"
        if step.sub is not None:
            need = wider(step.out_need, assign_needs(step.sub, step.out_need))
        else:
            need = step.layer.need(step.out_need)
        out_need = need if len(step.in_shape) > 1 else "flat"
    return out_need


def run(steps: list[Step], record: Record, ctx: Pass, pooled: bool = False) -> Record:
    """The kernel maps of a plan, one layer after the other, on one record. The self pass keeps each layer's
    diagonals for the range checks (`pooled`: a pooling layer came before)."""
    for step in steps:
        if step.sub is not None:
            branch = run(step.sub, record, ctx, pooled)
            skip = _reduce(record, step.out_need)
            theta = None if skip.theta is None else skip.theta + branch.theta
            record = Record(skip.sigma + branch.sigma, theta, skip.layout, skip.nbatch, skip.spatial)
        else:
            record = step.layer.apply(record, ctx)
        record = _reduce(record, step.out_need)
        if ctx.is_self:
            pooled = pooled or _pools(step)
            ctx.keep(_place(step), record, not pooled, step.layer)
    return record


def _pools(step: Step) -> bool:
    """Whether the step averages over positions (itself, or a layer of its Residual branch)."""
    return isinstance(step.layer, (GlobalAvgPool, _AvgPool)) or any(_pools(s) for s in step.sub or ())


def _place(step: Step) -> str:
    """The layer as the range errors name it: "layer 2 (Conv2d)"."""
    return f"{step.where} ({step.layer.name})"


def start(steps: list[Step], X: torch.Tensor, Y: torch.Tensor | None, in_need: str, want_ntk: bool,
          paired: bool = False) -> tuple[Record, list[Step]]:
    """The record the plan starts from and the steps left: a first convolution whose output keeps every pair of
    positions is computed from the inputs' patches in one product (`first_conv_record`). `paired`: the pairs
    (X[b], Y[b]) only, in a record with one batch axis."""
    first = steps[0].layer if steps else None
    if isinstance(first, _Conv) and in_need == "full" and not (X.requires_grad and torch.is_grad_enabled()):
        return first_conv_record(first, X, Y, want_ntk, paired), steps[1:]
    if paired:
        return paired_input_record(X, Y, in_need, want_ntk), steps
    return input_record(X, Y, in_need, want_ntk), steps


def _joined(chunks: list[torch.Tensor]) -> torch.Tensor:
    """The chunks of the self pass along the examples (no copy for one chunk)."""
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def _theta_diag(final: Diagonal) -> torch.Tensor:
    """Theta(x, x) of the output (zero when the network has no weight layer)."""
    return torch.zeros_like(final.sigma) if final.theta is None else final.theta


def _theta(record: Record) -> torch.Tensor | None:
    """Theta of a final record, full size (zero when the network has no weight layer)."""
    if record.theta is None or record.theta.ndim:
        return record.theta
    return torch.zeros_like(record.sigma)


def _reduce(record: Record, need: str) -> Record:
    return full_to_diag(record) if record.layout == "full" and need == "diag" else record


def _positions(shape: tuple[int, ...]) -> str:
    return "(d,)" if len(shape) == 1 else f"(C, {', '.join(map(str, shape[1:]))})"


def _elements(steps: list[Step], in_need: str, in_shape: tuple[int, ...]) -> int:
    """The largest number of covariance entries one example pair holds along the plan."""
    def size(need: str, shape: tuple[int, ...]) -> int:
        positions = math.prod(shape[1:]) if len(shape) > 1 else 1
        return {"flat": 1, "diag": positions, "full": positions * positions}[need]

    largest, need = size(in_need, in_shape), in_need
    for step in steps:
        if step.sub is not None:
            largest = max(largest, _elements(step.sub, need, step.in_shape))
        # a layer works on its input's layout before reducing to its own
        largest = max(largest, size(need, step.out_shape), size(step.out_need, step.out_shape))
        need = step.out_need
    return largest


class Sequential:
    """An architecture: layers applied in order. Inputs are (N, C, H, W), (N, C, L) or (N, d), as in torch.

    The network must end with flat outputs (Flatten or GlobalAvgPool, then Linear). Its kernels are the
    exact infinite-width limits (channel counts to infinity) of `network(...)` in the NTK parametrization,
    the definitions of neural-tangents' `stax` with parameterization="ntk".
    """

    def __init__(self, *layers: Layer):
        if not layers:
            raise LayerError("Sequential needs at least one layer, got none")
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {index} of Sequential must be an ntkit layer (nk.Conv2d, nk.ReLU, ...), got "
                                f"{type(layer).__name__}; use nk.infinite(module) to translate torch modules")
        self.layers: tuple[Layer, ...] = tuple(layers)

    def describe(self) -> str:
        """Every setting of every layer, exactly: part of a stored Gram's fingerprint."""
        return f"Sequential({', '.join(layer.describe() for layer in self.layers)})"

    def __repr__(self) -> str:
        return self.describe()

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    # ---------------------------------------------------------------------------------- plans
    def plan(self, in_shape: tuple[int, ...]) -> tuple[list[Step], str]:
        """The validated plan for inputs of `in_shape` per example, and the layout the input record needs."""
        steps, out_shape, _ = build(self.layers, tuple(in_shape), "", False)
        if len(out_shape) != 1:
            raise LayerError(f"Sequential must end with flat outputs (Flatten or GlobalAvgPool, then Linear); its "
                             f"last layer {self.layers[-1].name} gives shape {out_shape} per example")
        return steps, assign_needs(steps, "flat")

    def recursion(self) -> Recursion | None:
        """The `ntkit.kernels.Recursion` of a pure fully-connected chain (Linear, Activation, Linear, ..., Linear
        with one activation and one W_std, b_std), else None."""
        layers = self.layers
        if len(layers) % 2 == 0 or not all(isinstance(layer, Linear) for layer in layers[::2]):
            return None
        acts = layers[1::2]
        if not all(isinstance(a, Activation) for a in acts):
            return None
        first = layers[0]
        same = all(_same(layer.W_std, first.W_std) and _same(layer.b_std, first.b_std) for layer in layers[::2])
        if not same or not all(_same_activation(a.activation, acts[0].activation) for a in acts):
            return None
        activation = acts[0].activation if acts else get_activation("identity")
        return Recursion(activation, len(layers[::2]), first.W_std, first.b_std)

    # ------------------------------------------------------------------------- the kernels
    def kernel(self, X: Array, Y: Array | None = None, get: str | tuple[str, ...] = "ntk", *,
               out: Array | tuple[Array, ...] | str | None = None, tile: int | None = None,
               progress: bool | None = None, client: Any = None) -> Array | tuple[Array, ...]:
        """The exact infinite-width kernels between the examples of X `(N, *shape)` and of Y `(M, *shape)` (default X).

        Args:
            get: "ntk" (Theta), "nngp" (Sigma) or a tuple of both, returned in that order; each (N, M) in X's dtype
                and device (float32 or float64; other dtypes become float32). NumPy in gives NumPy out.
            out: preallocated (N, M) arrays (a NumPy memmap works), filled and returned; or a path ending in
                ".zarr": a resumable on-disk store (`ntkit.gram.store`), whose arrays are returned.
            client: a dask.distributed.Client: the tiles run as Dask tasks on its workers (`ntkit.gram.distributed`).
            tile: edge of the square tiles of example pairs (default: sized so one tile's spatial covariance stays
                within `TILE_BYTES`; see the module docstring for the memory each architecture needs).
            progress: a progress bar over tiles (None: the global setting).

        Differentiable in X (and Y, W_std, b_std given as tensors): then computed as one block.
        """
        names = check_get(get)
        Xt, Yt, numpy_in = self._inputs(X, Y)
        if self._needs_graph(Xt, Yt):
            if out is not None:
                raise ValueError("out cannot be used while differentiating through the kernel")
            sigma, theta = self._block(Xt, Xt if Yt is None else Yt, "ntk" in names)
            return _return([theta if name == "ntk" else sigma for name in names], get, numpy_in)
        tiles = self.tiles(Xt, Yt, names, tile=tile)
        outs = gram.evaluate(tiles, out, show_progress=progress, client=client)
        if out is not None:
            return outs[0] if isinstance(get, str) else tuple(outs)
        return _return(outs, get, numpy_in)

    def kernel_tiles(self, X: torch.Tensor, Y: torch.Tensor | None = None, get: str | tuple[str, ...] = "ntk", *,
                     tile: int | None = None) -> gram.KernelTiles:
        """The kernels of `kernel` as a tile function (`ntkit.gram.KernelTiles`) for `gram.fill`, the on-disk
        store and the solvers. X `(N, *shape)`, Y `(M, *shape)` or None (symmetric). The per-example variances each
        nonlinearity needs are computed here once, in chunks (O(N) memory per layer); each tile then costs
        O(rows cols HW) or O(rows cols (HW)^2) (see the module docstring)."""
        names = check_get(get)
        Xt, Yt, _ = self._inputs(X, Y)
        return self.tiles(Xt, Yt, names, tile=tile)

    def kernel_diag(self, X: Array, get: str | tuple[str, ...] = "ntk") -> Array | tuple[Array, ...]:
        """The diagonal K(x_i, x_i) of the kernels of `kernel`, shape (N,), in O(N) memory (chunked)."""
        names = check_get(get)
        Xt, _, numpy_in = self._inputs(X, None)
        rec = self.recursion() if Xt.ndim == 2 else None
        if rec is not None:
            sigma, theta = kernel_diag(Xt, rec, "ntk" in names)
        else:
            steps, in_need = self.plan(tuple(Xt.shape[1:]))
            _, sigma, theta = self._checked_self_pass(Xt, steps, in_need, "ntk" in names,
                                                      chunk=self._chunk(Xt, steps, in_need))
        return _return([theta if name == "ntk" else sigma for name in names], get, numpy_in)

    # --------------------------------------------------------------------------------- tiles
    def tiles(self, Xt: torch.Tensor, Yt: torch.Tensor | None, names: tuple[str, ...], *, tile: int | None = None,
              compile: bool = False, describe: str | None = None) -> gram.KernelTiles:
        """`kernel_tiles` on validated tensors (`describe` overrides the text of the fingerprint)."""
        describe = self.describe() if describe is None else describe
        symmetric = Yt is None
        Yt = Xt if symmetric else Yt
        rec = self.recursion() if Xt.ndim == 2 else None
        if rec is not None:
            return _fc_tiles(Xt, Yt, symmetric, rec, names, tile, compile, describe)
        steps, in_need = self.plan(tuple(Xt.shape[1:]))
        want_ntk = "ntk" in names
        itemsize = torch.finfo(Xt.dtype).bits // 8
        elements = _elements(steps, in_need, tuple(Xt.shape[1:]))
        if tile is None:
            budget = TILE_BYTES.get(Xt.device.type, TILE_BYTES["cpu"])
            edge = max(1, min(gram.default_tile(Xt.device), math.isqrt(budget // (elements * itemsize))))
        else:
            edge = check_positive_int(tile, "tile")
        chunk = self._chunk(Xt, steps, in_need)
        with torch.no_grad():
            qx, sx, tx = self._checked_self_pass(Xt, steps, in_need, want_ntk, chunk)
            qy = qx if symmetric else self._checked_self_pass(Yt, steps, in_need, want_ntk, chunk)[0]
            flags = moderate(qx, qy)    # per layer: the unscaled products of variances are safe
        exact = {"nngp": sx, "ntk": tx}

        def diag(rows: gram.Index) -> list[torch.Tensor]:
            return [exact[name][rows] for name in names]

        def tile_fn(rows: gram.Index, cols: gram.Index) -> list[torch.Tensor]:
            if symmetric and isinstance(rows, slice) and rows == cols:
                return triangle(rows)
            record, rest = start(steps, Xt[rows], Yt[cols], in_need, want_ntk)
            out = run(rest, record, Pass([q[rows] for q in qx], [q[cols] for q in qy], flags))
            tiles = {"nngp": out.sigma, "ntk": _theta(out)}
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
                out = run(rest, record, Pass([q[rows][i] for q in qx], [q[rows][j] for q in qx], flags))
                values = {"nngp": out.sigma, "ntk": _theta(out)}
                for block, name in zip(blocks, names, strict=True):
                    block[i, j] = values[name]
                    block[j, i] = values[name]
            for block, name in zip(blocks, names, strict=True):
                block.diagonal().copy_(exact[name][rows])
            return blocks

        tile_fn = exact_pairs(tile_fn, Xt, Yt, symmetric, lambda index: [exact[name][index] for name in names])
        return gram.KernelTiles(tile_fn, Xt.shape[0], Yt.shape[0], names, symmetric, Xt.dtype, Xt.device, edge,
                                describe=describe, inputs=(Xt,) if symmetric else (Xt, Yt),
                                diag=diag if symmetric else None)

    def _chunk(self, Xt: torch.Tensor, steps: list[Step], in_need: str) -> int:
        """Examples per chunk of the self pass: one chunk's covariance within `TILE_BYTES`."""
        itemsize = torch.finfo(Xt.dtype).bits // 8
        budget = TILE_BYTES.get(Xt.device.type, TILE_BYTES["cpu"])
        return max(1, budget // (_elements(steps, in_need, tuple(Xt.shape[1:])) * itemsize))

    @staticmethod
    def _self_pass(X: torch.Tensor, steps: list[Step], in_need: str, want_ntk: bool, chunk: int
                   ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None, list[Diagonal]]:
        """Each example with itself: the variances q(x_p) every nonlinearity and LayerNorm asks for (in order,
        each (N, *S)), the exact diagonals Sigma(x, x), Theta(x, x) of the output, and every layer's diagonals for
        the range checks (`ntkit.layers.ranges`; the input's x.x / C first)."""
        parts, kept, inputs = [], [], []
        for first in range(0, X.shape[0], chunk):
            ctx = Pass()
            Xc = X[first:first + chunk]
            inputs.append(input_diagonal(Xc))
            record, rest = start(steps, Xc, None, in_need, want_ntk)
            if len(rest) < len(steps):    # the first convolution, computed by `start`
                ctx.keep(_place(steps[0]), record, True, steps[0].layer)
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
        theta = _theta_diag(final) if want_ntk else None
        return q, final.sigma, theta, diagonals

    def _checked_self_pass(self, X: torch.Tensor, steps: list[Step], in_need: str, want_ntk: bool, chunk: int
                           ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """`_self_pass`, range-checked (`ntkit.layers.ranges.check`: one synchronization)."""
        q, sigma, theta, diagonals = self._self_pass(X, steps, in_need, want_ntk, chunk)
        if X.shape[0]:
            check_range(X, diagonals, self.layers,
                        lambda X64: self._self_pass(X64, steps, in_need, want_ntk, chunk)[3], want_ntk)
        return q, sigma, theta

    def _block(self, X: torch.Tensor, Y: torch.Tensor, want_ntk: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Sigma, Theta) on one block, with autograd (the differentiable path)."""
        rec = self.recursion() if X.ndim == 2 else None
        if rec is not None:
            return kernel_block(X, Y, rec, want_ntk)
        steps, in_need = self.plan(tuple(X.shape[1:]))
        qx = self._checked_self_pass(X, steps, in_need, want_ntk, X.shape[0] or 1)[0]
        qy = qx if Y is X else self._checked_self_pass(Y, steps, in_need, want_ntk, Y.shape[0] or 1)[0]
        out = run(steps, input_record(X, Y, in_need, want_ntk), Pass(qx, qy))
        return out.sigma, _theta(out)

    def _needs_graph(self, Xt: torch.Tensor, Yt: torch.Tensor | None) -> bool:
        scales = [getattr(layer, name) for layer in _all_layers(self.layers) for name in ("W_std", "b_std")
                  if hasattr(layer, name)]
        return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                               for t in (Xt, Yt, *scales))

    @staticmethod
    def _inputs(X: Array, Y: Array | None) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        Xt, numpy_in = as_tensor(X, "X", ndim=(1, 2, 3, 4))
        if Xt.ndim == 1:
            Xt = Xt.unsqueeze(0)
        if Xt.dtype not in (torch.float32, torch.float64):
            Xt = Xt.float()
        if Xt.shape[1] == 0:
            raise ValueError(f"X must have at least one channel or feature, got shape {tuple(Xt.shape)}")
        if Y is None:
            return Xt, None, numpy_in
        Yt = as_tensor(Y, "Y", ndim=(1, 2, 3, 4), dtype=Xt.dtype, device=Xt.device)[0]
        if Yt.ndim == 1:
            Yt = Yt.unsqueeze(0)
        if Yt.shape[1:] != Xt.shape[1:]:
            raise ValueError(f"X and Y must have the same shape per example, got {tuple(Xt.shape[1:])} and "
                             f"{tuple(Yt.shape[1:])}")
        return Xt, Yt, numpy_in

    # --------------------------------------------------------------------------- the network
    def network(self, in_shape: int | tuple[int, ...], width: int | list[int] | None = None, out_features: int = 1,
                seed: int | None = None, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> nn.Sequential:
        """A randomly initialized finite network of this architecture (a `torch.nn.Sequential`).

        in_shape: per example, (C, H, W), (C, L) or d. width: the channel count of every hidden weight layer
        (or a list, one per hidden weight layer in order). The last weight layer has `out_features` outputs and
        the last weight layer of a Residual branch its input's channel count. All parameters are standard normal
        (NTK parametrization: W_std / sqrt(fan_in) W, b_std b); `seed` makes them reproducible.
        """
        shape = (check_positive_int(in_shape, "in_shape"),) if isinstance(in_shape, (int, np.integer)) \
            else tuple(check_positive_int(s, "in_shape") for s in in_shape)
        out_features = check_positive_int(out_features, "out_features")
        self.plan(shape)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        hidden = _count_hidden(self.layers, top=True)
        if hidden == 0:
            widths: list[int] = []
        elif isinstance(width, (list, tuple)):
            if len(width) != hidden:
                raise ValueError(f"width must list {hidden} hidden widths, one per hidden weight layer, got "
                                 f"{len(width)}")
            widths = [check_positive_int(w, "width") for w in width]
        elif width is None:
            raise ValueError(f"width is required: this architecture has {hidden} hidden weight layers")
        else:
            widths = [check_positive_int(width, "width")] * hidden
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        modules, _ = _modules(self.layers, shape, out_features, iter(widths), generator,
                              dtype or torch.get_default_dtype(), "")
        net = nn.Sequential(*modules)
        return net.to(device) if device is not None else net


def _modules(layers: Sequence[Layer], shape: tuple[int, ...], last_out: int, widths, generator, dtype, prefix: str
             ) -> tuple[list[nn.Module], tuple[int, ...]]:
    """The finite modules of `layers` on inputs of `shape` (real channel counts); the last weight layer has
    `last_out` outputs, the others take the next of `widths`."""
    last = max((i for i, layer in enumerate(layers) if layer.weights), default=-1)
    modules = []
    for index, layer in enumerate(layers):
        where = f"layer {prefix}{index}"
        if isinstance(layer, Residual):
            inner, _ = _modules(layer.layers, shape, shape[0], widths, generator, dtype, f"{prefix}{index}.")
            modules.append(ResidualModule(nn.Sequential(*inner)))
            continue
        out = layer.out_shape(shape, where)
        if layer.weights:
            channels = last_out if index == last else next(widths)
            modules.append(layer.module(shape, channels, generator, dtype))
            shape = (channels, *out[1:])
        else:
            modules.append(layer.module(shape, None, generator, dtype))
            shape = out
    return modules, shape


def _count_hidden(layers: Sequence[Layer], top: bool) -> int:
    """The weight layers that take a width: all but the last one at each level."""
    weights = sum(1 for layer in layers if layer.weights)
    inner = sum(_count_hidden(layer.layers, False) for layer in layers if isinstance(layer, Residual))
    return max(weights - 1, 0) + inner


def _all_layers(layers: Sequence[Layer]):
    for layer in layers:
        yield layer
        if isinstance(layer, Residual):
            yield from _all_layers(layer.layers)


def _same_activation(a: Any, b: Any) -> bool:
    """The same nonlinearity: one object, or equal closed forms, or quadratures of one function and degree."""
    if a is b:
        return True
    if isinstance(a, Quadrature) or isinstance(b, Quadrature):
        return isinstance(a, Quadrature) and isinstance(b, Quadrature) and a.fn is b.fn and a.degree == b.degree
    return type(a) is type(b) and repr(a) == repr(b)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return float(a) == float(b)


def check_get(get: Any) -> tuple[str, ...]:
    names = (get,) if isinstance(get, str) else get
    if not isinstance(names, tuple) or not names:
        raise TypeError(f"get must be 'ntk', 'nngp' or a tuple of them, got {get!r}")
    for name in names:
        check_choice(name, "get", KERNELS)
    return names


def _return(results: list, get: Any, numpy_out: bool) -> Any:
    converted = [to_output(r, numpy_out) for r in results]
    return converted[0] if isinstance(get, str) else tuple(converted)


def _fc_tiles(Xt: torch.Tensor, Yt: torch.Tensor, symmetric: bool, rec: Recursion, names: tuple[str, ...],
              tile: int | None, compile: bool, describe: str) -> gram.KernelTiles:
    """The tiles of a pure fully-connected chain: the fused recursion of `ntkit.kernels` (the paper's network).

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

    def exact(index: torch.Tensor) -> list[torch.Tensor]:
        sigma, theta = kernel_diag(Xt[index], rec, want_ntk)
        return [theta if name == "ntk" else sigma for name in names]

    return gram.KernelTiles(exact_pairs(tile_fn, Xt, Yt, symmetric, exact), Xt.shape[0], Yt.shape[0], names,
                            symmetric, Xt.dtype, Xt.device, edge, describe=describe,
                            inputs=(Xt,) if symmetric else (Xt, Yt), diag=diag if symmetric else None)


def exact_pairs(tile_fn, Xt: torch.Tensor, Yt: torch.Tensor, symmetric: bool, exact) -> Any:
    """`tile_fn` with every pair of identical examples (a point with itself, wherever it falls in a tile: the
    diagonal of a symmetric Gram, a training point among Nystrom centres, a duplicate) set to its exact diagonal
    value, `exact(index)`: the kernels of X[index] with themselves (`coincident.identical_pairs`)."""
    fx = coincident.fingerprints(Xt)
    fy = fx if symmetric else coincident.fingerprints(Yt)

    def fn(rows: gram.Index, cols: gram.Index) -> list[torch.Tensor]:
        blocks = tile_fn(rows, cols)
        a, b = coincident.identical_pairs(Xt, Yt, rows, cols, fx, fy)
        if len(a):
            index = torch.arange(Xt.shape[0], device=Xt.device)[rows][a]
            for block, values in zip(blocks, exact(index), strict=True):
                block[a, b] = values.to(block.dtype)
        return blocks

    return fn
