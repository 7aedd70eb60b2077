"""The infinite-width kernels Theta and Sigma of any ntkit architecture as scikit-learn kernels.

    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import WhiteKernel
    gp = GaussianProcessRegressor(NTK(depth=4, b_std=0.1) + WhiteKernel()).fit(X, y)          # an MLP
    cnn = nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.GlobalAvgPool(), nk.Linear())
    gp = GaussianProcessRegressor(NTK(arch=cnn, in_shape=(1, 8, 8)) + WhiteKernel()).fit(X, y)  # rows of 64 pixels

`NTK` is the limiting Neural Tangent Kernel Theta (Theorem 1) and `NNGP` the limiting covariance Sigma of the
network function at initialization (Proposition 1). The architecture is fixed: the MLP shorthand (`depth`,
`activation`) or `arch=` any ntkit architecture (`nk.MLP`, `nk.Sequential`, `nk.infinite(model)`), with `in_shape=`
to reshape each row of features into an image or a sequence. Its hyperparameters are the weight scale `W_std`, the
bias scale `b_std` (the paper's beta) of every weight layer (one shared value, or one per weight layer when given as
an array) and an output `scale` (fixed unless given bounds). As for every scikit-learn kernel, the gradient is with
respect to their logarithms. For a fully-connected chain (the MLP shorthand included) it is carried through the
recursion next to the kernels (`ntkit.sklearn.gradient`: a few passes over the Gram per layer and hyperparameter,
the diagonal exact; closed-form derivatives of the ReLU family's and erf's maps, autograd partials of the others'
maps element by element); for any other architecture, and activations by quadrature, it is computed by
reverse-mode autograd through the kernel maps, tile by tile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel

from .. import gram
from .._checks import as_matrix
from ..activations import Nonlinearity
from ..mlp import MLP
from ._arch import check_arch, check_in_shape, on_rows, scales, with_scales
from .gradient import fc_chain, kernel_and_gradient

Bounds = tuple[float, float] | str
#: the MLP shorthand's scales when W_std, b_std are None (the paper's network)
DEFAULTS = {"W_std": 1.0, "b_std": 0.1}


class _ArchKernel(Kernel):
    """The kernel `get` ("ntk" or "nngp") of an architecture, times `scale`.

    Args:
        depth, activation: the MLP shorthand, `MLP(depth, activation)` (used when `arch` is None).
        W_std, b_std: the weight and bias scales of every weight layer: a float shared by all of them, or an array
            with one per weight layer (in order; those in every branch of a Parallel or Residual where it stands,
            branch after branch). None: the architecture's own (1 and 0.1 for the shorthand; an array when
            `arch`'s layers differ).
        W_std_bounds, b_std_bounds, scale_bounds: (low, high) bounds for the optimizer, or "fixed".
        arch: any ntkit architecture (`nk.MLP`, `nk.Sequential`, `nk.infinite(model)`); its scales are replaced by
            W_std and b_std when given.
        in_shape: the shape of one example, e.g. (1, 8, 8): each row of X is reshaped to it (None: rows as they are).
        scale: a factor on the kernel, > 0 (fixed at 1 unless `scale_bounds` are given).

    Inputs are rows of X (N, d), converted to float64; outputs are float64 NumPy arrays.
    """

    _get = "ntk"

    def __init__(self, depth: int = 2, activation: str | Callable | Nonlinearity = "relu", W_std: Any = None,
                 b_std: Any = None, W_std_bounds: Bounds = (1e-2, 1e2), b_std_bounds: Bounds = (1e-3, 1e2),
                 arch: Any = None, in_shape: Any = None, scale: float = 1.0, scale_bounds: Bounds = "fixed"):
        # scikit-learn convention: store the arguments untouched, validate when used.
        self.depth = depth
        self.activation = activation
        self.W_std = W_std
        self.b_std = b_std
        self.W_std_bounds = W_std_bounds
        self.b_std_bounds = b_std_bounds
        self.arch = arch
        self.in_shape = in_shape
        self.scale = scale
        self.scale_bounds = scale_bounds

    @classmethod
    def from_mlp(cls, arch: MLP, W_std_bounds: Bounds = (1e-2, 1e2),
                 b_std_bounds: Bounds = (1e-3, 1e2)) -> _ArchKernel:
        """The kernel of an `ntkit.MLP` description (its depth, activation, W_std and b_std) in the shorthand."""
        if not isinstance(arch, MLP):
            raise TypeError(f"arch must be an ntkit.MLP, got {type(arch).__name__}")
        check_arch(arch)
        return cls(depth=arch.depth, activation=arch.activation, W_std=float(arch.W_std),
                   b_std=float(arch.b_std), W_std_bounds=W_std_bounds, b_std_bounds=b_std_bounds)

    # ------------------------------------------------------------------ the architecture
    def _base(self) -> Any:
        """The architecture with its own scales: the shorthand's MLP or the validated `arch`."""
        if self.arch is None:
            return MLP(self.depth, self.activation)
        if not (isinstance(self.depth, int) and self.depth == 2 and isinstance(self.activation, str)
                and self.activation == "relu"):
            raise ValueError("depth and activation describe the MLP shorthand: with arch= give them in the "
                             "architecture (e.g. arch=nk.MLP(depth=4, activation='erf'))")
        return check_arch(self.arch)

    def _values(self) -> dict[str, Any]:
        """W_std, b_std (floats, or arrays with one per weight layer) and scale, None resolved."""
        values: dict[str, Any] = {}
        for name in ("W_std", "b_std"):
            value = getattr(self, name)
            if value is None and self.arch is None:
                value = DEFAULTS[name]
            elif value is None:
                own = scales(self._base(), name)
                value = float(own[0]) if np.all(own == own[0]) else own
            elif np.iterable(value):
                value = np.asarray(value, dtype=np.float64)
                value = float(value[0]) if value.size == 1 else value
            values[name] = value
        values["scale"] = self.scale
        for name, value in values.items():
            if not np.all(np.isfinite(value)) or np.any(np.asarray(value) < 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        return values

    def _hyperparameter(self, name: str, values: dict[str, Any] | None = None) -> Hyperparameter:
        value = (self._values() if values is None else values)[name]
        bounds = getattr(self, f"{name}_bounds")
        if np.iterable(value):
            return Hyperparameter(name, "numeric", bounds, len(value))
        return Hyperparameter(name, "numeric", bounds)

    @property
    def hyperparameter_W_std(self) -> Hyperparameter:
        return self._hyperparameter("W_std")

    @property
    def hyperparameter_b_std(self) -> Hyperparameter:
        return self._hyperparameter("b_std")

    @property
    def hyperparameter_scale(self) -> Hyperparameter:
        return self._hyperparameter("scale")

    @property
    def hyperparameters(self) -> list[Hyperparameter]:
        """W_std, b_std and scale (scikit-learn's order, that of their names), from one reading of the values."""
        values = self._values()
        return [self._hyperparameter(name, values) for name in ("W_std", "b_std", "scale")]

    @property
    def theta(self) -> np.ndarray:
        """The logarithms of the free hyperparameters (W_std, b_std, scale, in that order), flattened."""
        values = self._values()
        free = _free(values, [h for h in self.hyperparameters if not h.fixed])
        return np.log(np.hstack([np.ravel(values[h.name]) for h in free])) if free else np.array([])

    @theta.setter
    def theta(self, theta: np.ndarray) -> None:
        Kernel.theta.fset(self, theta)

    def is_stationary(self) -> bool:
        """False: Theta and Sigma depend on the inputs' norms and angle, not only on x - y."""
        return False

    def __repr__(self) -> str:
        values = self._values()

        def text(value: Any) -> str:
            return f"{value:.3g}" if not np.iterable(value) else "[" + ", ".join(f"{v:.3g}" for v in value) + "]"

        if self.arch is None:
            activation = self.activation if isinstance(self.activation, str) else getattr(
                self.activation, "name", repr(self.activation))
            head = f"depth={self.depth}, activation={activation!r}"
        else:
            head = f"arch={self.arch!r}" + ("" if self.in_shape is None else f", in_shape={tuple(self.in_shape)}")
        scale = "" if self.scale == 1.0 and self.scale_bounds == "fixed" else f", scale={text(values['scale'])}"
        return f"{type(self).__name__}({head}, W_std={text(values['W_std'])}, b_std={text(values['b_std'])}{scale})"

    def _arch(self, n_features: int, W_std: Any = None, b_std: Any = None, values: dict[str, Any] | None = None
              ) -> Any:
        """The architecture with these scales (default: the hyperparameters' values), on rows of `n_features`."""
        values = self._values() if values is None else values
        arch = with_scales(self._base(), values["W_std"] if W_std is None else W_std,
                           values["b_std"] if b_std is None else b_std)
        return on_rows(arch, check_in_shape(self.in_shape, n_features))

    # ----------------------------------------------------------------------- the kernel
    def __call__(self, X: Any, Y: Any = None, eval_gradient: bool = False) -> Any:
        """The kernel K(X, Y) (N, M), and with eval_gradient its gradient (N, N, n_free).

        The gradient is d K / d log(p) for each free hyperparameter p, in the order of `self.theta`
        (W_std, then b_std, then scale; an array hyperparameter one column per element); it needs Y = None.
        """
        Xt = as_matrix(X, "X", dtype=torch.float64)[0]
        if Y is X:  # pairwise_kernels(X) passes Y = X: take the symmetric path, with its exact diagonal
            Y = None
        if not eval_gradient:
            Yt = None if Y is None else as_matrix(Y, "Y", dtype=torch.float64)[0]
            if Yt is not None and Yt.shape[1] != Xt.shape[1]:
                raise ValueError(f"X and Y must have the same number of features, got {Xt.shape[1]} and "
                                 f"{Yt.shape[1]}")
            return float(self.scale) * self._arch(Xt.shape[1]).kernel(Xt, Yt, get=self._get).numpy()
        if Y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        return self._with_gradient(Xt)

    def diag(self, X: Any) -> np.ndarray:
        """K(x_i, x_i) for each row of X, shape (N,), in O(N) time and memory."""
        Xt = as_matrix(X, "X", dtype=torch.float64)[0]
        return float(self.scale) * self._arch(Xt.shape[1]).kernel_diag(Xt, get=self._get).numpy()

    def _with_gradient(self, X: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """K(X, X) and d K / d log(p), tile by tile (`gram.fill`), so memory stays bounded: in closed form for a
        fully-connected chain carried through the recursion (`ntkit.sklearn.gradient`), else by autograd."""
        values = self._values()
        free = _free(values, [self._hyperparameter(name, values) for name in ("W_std", "b_std", "scale")])
        free_names = {h.name for h in free}
        chain = fc_chain(self._arch(X.shape[1], values=values))
        if chain is not None:
            return self._chain_gradient(X, chain, values, free_names)
        return self._autograd_gradient(X, values, free, free_names)

    def _autograd_gradient(self, X: torch.Tensor, values: dict[str, Any], free: list[Hyperparameter],
                           free_names: set[str]) -> tuple[np.ndarray, np.ndarray]:
        """K(X, X) and d K / d log(p) by reverse-mode autograd through the kernel maps, tile by tile: any
        architecture."""
        scale = float(values["scale"])
        n = X.shape[0]
        n_columns = sum(h.n_elements for h in free if h.name != "scale") + ("scale" in free_names)
        K = np.empty((n, n))
        K_gradient = np.empty((n, n, n_columns))
        edge = self._arch(X.shape[1]).kernel_tiles(X[:1]).tile if n else 1

        def tile_fn(rows: slice, cols: slice) -> list[torch.Tensor]:
            params, wrt, factors = {}, [], []
            for name in ("W_std", "b_std"):
                value = values[name]
                grad = name in free_names
                tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=grad) for v in np.ravel(value)]
                params[name] = tensors if np.iterable(value) else tensors[0]
                if grad:
                    wrt += tensors
                    factors += [float(v) for v in np.ravel(value)]
            with torch.enable_grad():
                arch = self._arch(X.shape[1], **params)
                block = arch.kernel(X[rows], X[cols], get=self._get)
                tiles = [block.detach(), *(c.clone() for c in _jacobian_columns(block, wrt))]   # writable
                if rows == cols:  # at x = y the pairwise formula loses sqrt(eps) in the angle: use the
                    diagonal = arch.kernel_diag(X[rows], get=self._get)   # exact diagonal, as MLP.kernel does
                    for tile, exact in zip(tiles, [diagonal.detach(), *_jacobian_columns(diagonal, wrt)],
                                           strict=True):
                        tile.diagonal().copy_(exact)
            # chain rule for log-hyperparameters: dK/dlog(p) = p dK/dp; the scale multiplies everything
            out = [scale * tiles[0]] + [scale * p * tile for tile, p in zip(tiles[1:], factors, strict=True)]
            return out + ([scale * tiles[0]] if "scale" in free_names else [])

        outs = [K] + [K_gradient[:, :, index] for index in range(n_columns)]
        tiles = gram.KernelTiles(tile_fn, n, n, (self._get,) * len(outs), True, torch.float64, X.device, edge)
        gram.fill(tiles, outs, desc=f"{self._get} kernel gradient")
        return K, K_gradient


    def _chain_gradient(self, X: torch.Tensor, chain: Any, values: dict[str, Any],
                        free_names: set[str]) -> tuple[np.ndarray, np.ndarray]:
        """K(X, X) and d K / d log(p) of a fully-connected chain, the derivatives carried through the recursion
        (`ntkit.sklearn.gradient`); the gradient is a view (N, N, n_free) of a (n_free, N, N) array."""
        depth = len(chain.scales)
        blocks = {name: (np.eye(depth) if np.iterable(values[name]) else np.ones((1, depth)))
                  if name in free_names else np.zeros((0, depth)) for name in ("W_std", "b_std")}
        W_columns = np.vstack([blocks["W_std"], np.zeros_like(blocks["b_std"])])
        b_columns = np.vstack([np.zeros_like(blocks["W_std"]), blocks["b_std"]])
        K, gradient = kernel_and_gradient(X, chain, self._get, W_columns, b_columns)
        scale = float(values["scale"])
        if scale != 1.0:
            K *= scale
            gradient *= scale
        if "scale" in free_names:     # d K / d log(scale) = K
            gradient = np.concatenate([gradient, K[None]])
        return K, np.moveaxis(gradient, 0, -1)


