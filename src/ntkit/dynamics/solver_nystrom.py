"""solver="nystrom": Falkon-style Nystrom kernel ridge regression on `n_centers` centres (`solvers.nystrom`), at
t = inf only; with n_centers = N it is exact. Centres uniform, or by randomly pivoted Cholesky."""

from __future__ import annotations

import numpy as np
import torch

from .. import gram, memory
from .._checks import check_choice, check_positive_int
from ..solvers.nystrom import CrossOperator, falkon
from ..solvers.operator import KernelOperator
from ..solvers.preconditioners import rp_cholesky
from .large_n import Problem, Solver, register
from .solver_cg import cross_mean

CENTERS = ("uniform", "rpcholesky")


def default_centers(n: int) -> int:
    """Nystrom centres when not given: min(N, max(1000, 4 sqrt(N))) (4000 at N = 1e6)."""
    return int(min(n, max(1000, 4 * np.sqrt(n))))


def center_count(problem: Problem) -> int:
    """The number of centres M: n_centers (at most N: M = N is exact), or `default_centers`."""
    if problem.n_centers is None:
        return default_centers(problem.n)
    m = check_positive_int(problem.n_centers, "n_centers")
    if m > problem.n:
        raise ValueError(f"n_centers must be <= N = {problem.n} (the number of training points; n_centers = N is "
                         f"already exact), got {m}")
    return m


class Nystrom(Solver):
    name = "nystrom"
    preference = 1
    finite_times = False

    def __init__(self, problem: Problem):
        super().__init__(problem)
        X, budget, m = problem.X_train, problem.budget, center_count(problem)
        check_choice(problem.centers, "centers", CENTERS)
        generator = torch.Generator().manual_seed(problem.seed)
        if problem.centers == "uniform":
            index = torch.randperm(problem.n, generator=generator)[:m].sort().values
        else:
            memory.require(8.0 * problem.n * m, what="randomly pivoted Cholesky centres", n=problem.n,
                           device=X.device, alternative="centers='uniform'", available=int(budget))
            op = KernelOperator(problem.arch.kernel_tiles(X, get=problem.get), client=problem.client,
                                progress=problem.progress)
            index = rp_cholesky(op, m, generator=generator).pivots[:m].sort().values
        self.index = index.to(X.device)
        self.centers = X[self.index]
        memory.require(self.memory(problem), what=f"Nystrom with {m:,} centres", n=problem.n, device=X.device,
                       alternative="fewer n_centers, or solver='cg' (matrix-free, O(N) memory)",
                       available=int(budget))
        cache = problem.n * m * problem.itemsize <= budget / 2
        K_nm = CrossOperator(problem.arch.kernel_tiles(X, self.centers, get=problem.get), cache,
                             client=problem.client, progress=problem.progress)
        K_mm = gram.evaluate(problem.arch.kernel_tiles(self.centers, get=problem.get), show_progress=problem.progress,
                             client=problem.client)[0]
        self.result = falkon(K_nm, K_mm, problem.y_train, problem.ridge, tol=problem.tol, max_iter=problem.max_iter,
                             show_progress=problem.progress)

    @classmethod
    def memory(cls, problem: Problem) -> float:
        """K(C, C), its two factors and working copies: 4 M^2 items."""
        return 4.0 * center_count(problem) ** 2 * problem.itemsize

    @property
    def iterations(self) -> int:
        return self.result.iterations

    @property
    def residual(self) -> float:
        return self.result.residual

    def mean(self, X_test: torch.Tensor, times: np.ndarray) -> torch.Tensor:
        if not np.isinf(times).all():
            raise ValueError("solver='nystrom' gives the trained network at t = inf only; for finite t use "
                             "solver='cg' (Lanczos, matrix-free) or solver='cholesky' (exact, in memory)")
        W = self.result.solution[None].expand(len(times), -1, -1)
        return cross_mean(self.problem, X_test, self.centers, W)


register(Nystrom)
