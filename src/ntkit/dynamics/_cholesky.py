"""Cholesky factors for the t = inf limit (kernel regression), shared by `LeastSquares` and `InfiniteWidthGP`.

At t = inf the dynamics need only (K + ridge I)^-1: one Cholesky factorization (N^3 / 3), several times
cheaper than the eigendecomposition that finite times need. It is used when K + ridge I is safely positive
definite; otherwise the callers fall back on the spectrum, whose eigenvalues give the exact error (singular)
or warning (ill-conditioned, `spectrum.ILL_CONDITIONED`).
"""

from __future__ import annotations

import torch

from ..solvers.cholesky import condition_estimate, largest_eigenvalue
from ..solvers.cholesky import solve as cholesky_solve
from .spectrum import ILL_CONDITIONED

__all__ = ["cholesky", "cholesky_solve", "condition_lower_bound", "limit_factor"]


def cholesky(A: torch.Tensor) -> torch.Tensor | None:
    """Lower Cholesky factor of a symmetric A, or None when A is singular to working precision
    (a failed factorization, or a pivot L_ii^2 below 10 N eps max(diag A))."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        return None
    floor = 10 * A.shape[0] * torch.finfo(A.dtype).eps * float(A.diagonal().max())
    return None if float(L.diagonal().min()) ** 2 <= floor else L


def condition_lower_bound(A: torch.Tensor, L: torch.Tensor, steps: int = 6) -> float:
    """A lower bound on cond(A) = lambda_max / lambda_min of the positive definite A = L L^T, tight within a
    small factor after a few steps: power iterations for lambda_max, inverse iterations (two triangular solves
    each) for 1 / lambda_min. O(steps N^2)."""
    return condition_estimate(L, largest_eigenvalue(A, steps), steps)


def limit_factor(K: torch.Tensor, ridge: float) -> torch.Tensor | None:
    """Lower Cholesky factor of K + ridge I when it exists and cond(K + ridge I) <= ILL_CONDITIONED, else None."""
    A = K + ridge * torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
    L = cholesky(A)
    return L if L is not None and condition_lower_bound(A, L) <= ILL_CONDITIONED else None