def _free(values: dict[str, Any], hyperparameters: list[Hyperparameter]) -> list[Hyperparameter]:
    """The hyperparameters that are not fixed, each checked > 0 (they are optimized in log space)."""
    free = [h for h in hyperparameters if not h.fixed]
    for h in free:
        if np.any(np.asarray(values[h.name]) <= 0):
            raise ValueError(f"{h.name} must be > 0 to be optimized in log space, got {values[h.name]!r}; "
                             f"pass {h.name}_bounds='fixed' to keep it at that value")
    return free


def _jacobian_columns(K: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """dK/dp for each scalar p in `params`, each of K's shape, by reverse mode twice.

    g(u) = sum_ij u_ij dK_ij/dp is linear in the cotangent u, so its gradient with respect to u
    is the whole matrix dK/dp: two backward passes per hyperparameter instead of one per entry.
    """
    if not params:
        return []
    u = torch.zeros_like(K, requires_grad=True)
    gs = torch.autograd.grad(K, params, grad_outputs=u, create_graph=True, materialize_grads=True,
                             allow_unused=True)
    columns = []
    for index, g in enumerate(gs):
        if not g.requires_grad:  # K does not depend on this hyperparameter
            columns.append(torch.zeros_like(K))
            continue
        columns.append(torch.autograd.grad(g, u, retain_graph=index < len(gs) - 1)[0].detach())
    return columns


class NTK(_ArchKernel):
    """The limiting Neural Tangent Kernel Theta of an architecture (Theorem 1), a scikit-learn kernel.

    For the MLP: Theta^(1) = Sigma^(1), Theta^(l+1) = Theta^(l) SigmaDot^(l+1) + Sigma^(l+1).
    Arguments (depth, activation or arch and in_shape; W_std, b_std, scale and their bounds): see `_ArchKernel`.
    """

    _get = "ntk"


class NNGP(_ArchKernel):
    """The limiting covariance Sigma of an architecture at initialization (Proposition 1), a scikit-learn kernel.

    For the MLP: Sigma^(1) = W_std^2 x.y / n0 + b_std^2, Sigma^(l+1) = W_std^2 E[sigma(f(x)) sigma(f(y))] + b_std^2.
    Arguments (depth, activation or arch and in_shape; W_std, b_std, scale and their bounds): see `_ArchKernel`.
    """

    _get = "nngp"
