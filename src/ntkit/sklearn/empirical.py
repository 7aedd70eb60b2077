"""Estimators that predict with the empirical NTK of a fitted torch model: kernel regression with Theta(theta).

For a model F(x; theta) at its current (trained or pretrained) parameters, the linearized network
F(x; theta) + J(x) (theta' - theta) trained by gradient descent on the least-squares cost from zero outputs
converges to kernel regression with its NTK (the paper, Section 5, with the empirical kernel of Section 4):

    f(x) = Theta(x, X) (Theta(X, X) + ridge I)^-1 y,     Theta = the mean over the model's outputs ("trace").

`EmpiricalNTKRegressor` predicts that; `EmpiricalNTKClassifier` regresses centred one-hot targets and takes the
largest output. The training Gram goes through `ntkit.gram.evaluate` (memory, a resumable zarr store with
`out=`, Dask with `client=`); solver="cg" never forms it (matrix-free conjugate gradients on its tiles).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import gram
from ..dynamics.spectrum import check_ridge
from ..empirical import empirical_kernel_tiles
from ..solvers import cg, cholesky
from ..solvers.operator import KernelOperator
from ._arch import check_in_shape


class _EmpiricalKernelMachine(BaseEstimator):
    """What both estimators share: the model, the ridge, how the Gram is computed and solved."""

    def __init__(self, model: Any = None, ridge: float = 1e-6, in_shape: Any = None, method: str = "auto",
                 solver: str = "cholesky", tile: int | None = None, out: Any = None, client: Any = None):
        self.model = model
        self.ridge = ridge
        self.in_shape = in_shape
        self.method = method
        self.solver = solver
        self.tile = tile
        self.out = out
        self.client = client

    def _inputs(self, X: Any, reset: bool) -> torch.Tensor:
        X = validate_data(self, X, reset=reset, dtype=np.float64)
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"model must be a fitted torch.nn.Module, got {type(self.model).__name__}")
        shape = check_in_shape(self.in_shape, X.shape[1])
        like = next(self.model.parameters())
        X = torch.from_numpy(X).to(dtype=like.dtype, device=like.device)
        return X if shape is None else X.reshape(X.shape[0], *shape)

    def _tiles(self, X: torch.Tensor, Y: torch.Tensor | None = None) -> gram.KernelTiles:
        return empirical_kernel_tiles(self.model, X, Y, mode="trace", method=self.method, tile=self.tile)

    def _fit_targets(self, X: Any, Y: np.ndarray) -> None:
        if self.solver not in ("cholesky", "cg"):
            raise ValueError(f"solver must be 'cholesky' or 'cg', got {self.solver!r}")
        ridge = check_ridge(self.ridge)
        Xt = self._inputs(X, reset=True)
        tiles = self._tiles(Xt)
        B = torch.from_numpy(np.asarray(Y, dtype=np.float64).reshape(Y.shape[0], -1))
        if self.solver == "cg":
            op = KernelOperator(tiles, client=self.client, progress=False)
            scale = float(op.diag().mean())
            self.dual_coef_ = cg.solve(op, B.to(op.dtype), ridge * scale).solution.double()
        else:
            (K,) = gram.evaluate(tiles, self.out, client=self.client, show_progress=False)
            K = torch.as_tensor(np.asarray(K) if not isinstance(K, torch.Tensor) else K).double().clone()
            scale = float(K.diagonal().mean())
            if not cholesky.cholesky_in_place(K, ridge * scale):
                raise ValueError("the empirical NTK Gram plus ridge is not positive definite to working precision "
                                 "(repeated or nearly repeated samples): use a larger ridge")
            self.dual_coef_ = cholesky.solve(K, B)
        self.X_train_ = Xt

    def _outputs(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "dual_coef_")
        Xt = self._inputs(X, reset=False)
        (K,) = gram.evaluate(self._tiles(Xt, self.X_train_), client=self.client, show_progress=False)
        K = torch.as_tensor(np.asarray(K) if not isinstance(K, torch.Tensor) else K).double()
        return (K @ self.dual_coef_).numpy()


class EmpiricalNTKRegressor(RegressorMixin, _EmpiricalKernelMachine):
    """Kernel regression with the empirical NTK (trace over outputs) of a fitted torch model.

    Args:
        model: a torch.nn.Module taking inputs of shape (N,) + in_shape (its current parameters are used; eval mode).
        ridge: relative ridge: ridge * mean(diag Theta) is added to the Gram's diagonal (>= 0).
        in_shape: the sample shape the model takes (e.g. (1, 28, 28)); flat rows of X are reshaped to it.
        method: as for `ntkit.empirical_ntk` ("auto", "structured", "jacobian").
        solver: "cholesky" (the Gram in memory or in the store `out`) or "cg" (matrix-free).
        tile: Gram tile edge. out: where the training Gram goes (a ".zarr" path: resumable). client: Dask.

    `fit(X (N, d), y (N,) or (N, k))`, `predict(X (M, d))` -> (M,) or (M, k).
    """

    def fit(self, X: Any, y: Any) -> EmpiricalNTKRegressor:
        y = np.asarray(y, dtype=np.float64)
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D or 2-D, got shape {y.shape}")
        self._fit_targets(X, y)
        self._vector = y.ndim == 2
        return self

    def predict(self, X: Any) -> np.ndarray:
        out = self._outputs(X)
        return out if self._vector else out[:, 0]


class EmpiricalNTKClassifier(ClassifierMixin, _EmpiricalKernelMachine):
    """Kernel regression of centred one-hot targets e_c - 1/k with the empirical NTK; the largest output wins.

    Arguments as for `EmpiricalNTKRegressor`; `fit(X, y labels)`, `predict(X)` -> labels,
    `decision_function(X)` -> (M, k) outputs.
    """

    def fit(self, X: Any, y: Any) -> EmpiricalNTKClassifier:
        y = np.asarray(y)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        k = len(self.classes_)
        if k < 2:
            raise ValueError(f"The number of classes has to be greater than one; got {k} class")
        self._fit_targets(X, np.eye(k)[codes] - 1.0 / k)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        return self._outputs(X)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[np.argmax(self._outputs(X), axis=1)]
