"""solver="cg": preconditioned conjugate gradients at t = inf and Lanczos at finite t (`iterative.py`), on the Gram
in memory when it fits the budget, else matrix-free (kernel tiles recomputed from X on every pass)."""

from __future__ import annotations

import numpy as np
import torch

from .. import gram, memory
from ..solvers.operator import KernelOperator
from .iterative import IterativeLeastSquares
from .large_n import Problem, Solver, register


class ConjugateGradients(Solver):
    name = "cg"
    preference = 2
    finite_times = True

    def __init__(self, problem: Problem):
        super().__init__(problem)
        tiles = problem.arch.kernel_tiles(problem.X_train, get=problem.get)
        self.matrix_free = memory.array_bytes((problem.n, problem.n), problem.X_train.dtype) > problem.budget
        source = tiles if self.matrix_free else gram.evaluate(tiles, show_progress=problem.progress,
                                                             client=problem.client)[0]
        self.dynamics = IterativeLeastSquares(KernelOperator(source, client=problem.client, progress=problem.progress),
                                              problem.y_train, problem.ridge, tol=problem.tol,
                                              max_iter=problem.max_iter, progress=problem.progress)

    @classmethod
    def memory(cls, problem: Problem) -> float:
        """Matrix-free: a few (N, k) vectors and the rank-500 preconditioner, O(N)."""
        return (4 * problem.y_train.shape[1] + 500) * problem.n * problem.itemsize

    @property
    def iterations(self) -> int:
        return self.dynamics.limit.iterations

    @property
    def residual(self) -> float:
        return self.dynamics.limit.residual

    def mean(self, X_test: torch.Tensor, times: np.ndarray) -> torch.Tensor:
        W, _ = self.dynamics.solve(times, None, None)
        return cross_mean(self.problem, X_test, self.problem.X_train, W)


def cross_mean(problem: Problem, X_test: torch.Tensor, centers: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """K(X*, centres) W_t for weights W (T, n_centres, k): (T, M, k), streamed over tiles of the cross kernel."""
    T, n, k = W.shape
    tiles = problem.arch.kernel_tiles(X_test, centers, get=problem.get)
    flat = W.permute(1, 0, 2).reshape(n, T * k)
    kwargs = {} if problem.client is None else {"client": problem.client}
    out = gram.matmul(tiles, flat, show_progress=problem.progress, **kwargs)
    return out.reshape(-1, T, k).permute(1, 0, 2)


register(ConjugateGradients)
