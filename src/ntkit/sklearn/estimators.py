"""Estimators that predict with an infinitely wide network trained by gradient descent.

An MLP in the NTK parametrization, initialized at random and trained by gradient descent on the
least-squares cost C(f) = (1/2) ||f - y||^2_{p_in}, becomes in the infinite-width limit a
Gaussian process (Section 5 of the paper, docs/paper.md "Section 5: least squares"):

    f_0 ~ GP(0, Sigma^(L)),    d/dt f_t(x) = -(1/N) Theta^(L)(x, X) (f_t(X) - y),

so at time t its mean is Theta(x, X) Theta(X, X)^{-1} (I - exp(-t Theta(X, X) / N)) y and, as
t -> infinity, kernel regression with the NTK. `NTKRegressor` predicts that mean (and its std or
covariance over the random initialization); `NTKClassifier` regresses centred one-hot targets.
The dynamics themselves are `ntkit.dynamics.InfiniteWidthGP`; this module only adapts them to
scikit-learn's estimator API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..activations import Nonlinearity
from ..dynamics import InfiniteWidthGP
from ..dynamics.spectrum import check_ridge
from ..dynamics.time import check_times
from ..mlp import MLP
from ._arch import check_arch, check_in_shape, on_rows


class _InfiniteWidthNetwork(BaseEstimator):
    """What the two estimators share: the architecture, the training time t and the ridge."""

    def __init__(self, depth: int = 2, activation: str | Callable | Nonlinearity = "relu", beta: float = 0.1,
                 W_std: float = 1.0, t: float = np.inf, ridge: float = 0.0, solver: str = "auto",
                 n_centers: int | None = None, tol: float | None = None, max_iter: int = 500, client: Any = None,
                 arch: Any = None, in_shape: Any = None, centers: str = "uniform"):
        # scikit-learn convention: store the arguments untouched, validate in fit.
        self.depth = depth
        self.activation = activation
        self.beta = beta
        self.W_std = W_std
        self.t = t
        self.ridge = ridge
        self.solver = solver
        self.n_centers = n_centers
        self.tol = tol
        self.max_iter = max_iter
        self.client = client
        self.arch = arch
        self.in_shape = in_shape
        self.centers = centers

    def _check_time(self) -> float:
        times, scalar = check_times(self.t)
        if not scalar:
            raise ValueError(f"t must be a single time (np.inf for training to convergence), got {self.t!r}")
        return float(times[0])

    def _fit_network(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Validate the parameters and set up the trained infinitely wide network on (X, Y)."""
        self._check_time()
        ridge = check_ridge(self.ridge)
        arch = on_rows(self._architecture(), check_in_shape(self.in_shape, X.shape[1]))
        self.network_ = InfiniteWidthGP(arch, X, Y, ridge=ridge, solver=self.solver, n_centers=self.n_centers,
                                        centers=self.centers, tol=self.tol, max_iter=self.max_iter,
                                        client=self.client)
        self.solver_ = self.network_.solver

    def _architecture(self) -> Any:
        """The MLP shorthand, or `arch` (validated) when given."""
        if self.arch is None:
            return MLP(self.depth, self.activation, beta=self.beta, W_std=self.W_std)
        shorthand = {"depth": 2, "activation": "relu", "beta": 0.1, "W_std": 1.0}
        changed = [name for name, default in shorthand.items()
                   if not (isinstance(getattr(self, name), (str, int, float)) and getattr(self, name) == default)]
        if changed:
            raise ValueError(f"{', '.join(changed)} describe the MLP shorthand: with arch= give them in the "
                             "architecture (e.g. arch=nk.MLP(depth=4, beta=0.5))")
        return check_arch(self.arch)

    @property
    def n_iter_(self) -> int:
        """Iterations of the t = inf solve: CG (solver "cg", run on first access) or Falkon's CG ("nystrom");
        1 for the direct "cholesky" solver."""
        check_is_fitted(self, "network_")
        return self.network_.iterations

    def _predict_network(self, X: Any, return_std: bool = False, return_cov: bool = False) -> Any:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.network_.predict(X, t=self._check_time(), return_std=return_std, return_cov=return_cov)


