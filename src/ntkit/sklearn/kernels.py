"""The infinite-width kernels Theta^(L) and Sigma^(L) as scikit-learn kernels.

    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import WhiteKernel
    gp = GaussianProcessRegressor(NTK(depth=4, b_std=0.1) + WhiteKernel()).fit(X, y)

`NTK` is the limiting Neural Tangent Kernel Theta^(L) (Theorem 1) and `NNGP` the limiting
covariance Sigma^(L) of the network function at initialization (Proposition 1) of a
fully-connected network of `depth` weight layers. The architecture (depth, activation) is fixed;
the weight scale `W_std` and the bias scale `b_std` (the paper's beta; the paper has W_std = 1)
are hyperparameters that `GaussianProcessRegressor` can fit by maximizing the marginal
likelihood. As for every scikit-learn kernel, the gradient is with respect to their logarithms;
it is computed by autograd through the kernel recursion of `ntkit.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel

from .. import gram
from .._checks import as_matrix
from ..activations import Activation
from ..mlp import MLP

Bounds = tuple[float, float] | str


class _MLPKernel(Kernel):
    """The kernel `get` ("ntk" or "nngp") of `MLP(depth, activation, W_std=W_std, b_std=b_std)`.

    Args:
        depth: number of weight layers L >= 1 (L = 1: a linear model).
        activation: a name ("relu", "erf", "tanh", ...), a torch callable or an `ntkit.Activation`.
        W_std: weight scale (the paper: 1), a hyperparameter.
        b_std: bias scale, the paper's beta (the paper: 0.1), a hyperparameter.
        W_std_bounds, b_std_bounds: (low, high) bounds for the optimizer, or "fixed".

    Inputs are rows of X (N, n0), converted to float64; outputs are float64 NumPy arrays.
    """

    _get = "ntk"

    def __init__(self, depth: int = 2, activation: str | Callable | Activation = "relu", W_std: float = 1.0,
                 b_std: float = 0.1, W_std_bounds: Bounds = (1e-2, 1e2), b_std_bounds: Bounds = (1e-3, 1e2)):
        # scikit-learn convention: store the arguments untouched, validate when used.
        self.depth = depth
        self.activation = activation
        self.W_std = W_std
        self.b_std = b_std
        self.W_std_bounds = W_std_bounds
        self.b_std_bounds = b_std_bounds

    @classmethod
    def from_mlp(cls, arch: MLP, W_std_bounds: Bounds = (1e-2, 1e2),
                 b_std_bounds: Bounds = (1e-3, 1e2)) -> _MLPKernel:
        """The kernel of an `ntkit.MLP` description (its depth, activation, W_std and b_std)."""
        if not isinstance(arch, MLP):
            raise TypeError(f"arch must be an ntkit.MLP, got {type(arch).__name__}")
        if arch.parametrization != "ntk" and cls._get == "ntk":
            raise ValueError("the NTK of parametrization='standard' is not defined in the limit (Remark 1); "
                             "use an MLP with parametrization='ntk'")
        return cls(depth=arch.depth, activation=arch.activation, W_std=float(arch.W_std),
                   b_std=float(arch.b_std), W_std_bounds=W_std_bounds, b_std_bounds=b_std_bounds)

    @property
    def hyperparameter_W_std(self) -> Hyperparameter:
        return Hyperparameter("W_std", "numeric", self.W_std_bounds)

    @property
    def hyperparameter_b_std(self) -> Hyperparameter:
        return Hyperparameter("b_std", "numeric", self.b_std_bounds)

    def is_stationary(self) -> bool:
        """False: Theta and Sigma depend on the inputs' norms and angle, not only on x - y."""
        return False

    def __repr__(self) -> str:
        activation = self.activation if isinstance(self.activation, str) else getattr(
            self.activation, "name", repr(self.activation))
        return (f"{type(self).__name__}(depth={self.depth}, activation={activation!r}, "
                f"W_std={self.W_std:.3g}, b_std={self.b_std:.3g})")

    def _arch(self, W_std: Any = None, b_std: Any = None) -> MLP:
        return MLP(self.depth, self.activation, W_std=self.W_std if W_std is None else W_std,
                   b_std=self.b_std if b_std is None else b_std)

    def __call__(self, X: Any, Y: Any = None, eval_gradient: bool = False) -> Any:
        """The kernel K(X, Y) (N, M), and with eval_gradient its gradient (N, N, n_free).

        The gradient is d K / d log(p) for each hyperparameter p that is not fixed, in the
        order of `self.theta` (W_std, then b_std); it needs Y = None.
        """
        arch = self._arch()
        Xt = as_matrix(X, "X", dtype=torch.float64)[0]
        if Y is X:  # pairwise_kernels(X) passes Y = X: take the symmetric path, with its exact diagonal
            Y = None
        if not eval_gradient:
            Yt = None if Y is None else as_matrix(Y, "Y", dtype=torch.float64)[0]
            return arch.kernel(Xt, Yt, get=self._get).numpy()
        if Y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        return self._with_gradient(Xt)

    def diag(self, X: Any) -> np.ndarray:
        """K(x_i, x_i) for each row of X, shape (N,), in O(N) time and memory."""
        Xt = as_matrix(X, "X", dtype=torch.float64)[0]
        return self._arch().kernel_diag(Xt, get=self._get).numpy()

    def _with_gradient(self, X: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """K(X, X) and d K / d log(p), tile by tile (`gram.fill`), so memory stays bounded."""
        values = {"W_std": float(self.W_std), "b_std": float(self.b_std)}
        free = [h.name for h in self.hyperparameters if not h.fixed]
        for name in free:
            if values[name] <= 0:
                raise ValueError(f"{name} must be > 0 to be optimized in log space, got {values[name]}; "
                                 f"pass {name}_bounds='fixed' to keep it at that value")
        n = X.shape[0]
        K = np.empty((n, n))
        K_gradient = np.empty((n, n, len(free)))

        def tile_fn(rows: slice, cols: slice) -> list[torch.Tensor]:
            params = {name: torch.tensor(value, dtype=torch.float64, requires_grad=name in free)
                      for name, value in values.items()}
            wrt = [params[name] for name in free]
            with torch.enable_grad():
                arch = self._arch(**params)
                block = arch.kernel(X[rows], X[cols], get=self._get)
                tiles = [block.detach(), *(c.clone() for c in _jacobian_columns(block, wrt))]   # writable
                if rows == cols:  # at x = y the pairwise formula loses sqrt(eps) in the angle: use the
                    diagonal = arch.kernel_diag(X[rows], get=self._get)   # exact diagonal, as MLP.kernel does
                    for tile, exact in zip(tiles, [diagonal.detach(), *_jacobian_columns(diagonal, wrt)],
                                           strict=True):
                        tile.diagonal().copy_(exact)
            # chain rule for log-hyperparameters: dK/dlog(p) = p dK/dp
            return [tiles[0]] + [tile * values[name] for tile, name in zip(tiles[1:], free, strict=True)]

        outs = [K] + [K_gradient[:, :, index] for index in range(len(free))]
        tiles = gram.KernelTiles(tile_fn, n, n, (self._get,) * len(outs), True, torch.float64, X.device,
                                 gram.default_tile(X.device))
        gram.fill(tiles, outs, desc=f"{self._get} kernel gradient")
        return K, K_gradient


def _jacobian_columns(K: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """dK/dp for each scalar p in `params`, each of K's shape, by reverse mode twice.

    g(u) = sum_ij u_ij dK_ij/dp is linear in the cotangent u, so its gradient with respect to u
    is the whole matrix dK/dp: two backward passes per hyperparameter instead of one per entry.
    """
    if not params:
        return []
    u = torch.zeros_like(K, requires_grad=True)
    gs = torch.autograd.grad(K, params, grad_outputs=u, create_graph=True, materialize_grads=True)
    columns = []
    for index, g in enumerate(gs):
        if not g.requires_grad:  # K does not depend on this hyperparameter
            columns.append(torch.zeros_like(K))
            continue
        columns.append(torch.autograd.grad(g, u, retain_graph=index < len(gs) - 1)[0].detach())
    return columns


class NTK(_MLPKernel):
    """The limiting Neural Tangent Kernel Theta^(L) of an MLP (Theorem 1), a scikit-learn kernel.

    Theta^(1) = Sigma^(1), Theta^(l+1) = Theta^(l) SigmaDot^(l+1) + Sigma^(l+1).
    Arguments (depth, activation, W_std, b_std and their bounds): see `_MLPKernel`.
    """

    _get = "ntk"


class NNGP(_MLPKernel):
    """The limiting covariance Sigma^(L) of an MLP at initialization (Proposition 1), a scikit-learn kernel.

    Sigma^(1) = W_std^2 x.y / n0 + b_std^2, Sigma^(l+1) = W_std^2 E[sigma(f(x)) sigma(f(y))] + b_std^2.
    Arguments (depth, activation, W_std, b_std and their bounds): see `_MLPKernel`.
    """

    _get = "nngp"
