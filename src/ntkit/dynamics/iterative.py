"""Least-squares dynamics without an eigendecomposition: CG at t = inf, Lanczos at finite t (large N).

With A = K / N + (ridge / N) I (its eigenvalues are the rates r_i = lambda_i + ridge / N of `time.py`) and the
training residual R = y* - y_0 (N, k), the closed forms of `least_squares.py` are matrix functions of A applied to R:

    W_t      = A_t R,   A_t = phi_t(A) / N,   phi_t(r) = (1 - exp(-r t)) / r     f_t(x) = f_0(x) + K(x, X) W_t
    f_t(X)   = y_0 + psi_t(A) R,              psi_t(r) = (r - ridge / N) phi_t(r)

(gradient descent replaces exp(-r t) by (1 - lr r)^s). At t = inf, W = (K + ridge I)^-1 R by preconditioned CG and
f_inf(X) = y_0 + R - ridge W. At finite times one Lanczos basis serves every time and both functions
(`solvers.lanczos`): one product with K per step, matrix-free when K is given by tiles.
"""

from __future__ import annotations

import numpy as np
import torch

from ..solvers import cg
from ..solvers.lanczos import lanczos_apply
from ..solvers.operator import KernelOperator
from .time import integrated_decay

LANCZOS_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


class IterativeLeastSquares:
    """The weights W_t (N, k) and training outputs of least-squares dynamics on K, by CG and Lanczos.

    Args:
        op: the training Gram as a `KernelOperator` (in memory or matrix-free).
        residual: y* - y_0 (N, k).
        ridge, tol, max_iter, preconditioner, rank: as in `solvers.cg.solve` (tol None: the dtype's default).
    """

    def __init__(self, op: KernelOperator, residual: torch.Tensor, ridge: float, *, tol: float | None = None,
                 max_iter: int = cg.DEFAULT_MAX_ITER, preconditioner: str = "rpcholesky", rank: int = cg.DEFAULT_RANK,
                 progress: bool | None = None):
        self.op, self.residual, self.ridge = op, residual, float(ridge)
        self.tol, self.max_iter = cg.check_solver_options(tol, max_iter, op.dtype)
        self.preconditioner, self.rank, self.progress = preconditioner, rank, progress
        self._limit: cg.CGResult | None = None
        self.lanczos_steps: int | None = None
        self.lanczos_change: float | None = None

    @property
    def limit(self) -> cg.CGResult:
        """(K + ridge I)^-1 R by preconditioned CG, computed on first use and kept."""
        if self._limit is None:
            self._limit = cg.solve(self.op, self.residual, self.ridge, tol=self.tol, max_iter=self.max_iter,
                                   preconditioner=self.preconditioner, rank=self.rank, show_progress=self.progress)
        return self._limit

    def solve(self, times: np.ndarray, steps: np.ndarray | None, lr: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_t, f_t(X) - y_0), each (T, N, k), at every time."""
        n, k = self.residual.shape
        W = torch.empty(len(times), n, k, dtype=self.residual.dtype, device=self.residual.device)
        moved = torch.empty_like(W)
        infinite = np.isinf(times) if steps is None else np.zeros(len(times), dtype=bool)
        if infinite.any():
            W[torch.as_tensor(infinite)] = self.limit.solution
            moved[torch.as_tensor(infinite)] = self.residual - self.ridge * self.limit.solution
        finite = ~infinite
        if finite.any():
            shift = self.ridge / n
            chosen_t = times[finite]
            chosen_s = None if steps is None else steps[finite]

            def functions(rates: np.ndarray) -> np.ndarray:
                phi = integrated_decay(rates, chosen_t, chosen_s, lr)                # (T', r)
                return np.concatenate([phi / n, (rates - shift)[None, :] * phi])

            values, self.lanczos_steps, self.lanczos_change = lanczos_apply(
                lambda V: self.op.matmul(V) / n + shift * V, self.residual, functions,
                tol=LANCZOS_TOL.get(self.residual.dtype, 1e-5), max_iter=self.max_iter, show_progress=self.progress)
            index = torch.as_tensor(finite)
            W[index], moved[index] = values[:len(chosen_t)], values[len(chosen_t):]
        return W, moved