class NTKRegressor(RegressorMixin, _InfiniteWidthNetwork):
    """Regression with an infinitely wide network trained for time t by gradient descent (Section 5).

    Args:
        depth: number of weight layers L >= 1 of the MLP shorthand (L = 1: a linear model).
        activation: its nonlinearity: a name ("relu", "erf", "tanh", ...), a torch callable or an
            `ntkit.Activation`.
        beta: bias scale (the paper: 0.1). W_std: weight scale (the paper: 1).
        t: training time of gradient flow on (1/2) ||f - y||^2_{p_in} (the paper's time: gradient
            descent with learning rate eta for s steps is t = eta * s); np.inf trains to convergence
            (kernel regression with Theta^(L)); a finite t is early stopping. It is read when
            predicting, so `set_params(t=...)` changes it without refitting. `fit` factors Theta(X, X)
            (Cholesky), all that t = inf needs; the first finite t also computes its eigendecomposition
            (several times slower; then reused for every t).
        ridge: >= 0, weight decay towards the initialization, (ridge / 2N) ||theta - theta_0||^2 added to the
            cost (see `ntkit.dynamics.LeastSquares`): at t = inf the mean is kernel ridge regression
            Theta(x, X) (Theta(X, X) + ridge I)^-1 y. 0 (the default) is the paper's plain least squares,
            which needs Theta(X, X) invertible at t = inf (no duplicated training points).
        solver: "auto" (the default: exact while the Gram fits in memory, else Nystrom), "cholesky" (exact; the
            Gram in memory, factored in place; std and covariance), "cg" (preconditioned conjugate gradients at
            t = inf, Lanczos at finite t; matrix-free when the Gram does not fit) or "nystrom" (Falkon-style
            Nystrom regression on `n_centers` centres, t = inf). See `ntkit.dynamics.InfiniteWidthGP`.
        n_centers: Nystrom centres (default min(N, max(1000, 4 sqrt(N)))). tol, max_iter: the iterative
            solvers' relative residual (default 1e-10 in float64) and iteration cap.
        client: a `dask.distributed.Client`: the Grams and the solvers' passes run on its workers
            (`ntkit.gram.distributed`); None computes in this process.
        arch: any ntkit architecture (`nk.MLP`, `nk.Sequential`, `nk.infinite(model)`) in place of the MLP
            shorthand (then depth, activation, beta and W_std stay at their defaults: the scales are the
            architecture's).
        in_shape: the shape of one example, e.g. (1, 8, 8) for 8 x 8 grey images: each row of X (prod(in_shape)
            features) is reshaped to it before the architecture sees it (None: rows as they are).
        centers: how the Nystrom centres are picked: "uniform" (a uniform sample) or "rpcholesky" (randomly pivoted
            Cholesky, better centres for a few more kernel columns); see `ntkit.dynamics.InfiniteWidthGP`.

    Attributes after `fit`: `network_` (the `ntkit.dynamics.InfiniteWidthGP`), `solver_` (the solver used),
    `n_iter_`, `n_features_in_`.

    `predict(X)` returns the mean over initializations of the trained network, shape (M,) for a
    1-D y and (M, k) for k targets; each output of the network is trained independently with the same
    kernel (the limit is Theta (x) Id).
    """

    def fit(self, X: Any, y: Any) -> NTKRegressor:
        """Train on X (N, n0) and targets y (N,) or (N, k). Returns self."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        self._fit_network(X, y)
        return self

    def predict(self, X: Any, return_std: bool = False, return_cov: bool = False) -> Any:
        """Mean of the trained network at time t on X (M, n0), optionally with its spread.

        return_std: also the standard deviation of f_t(x) over the random initialization
            f_0 ~ GP(0, Sigma^(L)), shape (M,) or (M, k).

        return_cov: also the covariance over the M points, shape (M, M) or (M, M, k).

        (The same shapes as `GaussianProcessRegressor.predict`.)
        """
        if return_std and return_cov:
            raise ValueError("At most one of return_std or return_cov can be requested.")
        result = self._predict_network(X, return_std=return_std, return_cov=return_cov)
        if not (return_std or return_cov):
            return result
        mean, spread = result
        if mean.ndim == 2:   # k outputs share one covariance (Theta (x) Id): repeat it per output like GPR
            spread = np.repeat(spread[..., None], mean.shape[1], axis=-1)
        return mean, spread

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class NTKClassifier(ClassifierMixin, _InfiniteWidthNetwork):
    """Classification with an infinitely wide network trained for time t on centred one-hot targets.

    The network has one output per class, trained by least squares (Section 5) on the targets
    e_c - 1/k (1 - 1/k for the true class c, -1/k for the others, k classes; they sum to zero,
    so no output is favoured a priori). The arguments are those of `NTKRegressor`.

    - `decision_function(X)`: the mean outputs (M, k); for two classes the difference
      output_1 - output_0, shape (M,), positive for `classes_[1]`.
    - `predict(X)`: the class of the largest mean output.
    - `predict_proba(X)`: softmax of the mean outputs (M, k). A monotone, consistent score rather
      than a calibrated probability (the outputs live in [-1/k, 1 - 1/k], so it is never sharp);
      wrap in `sklearn.calibration.CalibratedClassifierCV` for calibrated probabilities.

    Attributes after `fit`: `classes_`, `network_`, `n_features_in_`.
    """

    def fit(self, X: Any, y: Any) -> NTKClassifier:
        """Train on X (N, n0) and class labels y (N,). Returns self."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)   # a 1-D y of binary or multiclass labels
        self.classes_, index = np.unique(y, return_inverse=True)
        k = len(self.classes_)
        if k < 2:   # as scikit-learn's classifiers: nothing to separate
            raise ValueError(f"The number of classes has to be greater than one; got {k} class "
                             f"({self.classes_[0]!r}). Pass y with samples of at least two classes")
        targets = np.eye(k)[index] - 1.0 / k   # centred one-hot, rows sum to zero
        self._fit_network(X, targets)
        return self

    def _mean_outputs(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray(self._predict_network(X)).reshape(-1, len(self.classes_))

    def decision_function(self, X: Any) -> np.ndarray:
        """Mean network outputs (M, k), or output_1 - output_0 (M,) for two classes."""
        outputs = self._mean_outputs(X)
        return outputs[:, 1] - outputs[:, 0] if len(self.classes_) == 2 else outputs

    def predict(self, X: Any) -> np.ndarray:
        """The class of the largest mean output, shape (M,)."""
        outputs = self._mean_outputs(X)
        return self.classes_[np.argmax(outputs, axis=1)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Softmax of the mean outputs, shape (M, k), columns in the order of `classes_`."""
        return softmax(self._mean_outputs(X), axis=1)
