"""Trained infinitely wide networks at large N: the solver choice, and the mean by CG/Lanczos or by Nystrom.

`InfiniteWidthGP(..., solver=...)` takes one of
- "cholesky": exact; the Gram in memory, factored in place at t = inf, eigendecomposed at finite t
  (std and covariance supported);
- "cg": exact to the solver's tolerance; preconditioned CG at t = inf, Lanczos at finite t (`iterative.py`),
  on the Gram in memory when it fits the budget, else matrix-free (kernel tiles recomputed from X);
- "nystrom": Falkon-style Nystrom kernel ridge regression on `n_centers` centres, t = inf only
  (`solvers.nystrom`); with n_centers = N it is exact;
- "auto": "cholesky" while its memory (the Gram, 1.25x its bytes plus 1 GB) fits the budget, else "nystrom".
The iterative solvers give the mean; the std and covariance need "cholesky", and say so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import gram, memory
from .._checks import check_choice, check_positive_int, check_real
from ..progress import note
from ..solvers import cg
from ..solvers.nystrom import CrossOperator, falkon
from ..solvers.operator import KernelOperator
from ..solvers.preconditioners import rp_cholesky
from .iterative import IterativeLeastSquares

SOLVERS = ("auto", "cholesky", "cg", "nystrom")
CENTERS = ("uniform", "rpcholesky")
BUDGET_FRACTION = 0.8         # of the memory free on the device, when no budget is given
OVERHEAD = 1e9                # bytes the exact path needs beyond 1.25 x its Gram


def default_centers(n: int) -> int:
    """Nystrom centres when not given: min(N, max(1000, 4 sqrt(N))) (4000 at N = 1e6)."""
    return int(min(n, max(1000, 4 * np.sqrt(n))))


def memory_budget(budget: float | None, device: torch.device) -> float:
    """Bytes the solvers may use: `budget`, or BUDGET_FRACTION of the device's free memory."""
    if budget is None:
        return BUDGET_FRACTION * memory.available_bytes(device)
    return float(check_real(budget, "memory_budget", minimum=0.0, strict=True))


def exact_bytes(n: int, dtype: torch.dtype) -> float:
    """Peak of the exact t = inf path: the Gram, factored in place, plus working memory."""
    return 1.25 * memory.array_bytes((n, n), dtype) + OVERHEAD


def resolve_solver(solver: str, n: int, dtype: torch.dtype, device: torch.device, budget: float,
                   progress: bool | None) -> str:
    """The solver to use: `solver`, or for "auto" the exact one while it fits `budget`, else Nystrom.
    "cholesky" asked for explicitly but too large for the budget raises MemoryError naming the alternatives."""
    check_choice(solver, "solver", SOLVERS)
    need = exact_bytes(n, dtype)
    if solver == "auto":
        chosen = "cholesky" if need <= budget else "nystrom"
        note(f"solver='auto' chose {chosen!r} for N = {n:,} (exact path needs {memory.format_bytes(need)}, "
             f"budget {memory.format_bytes(budget)})", progress)
        return chosen
    if solver == "cholesky":
        memory.require(need, what="the exact solver (solver='cholesky')", n=n, device=device,
                       alternative="solver='nystrom' (Nystrom, O(N M) memory) or solver='cg' (matrix-free, O(N) "
                                   "memory), or float32", available=int(budget))
    return solver


