"""`Sequential`: layers composed into one architecture, with both views.

    arch = nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.Conv2d(3), nk.ReLU(), nk.Flatten(), nk.Linear())
    net  = arch.network(in_shape=(1, 16, 16), width=256, seed=0)     # a torch.nn.Sequential, NTK parametrization
    K    = arch.kernel(X, get="ntk")                                  # exact infinite-width Theta, X (N, 1, 16, 16)

The kernel is computed in tiles of example pairs (`ntkit.gram.KernelTiles`), so the peak memory is the output
plus a few tiles. Each layer's kernel map acts on a `Record` of the spatial covariance the rest of the network
needs: only Sigma(x_p, y_p) at each position (O(N^2 HW) time, O(HW) per pair) when no pooling follows, every
pair Sigma(x_p, y_q) (O(N^2 (HW)^2), O((HW)^2) per pair) up to the last pooling layer. Tiles are sized so that
one tile's covariance stays within `execute.TILE_BYTES`. A fully-connected chain (Linear and closed-form
activations, each layer with its own settings) runs the fused recursion of `ntkit.kernels`, as `MLP` (which is such a
chain); an architecture that starts with one runs that prefix fused and the rest layer by layer (`fused.py`).
Planning is in `plan.py`, running a plan (self pass, tiles, one block) in `execute.py`, the finite network in
`finite.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import gram
from .._checks import as_tensor, check_choice, check_positive_int, to_output
from ..kernels import Recursion, kernel_diag
from . import execute, finite, fused
from .aggregate import GraphSequential, check_nodes, graph_shape, reads_graphs
from .base import Layer, LayerError
from .plan import Step, all_layers, assign_needs, build, fused_recursion

KERNELS = ("ntk", "nngp")
Array = torch.Tensor | np.ndarray
TILE_BYTES = execute.TILE_BYTES


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
        steps, out_shape, _ = build(self.layers, graph_shape(self.layers, tuple(in_shape)), "", False)
        check_nodes(steps, tuple(in_shape))
        if len(out_shape) != 1:
            raise LayerError(f"Sequential must end with flat outputs (Flatten or GlobalAvgPool, then Linear); its "
                             f"last layer {self.layers[-1].name} gives shape {out_shape} per example")
        return steps, assign_needs(steps, "flat")

    def recursion(self) -> Recursion | None:
        """The `ntkit.kernels.Recursion` of a fully-connected chain that runs fused (`plan.fused_recursion`), else
        None."""
        return fused_recursion(self.layers)

    # ------------------------------------------------------------------------- the kernels
    def kernel(self, X: Array, Y: Array | None = None, get: str | tuple[str, ...] = "ntk", *,
               out: Array | tuple[Array, ...] | str | None = None, tile: int | None = None,
               progress: bool | None = None, client: Any = None, compile: bool = False
               ) -> Array | tuple[Array, ...]:
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
            compile: for a fully-connected chain of the ReLU family, fuse its recursion with torch.compile (see
                `MLP.kernel`); ignored otherwise.

        Differentiable in X (and Y, W_std, b_std given as tensors): then computed as one block.
        """
        names = check_get(get)
        Xt, Yt, numpy_in = self._inputs(X, Y)
        return self.evaluate(Xt, Yt, names, get, numpy_in, out=out, tile=tile, progress=progress, client=client,
                             compile=compile)

    def evaluate(self, Xt: torch.Tensor, Yt: torch.Tensor | None, names: tuple[str, ...], get: Any, numpy_in: bool,
                 *, out: Any = None, tile: int | None = None, progress: bool | None = None, client: Any = None,
                 compile: bool = False, describe: Callable[[], str] | None = None) -> Array | tuple[Array, ...]:
        """`kernel` on validated tensors (Yt None: symmetric): one differentiable block when autograd needs it,
        else the tiles through `ntkit.gram.evaluate`; `describe()` overrides the text of the fingerprint."""
        if self._needs_graph(Xt, Yt):
            if out is not None:
                raise ValueError("out cannot be used while differentiating through the kernel")
            sigma, theta = self.block(Xt, Yt, "ntk" in names)
            return _return([theta if name == "ntk" else sigma for name in names], get, numpy_in)
        tiles = self.tiles(Xt, Yt, names, tile=tile, compile=compile, describe=None if describe is None else describe())
        outs = gram.evaluate(tiles, out, show_progress=progress, client=client)
        if out is not None:
            return outs[0] if isinstance(get, str) else tuple(outs)
        return _return(outs, get, numpy_in)

    def kernel_tiles(self, X: torch.Tensor, Y: torch.Tensor | None = None, get: str | tuple[str, ...] = "ntk", *,
                     tile: int | None = None, compile: bool = False) -> gram.KernelTiles:
        """The kernels of `kernel` as a tile function (`ntkit.gram.KernelTiles`) for `gram.fill`, the on-disk
        store and the solvers. X `(N, *shape)`, Y `(M, *shape)` or None (symmetric). The per-example variances each
        nonlinearity needs are computed here once, in chunks (O(N) memory per layer); each tile then costs
        O(rows cols HW) or O(rows cols (HW)^2) (see the module docstring). A pair of identical examples gets the
        exact diagonal value in any tile."""
        names = check_get(get)
        Xt, Yt, _ = self._inputs(X, Y)
        return self.tiles(Xt, Yt, names, tile=tile, compile=compile)

    def kernel_diag(self, X: Array, get: str | tuple[str, ...] = "ntk") -> Array | tuple[Array, ...]:
        """The diagonal K(x_i, x_i) of the kernels of `kernel`, shape (N,), in O(N) memory (chunked)."""
        names = check_get(get)
        Xt, _, numpy_in = self._inputs(X, None)
        sigma, theta = self.diagonal(Xt, "ntk" in names)
        return _return([theta if name == "ntk" else sigma for name in names], get, numpy_in)

    def diagonal(self, Xt: torch.Tensor, want_ntk: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`kernel_diag` on a validated tensor: (Sigma(x, x), Theta(x, x) or None), each (N,)."""
        self._check_ntk(want_ntk)
        rec = self.recursion() if Xt.ndim == 2 else None
        if rec is not None:
            return kernel_diag(Xt, rec, want_ntk)
        steps, in_need = self.plan(tuple(Xt.shape[1:]))
        chunk = execute.chunk_size(Xt, steps, in_need)
        return execute.checked_self_pass(Xt, steps, in_need, want_ntk, chunk, self.layers)[1:]

    def tiles(self, Xt: torch.Tensor, Yt: torch.Tensor | None, names: tuple[str, ...], *, tile: int | None = None,
              compile: bool = False, describe: str | None = None) -> gram.KernelTiles:
        """`kernel_tiles` on validated tensors (`describe` overrides the text of the fingerprint): the fused
        recursion for a fully-connected chain, else the plan layer by layer (a leading fully-connected chain
        fused, `fused.Prefix`)."""
        self._check_ntk("ntk" in names)
        describe = self.describe() if describe is None else describe
        symmetric = Yt is None
        Yt = Xt if symmetric else Yt
        rec = self.recursion() if Xt.ndim == 2 else None
        if rec is not None:
            return fused.fc_tiles(Xt, Yt, symmetric, rec, names, tile, compile, describe)
        steps, in_need = self.plan(tuple(Xt.shape[1:]))
        prefix = fused.Prefix.of(self.layers, steps, Xt, Yt, symmetric, "ntk" in names)
        return execute.layer_tiles(Xt, Yt, symmetric, steps, in_need, self.layers, names, tile, describe, prefix)

    def block(self, Xt: torch.Tensor, Yt: torch.Tensor | None, want_ntk: bool
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Sigma, Theta) on one block, with autograd (the differentiable path); Yt None: symmetric, with the exact
        diagonal."""
        self._check_ntk(want_ntk)
        symmetric = Yt is None
        Yt = Xt if symmetric else Yt
        rec = self.recursion() if Xt.ndim == 2 else None
        if rec is not None:
            if Yt.shape[1] != Xt.shape[1]:
                raise ValueError(f"X and Y must have the same number of features, got {Xt.shape[1]} and "
                                 f"{Yt.shape[1]}")
            return fused.fc_block(Xt, Yt, symmetric, rec, want_ntk)
        steps, in_need = self.plan(tuple(Xt.shape[1:]))
        return execute.layer_block(Xt, Yt, symmetric, steps, in_need, self.layers, want_ntk)

    def _check_ntk(self, want_ntk: bool) -> None:
        if want_ntk and not all(layer.has_ntk_limit for layer in all_layers(self.layers)):
            raise ValueError("get='ntk' is not defined for parametrization='standard' without the fan-in: its NTK "
                             "grows with the width (Remark 1). Give each standard layer in_channels (its finite "
                             "number of inputs), or use parametrization='ntk' (same functions at initialization), "
                             "or get='nngp'")

    def _needs_graph(self, Xt: torch.Tensor, Yt: torch.Tensor | None) -> bool:
        scales = [getattr(layer, name) for layer in all_layers(self.layers) for name in ("W_std", "b_std")
                  if hasattr(layer, name)]
        return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                               for t in (Xt, Yt, *scales))

    @staticmethod
    def _inputs(X: Array, Y: Array | None) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        Xt, numpy_in = as_tensor(X, "X", ndim=(1, 2, 3, 4, 5))
        if Xt.ndim == 1:
            Xt = Xt.unsqueeze(0)
        if Xt.dtype not in (torch.float32, torch.float64):
            Xt = Xt.float()
        if Xt.shape[1] == 0:
            raise ValueError(f"X must have at least one channel or feature, got shape {tuple(Xt.shape)}")
        if Y is None:
            return Xt, None, numpy_in
        Yt = as_tensor(Y, "Y", ndim=(1, 2, 3, 4, 5), dtype=Xt.dtype, device=Xt.device)[0]
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
        modules = self.modules(in_shape, width, out_features, seed, dtype, device)
        return GraphSequential(*modules) if reads_graphs(self.layers) else nn.Sequential(*modules)

    def modules(self, in_shape: int | tuple[int, ...], width: int | Sequence[int] | None, out_features: int,
                seed: int | None, dtype: torch.dtype | None, device: torch.device | str | None) -> list[nn.Module]:
        """The finite modules of `network`, validated, in order."""
        shape = (check_positive_int(in_shape, "in_shape"),) if isinstance(in_shape, (int, np.integer)) \
            else tuple(check_positive_int(s, "in_shape") for s in in_shape)
        out_features = check_positive_int(out_features, "out_features")
        self.plan(shape)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        widths = finite.hidden_widths(self.layers, width)
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        modules, _ = finite.modules(self.layers, graph_shape(self.layers, shape), out_features, iter(widths), generator,
                                    dtype or torch.get_default_dtype())
        return modules if device is None else [module.to(device) for module in modules]


def check_get(get: Any) -> tuple[str, ...]:
    """The kernels asked for, as a tuple of "ntk" and "nngp" (a TypeError or ValueError naming `get`)."""
    names = (get,) if isinstance(get, str) else get
    if not isinstance(names, tuple) or not names:
        raise TypeError(f"get must be 'ntk', 'nngp' or a tuple of them, got {get!r}")
    for name in names:
        check_choice(name, "get", KERNELS)
    return names


def _return(results: list, get: Any, numpy_out: bool) -> Any:
    converted = [to_output(r, numpy_out) for r in results]
    return converted[0] if isinstance(get, str) else tuple(converted)
