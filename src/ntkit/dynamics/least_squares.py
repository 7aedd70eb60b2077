"""Least-squares kernel gradient descent in closed form, at any time (Section 5 of the paper).

With K / N = V diag(lambda) V^T (computed once, `spectrum.py`), training outputs y_0 = f_0(X)
and targets y* = f*(X), the paper's dynamics d/dt f_t(x) = -(1/N) K(x, X) (f_t(X) - y*) give

    f_t(X) = y* + V exp(-lambda t) V^T (y_0 - y*)                                  (training points)
    f_t(x) = f_0(x) + K(x, X) V diag((1 - exp(-lambda t)) / (N lambda)) V^T (y* - y_0)   (any point)

and at t = inf kernel regression f_0(x) + K(x, X) K^-1 (y* - y_0). Gradient descent with learning
rate eta for s steps replaces exp(-lambda t) by (1 - eta lambda)^s. The decomposition is computed on the
first finite time; t = inf alone needs only a Cholesky factorization of K (+ ridge I), several times cheaper.

`ridge` >= 0 adds the penalty (ridge / 2N) ||theta - theta_0||^2 to the cost of the linearized
network (weight decay towards the initialization). Its rates become lambda + ridge / N and at
t = inf every point, training points included, gets kernel ridge regression
f_0(x) + K(x, X) (K + ridge I)^-1 (y* - y_0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import gram
from .._checks import as_tensor, check_choice, to_output
from ..solvers import cg
from ..solvers.operator import KernelOperator
from ._cholesky import cholesky_solve, limit_factor
from .iterative import IterativeLeastSquares
from .spectrum import Spectrum, check_gram, check_ridge, gram_spectrum
from .time import integrated_decay, remaining, resolve_schedule

Array = torch.Tensor | np.ndarray


def check_targets(y: Any, n: int, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Targets or outputs on n points, (n,) or (n, k), as an (n, k) tensor."""
    yt, _ = as_tensor(y, name, ndim=(1, 2), dtype=dtype, device=device)
    if yt.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows (one per point), got shape {tuple(yt.shape)}")
    return yt[:, None] if yt.ndim == 1 else yt          # (n, k), also for n = 0