class IterativeGP:
    """The mean of trained infinitely wide networks by CG/Lanczos (solver="cg") or Nystrom (solver="nystrom").

    Args:
        arch: the architecture (anything with `kernel_tiles` and `kernel`), X_train (N, d), y_train (N, k).
        get: the dynamics kernel ("ntk" when all layers train, "nngp" for the last layer).
        solver: "cg" or "nystrom". ridge, tol, max_iter: as in `solvers.cg`. n_centers, centers: Nystrom's.
        budget: bytes the Gram (cg) or K(X, centres) (nystrom) may take in memory; beyond it they are streamed.
    """

    def __init__(self, arch: Any, X_train: torch.Tensor, y_train: torch.Tensor, get: str, solver: str, ridge: float,
                 *, tol: float | None, max_iter: int, n_centers: int | None, centers: str, budget: float,
                 client: Any = None, progress: bool | None = None, seed: int = 0):
        self.arch, self.X_train, self.get, self.solver = arch, X_train, get, solver
        self.client, self.progress = client, progress
        n, dtype = X_train.shape[0], X_train.dtype
        self.tol, self.max_iter = cg.check_solver_options(tol, max_iter, dtype)
        self.matrix_free = False
        if solver == "cg":
            tiles = arch.kernel_tiles(X_train, get=get)
            self.matrix_free = memory.array_bytes((n, n), dtype) > budget
            source = tiles if self.matrix_free else gram.evaluate(tiles, show_progress=progress, client=client)[0]
            self.dynamics = IterativeLeastSquares(KernelOperator(source, client=client, progress=progress), y_train,
                                                  ridge, tol=tol, max_iter=max_iter, progress=progress)
            self.centers = X_train
            return
        m = default_centers(n) if n_centers is None else check_positive_int(n_centers, "n_centers")
        if m > n:
            raise ValueError(f"n_centers must be <= N = {n} (the number of training points), got {m}")
        check_choice(centers, "centers", CENTERS)
        generator = torch.Generator().manual_seed(seed)
        if centers == "uniform":
            index = torch.randperm(n, generator=generator)[:m].sort().values
        else:
            memory.require(8.0 * n * m, what="randomly pivoted Cholesky centres", n=n, device=X_train.device,
                           alternative="centers='uniform'", available=int(budget))
            op = KernelOperator(arch.kernel_tiles(X_train, get=get), client=client, progress=progress)
            index = rp_cholesky(op, m, generator=generator).pivots[:m].sort().values
        self.index = index.to(X_train.device)
        self.centers = X_train[self.index]
        memory.require(4.0 * m * m * X_train.element_size(), what=f"Nystrom with {m:,} centres", n=n,
                       device=X_train.device, alternative="fewer n_centers", available=int(budget))
        cache = n * m * X_train.element_size() <= budget / 2
        self.K_nm = CrossOperator(arch.kernel_tiles(X_train, self.centers, get=get), cache, client=client,
                                  progress=progress)
        K_mm = gram.evaluate(arch.kernel_tiles(self.centers, get=get), show_progress=progress, client=client)[0]
        self.result = falkon(self.K_nm, K_mm, y_train, ridge, tol=self.tol, max_iter=self.max_iter,
                             show_progress=progress)

    @property
    def iterations(self) -> int:
        """CG iterations of the t = inf solve (computed on first use for solver="cg")."""
        return self.dynamics.limit.iterations if self.solver == "cg" else self.result.iterations

    @property
    def residual(self) -> float:
        return self.dynamics.limit.residual if self.solver == "cg" else self.result.residual

    def mean(self, X_test: torch.Tensor, times: np.ndarray) -> torch.Tensor:
        """The mean at each time, (T, M, k): K(X*, centres) W_t, streamed over tiles of the cross kernel."""
        if self.solver == "nystrom":
            if not np.isinf(times).all():
                raise ValueError("solver='nystrom' gives the trained network at t = inf only; for finite t use "
                                 "solver='cg' (Lanczos, matrix-free) or solver='cholesky' (exact, in memory)")
            W = self.result.solution[None].expand(len(times), -1, -1)
        else:
            W, _ = self.dynamics.solve(times, None, None)
        T, n, k = W.shape
        tiles = self.arch.kernel_tiles(X_test, self.centers, get=self.get)
        flat = W.permute(1, 0, 2).reshape(n, T * k)
        kwargs = {} if self.client is None else {"client": self.client}
        out = gram.matmul(tiles, flat, show_progress=self.progress, **kwargs)
        return out.reshape(-1, T, k).permute(1, 0, 2)
