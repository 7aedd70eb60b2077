"""`MLP`: one description of a fully-connected architecture, two views of it.

    arch = MLP(depth=4, activation="relu", beta=0.1)
    net  = arch.network(in_features=2, width=10_000, seed=0)   # finite network (Section 2)
    K    = arch.kernel(X, get="ntk")                           # Theta^(L), Theorem 1
    S, K = arch.kernel(X, get=("nngp", "ntk"))                 # Sigma^(L) (Proposition 1) and Theta^(L)

Every view is that of `arch.layers`, the `ntkit.layers.Sequential` (Linear, Activation, ..., Linear) of the same
network: the kernels, their diagonal, their tiles, the autograd path and the finite network. Its composer runs the
fused recursion of `ntkit.kernels` for such chains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import gram
from ._checks import as_matrix, check_choice, check_positive_int, check_real
from .activations import DEFAULT_DEGREE, Nonlinearity, get_activation
from .kernels import Recursion
from .layers import Activation, Linear, Sequential
from .layers.sequential import _return, check_get
from .nets import NTKNetwork

PARAMETRIZATIONS = ("ntk", "standard")
Array = torch.Tensor | np.ndarray


class MLP:
    """A fully-connected network of `depth` weight layers (L in the paper; L = 1 is linear).

    Args:
        depth: number of weight layers L >= 1.
        activation: a name ("relu", "erf", "tanh", ...), a torch callable, or an `ntkit.activations.Nonlinearity`.
        beta: the paper's bias scale (>= 0); the bias standard deviation when `b_std` is None.
        W_std: weight scale (the paper: 1.0). A float, or a 0-d tensor to differentiate through.
        b_std: bias scale; overrides `beta` when given.
        parametrization: "ntk" (the paper's, Section 2) or "standard" (Remark 1).
        quadrature_degree: radial nodes of the quadrature for activations without a closed form (see
            `ntkit.activations.quadrature`: the default 20 gives about 1e-8, 32 about 1e-12).
    """

    def __init__(self, depth: int, activation: str | Callable | Nonlinearity = "relu", beta: float = 0.1,
                 W_std: float | torch.Tensor = 1.0, b_std: float | torch.Tensor | None = None,
                 parametrization: str = "ntk", quadrature_degree: int = DEFAULT_DEGREE):
        self.depth = check_positive_int(depth, "depth")
        self.activation = get_activation(activation, degree=quadrature_degree)
        self.beta = check_real(beta, "beta", minimum=0.0)
        self.W_std = check_real(W_std, "W_std", minimum=0.0)
        self.b_std = self.beta if b_std is None else check_real(b_std, "b_std", minimum=0.0)
        self.parametrization = check_choice(parametrization, "parametrization", PARAMETRIZATIONS)

    def __repr__(self) -> str:
        return (f"MLP(depth={self.depth}, activation={self.activation.name!r}, W_std={float(self.W_std):g}, "
                f"b_std={float(self.b_std):g}, parametrization={self.parametrization!r})")

    def describe(self) -> str:
        """Every setting that fixes the kernels, exactly (floats by repr): part of a Gram's fingerprint."""
        return (f"MLP(depth={self.depth}, activation={self.activation!r}, W_std={float(self.W_std)!r}, "
                f"b_std={float(self.b_std)!r}, parametrization={self.parametrization!r})")

    @property
    def recursion(self) -> Recursion:
        return Recursion(self.activation, self.depth, self.W_std, self.b_std)

    @property
    def layers(self) -> Sequential:
        """This architecture as layers (Linear, Activation, Linear, ..., Linear; `depth` Linear layers)."""
        def linear() -> Linear:
            return Linear(self.W_std, self.b_std, parametrization=self.parametrization)

        layers: list = [linear()]
        for _ in range(self.depth - 1):
            layers += [Activation(self.activation), linear()]
        return Sequential(*layers)

    # ----------------------------------------------------------------- the finite network
    def network(self, in_features: int, width: int | list[int] | None = None, out_features: int = 1,
                seed: int | None = None, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> NTKNetwork:
        """A randomly initialized network of this architecture (a `torch.nn.Sequential`).

        `width` is the common hidden width n_1 = ... = n_{L-1}, or a list of L - 1 hidden widths
        (ignored, and may be None, when depth = 1). `seed` makes the initialization reproducible.
        """
        in_features = check_positive_int(in_features, "in_features")
        hidden = self.depth - 1
        if hidden and isinstance(width, (list, tuple)) and len(width) != hidden:
            raise ValueError(f"width must list {hidden} hidden widths for depth {self.depth}, got {len(width)}")
        if hidden and width is None:
            raise ValueError(f"width is required for depth {self.depth} (it has {hidden} hidden layers)")
        modules = self.layers.modules(in_features, width, out_features, seed, dtype, device)
        widths = [in_features, *(module.out_features for module in modules[::2])]
        return NTKNetwork.of(modules, widths)

    # ------------------------------------------------------------ the infinite-width kernels
    def kernel(self, X: Array, Y: Array | None = None, get: str | tuple[str, ...] = "ntk", *,
               out: Array | tuple[Array, ...] | None = None, tile: int | None = None,
               progress: bool | None = None, compile: bool = False, client: Any = None) -> Array | tuple[Array, ...]:
        """The analytic kernels between the rows of X (N, n0) and of Y (M, n0; default X).

        get: "ntk" for Theta^(L) (Theorem 1), "nngp" for Sigma^(L) (Proposition 1), or a tuple
            of both, returned in that order. Each result has shape (N, M), X's dtype and device;
            NumPy input gives NumPy output.
        out: a preallocated (N, M) array (a tuple of them for a tuple `get`), a NumPy memmap
            included; it is filled and returned. Or a path ending in ".zarr": a resumable on-disk store
            (`ntkit.gram.store`: finished tiles are recorded, a rerun computes only the others), whose arrays
            are returned.
        client: a dask.distributed.Client: the tiles run as Dask tasks on its workers
            (`ntkit.gram.distributed`), bitwise the same result.
        tile: edge of the square tiles the Gram is computed in (default 512 on CPU, 8192 on
            GPU): peak memory is the output plus a few tiles.
        compile: fuse the ReLU-family recursion with torch.compile (one pass over memory per layer
            instead of about twelve). Worth it for repeated large Grams, on a GPU above all; the
            first call compiles, which takes tens of seconds. Other activations ignore it.

        progress: show a progress bar over tiles (None: the global setting, see `set_progress`).
        """
        names = self._check_get(get)
        Xt, numpy_in = as_matrix(X, "X")
        Yt = None if Y is None else as_matrix(Y, "Y", dtype=Xt.dtype, device=Xt.device)[0]
        Xt, Yt = _same_features(Xt, Yt)
        return self.layers.evaluate(Xt, Yt, names, get, numpy_in, out=out, tile=tile, progress=progress,
                                    client=client, compile=compile, describe=self.describe)

    def kernel_tiles(self, X: torch.Tensor, Y: torch.Tensor | None = None, get: str | tuple[str, ...] = "ntk", *,
                     tile: int | None = None, compile: bool = False) -> gram.KernelTiles:
        """The kernels of `kernel` as a tile function (`ntkit.gram.KernelTiles`), for the layers that evaluate
        them at scale: `gram.fill` (memory, memmaps, stores), `gram.matmul` and the solvers.

        X (N, n0) and Y (M, n0; None: X, symmetric) are tensors (float32 or float64; other dtypes become float32).
        The per-layer diagonals Sigma^(l)(x, x) are computed here once (O(N L)); each tile then costs
        O(rows cols (n0 + L)). On a symmetric kernel the tiles on the diagonal carry the exact diagonal.
        These are the tiles of `self.layers` (the fused fully-connected path of `Sequential`).
        """
        names = self._check_get(get)
        Xt = as_matrix(X, "X")[0]
        Yt = None if Y is None else as_matrix(Y, "Y", dtype=Xt.dtype, device=Xt.device)[0]
        Xt, Yt = _same_features(Xt, Yt)
        return self.layers.tiles(Xt, Yt, names, tile=tile, compile=compile, describe=self.describe())

    def kernel_diag(self, X: Array, get: str | tuple[str, ...] = "ntk") -> Array | tuple[Array, ...]:
        """The diagonal K(x_i, x_i) of the kernels of `kernel`, shape (N,), in O(N) memory."""
        names = self._check_get(get)
        Xt, numpy_in = as_matrix(X, "X")
        sigma, theta = self.layers.diagonal(Xt, "ntk" in names)
        return _return([theta if name == "ntk" else sigma for name in names], get, numpy_in)

    # ---------------------------------------------------------------------------- helpers
    def _check_get(self, get: Any) -> tuple[str, ...]:
        names = check_get(get)
        if "ntk" in names and self.parametrization == "standard":
            raise ValueError("get='ntk' is not defined for parametrization='standard': its NTK grows with the "
                             "width (Remark 1). Use parametrization='ntk' (same functions at initialization), "
                             "or get='nngp'")
        return names


def _same_features(X: torch.Tensor, Y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """X and Y (None: X, symmetric) with the same number of features, in float32 or float64."""
    if Y is not None and Y.shape[1] != X.shape[1]:
        raise ValueError(f"X and Y must have the same number of features, got {X.shape[1]} and {Y.shape[1]}")
    if X.dtype not in (torch.float32, torch.float64):
        X, Y = X.float(), None if Y is None else Y.float()
    return X, Y