def check_cross_gram(K: Any, n_train: int, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cross Gram K(X*, X) of shape (M, n_train)."""
    Kt, _ = as_tensor(K, name, ndim=2, dtype=dtype, device=device)
    if Kt.shape[1] != n_train:
        raise ValueError(f"{name} must have shape (M, {n_train}) (columns = training points), got {tuple(Kt.shape)}")
    return Kt


def shape_output(values: torch.Tensor, scalar_time: bool, vector_targets: bool) -> torch.Tensor:
    """(T, M, k) -> drop the time axis for a scalar time and the output axis for 1-D targets."""
    if vector_targets:
        values = values[..., 0]
    return values[0] if scalar_time else values


class LeastSquares:
    """The function learned by least-squares kernel gradient descent, at any time.

    Args:
        K_train: (N, N) symmetric PSD Gram K(X, X) (or a `Spectrum` of it, to reuse a decomposition; or, with
            solver="cg", a symmetric `gram.KernelTiles` such as `arch.kernel_tiles(X)`, for matrix-free products).
        y_train: (N,) or (N, k) targets y* = f*(X).
        f0_train: outputs f_0(X) at initialization, same shape as y_train (default 0).
        ridge: >= 0, see the module docstring (0: the paper's dynamics).
        dtype: precision of the decomposition and of the results (float64 by default).
        solver: "exact" (Cholesky at t = inf, eigendecomposition at finite t) or "cg": preconditioned conjugate
            gradients at t = inf and Lanczos at finite t (`iterative.py`), never forming a decomposition; its
            accuracy is set by tol (relative residual; None: 1e-10 in float64) and max_iter.

    NumPy input gives NumPy output, torch input gives torch output (on K_train's device).
    Times: a scalar t gives outputs of y_train's shape, an array of T times adds a leading axis.
    """

    def __init__(self, K_train: Array | Spectrum | gram.KernelTiles, y_train: Array, *, f0_train: Array | None = None,
                 ridge: float = 0.0, dtype: torch.dtype = torch.float64, solver: str = "exact",
                 tol: float | None = None, max_iter: int = cg.DEFAULT_MAX_ITER):
        self.ridge = check_ridge(ridge)
        self.solver = check_choice(solver, "solver", ("exact", "cg"))
        self._iterative: IterativeLeastSquares | None = None
        if isinstance(K_train, gram.KernelTiles):
            if solver != "cg":
                raise ValueError("K_train given as kernel tiles (matrix-free) needs solver='cg'")
            self._init_targets(K_train, y_train, f0_train, K_train.n, K_train.device, dtype,
                               numpy=not isinstance(y_train, torch.Tensor))
            self._iterative = IterativeLeastSquares(KernelOperator(K_train), self.y_train - self.f0_train,
                                                    self.ridge, tol=tol, max_iter=max_iter)
            return
        if isinstance(K_train, Spectrum):
            self._spectrum: Spectrum | None = K_train
            self._K, n, device = None, K_train.n, K_train.eigenvectors.device
            dtype = K_train.eigenvectors.dtype
        else:
            self._spectrum, (self._K, _) = None, check_gram(K_train, "K_train", dtype=dtype)
            n, device = self._K.shape[0], self._K.device
        numpy = not isinstance(y_train if isinstance(K_train, Spectrum) else K_train, torch.Tensor)
        self._init_targets(K_train, y_train, f0_train, n, device, dtype, numpy)
        self._residual_hat: torch.Tensor | None = None                 # V^T (y* - y_0), with the spectrum
        self._limit: torch.Tensor | bool | None = None                 # t = inf: (K + ridge I)^-1 (y* - y_0)
        if solver == "cg":
            self._iterative = IterativeLeastSquares(KernelOperator(self._K), self.y_train - self.f0_train,
                                                    self.ridge, tol=tol, max_iter=max_iter)

    def _init_targets(self, K_train: Any, y_train: Array, f0_train: Array | None, n: int, device: torch.device,
                      dtype: torch.dtype, numpy: bool) -> None:
        self._numpy = numpy
        self._vector = np.ndim(y_train) == 1 if not isinstance(y_train, torch.Tensor) else y_train.ndim == 1
        self.y_train = check_targets(y_train, n, "y_train", dtype, device)
        self.f0_train = torch.zeros_like(self.y_train) if f0_train is None else \
            check_targets(f0_train, n, "f0_train", dtype, device)
        if self.f0_train.shape != self.y_train.shape:
            raise ValueError(f"f0_train must have the shape of y_train {tuple(self.y_train.shape)}, "
                             f"got {tuple(self.f0_train.shape)}")

    @property
    def spectrum(self) -> Spectrum:
        """K / N = V diag(lambda) V^T, computed on first use (a finite time) and kept."""
        if self._spectrum is None:
            self._spectrum = gram_spectrum(self._K, "K_train", dtype=self._K.dtype, checked=True)
        if self._residual_hat is None:
            self._residual_hat = self._spectrum.eigenvectors.T @ (self.y_train - self.f0_train)   # (N, k)
        return self._spectrum

    def _limit_weights(self, times: np.ndarray, steps: Any) -> torch.Tensor | None:
        """(K + ridge I)^-1 (y* - y_0) from a Cholesky factor when every time is t = inf and K was given as a
        well-conditioned Gram; None otherwise (the spectrum then decides, with its exact errors and warnings)."""
        if steps is not None or self._K is None or not np.isinf(times).all():
            return None
        if self._limit is None:
            L = limit_factor(self._K, self.ridge)
            self._limit = False if L is None else cholesky_solve(L, self.y_train - self.f0_train)
        return None if self._limit is False else self._limit

    @property
    def eigenvalues(self) -> torch.Tensor:
        """lambda_i of K / N, descending (N,)."""
        return self.spectrum.eigenvalues

    def _rates(self, times: np.ndarray) -> np.ndarray:
        if np.isinf(times).any():
            self.spectrum.check_invertible(self.ridge)
        return self.spectrum.rates(self.ridge).cpu().numpy()

    def train_outputs(self, t: Any = None, *, steps: Any = None, lr: float | None = None) -> Array:
        """f_t(X) on the training points: (N[, k]) for a scalar time, (T, N[, k]) for T times.

        Pass t (continuous time, np.inf allowed) or steps= and lr= (gradient descent, t = lr * steps).
        """
        times, s, lr_value, scalar = resolve_schedule(t, steps, lr)
        if self._iterative is not None:
            out = self.f0_train[None] + self._iterative.solve(times, s, lr_value)[1]
            return to_output(shape_output(out, scalar, self._vector), self._numpy)
        alpha = self._limit_weights(times, s)
        if alpha is not None:                  # f_inf(X) = y_0 + K (K + ridge I)^-1 (y* - y_0), at each time
            out = (self.f0_train + self._K @ alpha)[None].repeat(len(times), 1, 1)
            return to_output(shape_output(out, scalar, self._vector), self._numpy)
        rates = self._rates(times)
        V = self.spectrum.eigenvectors
        if self.ridge == 0.0:      # the learned fraction 1 - exp(-lambda t) along each eigenvector
            learned = 1.0 - remaining(rates, times, s, lr_value)
        else:                      # lambda (1 - exp(-r t)) / r with r = lambda + ridge / N
            learned = self.spectrum.eigenvalues.cpu().numpy()[None, :] * integrated_decay(rates, times, s, lr_value)
        coef = torch.as_tensor(learned, dtype=V.dtype, device=V.device)             # (T, N)
        moved = torch.einsum("nj,tjk->tnk", V, coef[:, :, None] * self._residual_hat[None])
        out = self.f0_train[None] + moved
        return to_output(shape_output(out, scalar, self._vector), self._numpy)

    def predict(self, K_test_train: Array, t: Any = None, *, f0_test: Array | None = None, steps: Any = None,
                lr: float | None = None) -> Array:
        """f_t(x) on new points from their cross Gram K(X*, X) (M, N): (M[, k]) or (T, M[, k]).

        f0_test: f_0(X*) (M[, k]), default 0 (the mean of a network at initialization).
        With solver="cg", K_test_train may also be a `gram.KernelTiles` of K(X*, X) (streamed, never stored).
        """
        times, s, lr_value, scalar = resolve_schedule(t, steps, lr)
        n, dtype, device = self.y_train.shape[0], self.y_train.dtype, self.y_train.device
        numpy = self._numpy or not isinstance(K_test_train, (torch.Tensor, gram.KernelTiles))  # NumPy in, NumPy out
        if isinstance(K_test_train, gram.KernelTiles):
            if self._iterative is None:
                raise ValueError("K_test_train given as kernel tiles needs solver='cg'")
            if K_test_train.m != n:
                raise ValueError(f"K_test_train must have {n} columns (training points), got {K_test_train.m}")
            Ks, m = K_test_train, K_test_train.n
        else:
            Ks = check_cross_gram(K_test_train, n, "K_test_train", dtype, device)
            m = Ks.shape[0]
        k = self.y_train.shape[1]
        f0 = torch.zeros(m, k, dtype=dtype, device=device) if f0_test is None else \
            check_targets(f0_test, m, "f0_test", dtype, device)
        if f0.shape[1] != k:
            raise ValueError(f"f0_test must have {k} output columns like y_train, got shape {tuple(f0.shape)}")
        if self._iterative is not None:            # K(X*, X) W_t, W_t from CG (t = inf) and Lanczos (finite t)
            W = self._iterative.solve(times, s, lr_value)[0]                               # (T, N, k)
            flat = W.permute(1, 0, 2).reshape(n, -1)
            KW = gram.matmul(Ks, flat) if isinstance(Ks, gram.KernelTiles) else Ks @ flat
            out = f0[None] + KW.reshape(m, len(times), k).transpose(0, 1)
            return to_output(shape_output(out, scalar, self._vector), numpy)
        alpha = self._limit_weights(times, s)
        if alpha is not None:                  # kernel (ridge) regression, at each time
            out = (f0 + Ks @ alpha)[None].repeat(len(times), 1, 1)
            return to_output(shape_output(out, scalar, self._vector), numpy)
        rates = self._rates(times)
        V = self.spectrum.eigenvectors
        phi = torch.as_tensor(integrated_decay(rates, times, s, lr_value) / n, dtype=V.dtype, device=V.device)
        weights = V @ (phi.T[:, :, None] * self._residual_hat[:, None, :]).reshape(n, -1)    # (N, T k)
        out = f0[None] + (Ks @ weights).reshape(m, len(times), k).transpose(0, 1)
        return to_output(shape_output(out, scalar, self._vector), numpy)
