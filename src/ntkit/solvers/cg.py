"""Preconditioned conjugate gradients for (K + ridge I) A = B, every column of B at once.

Each iteration costs one product with K (a pass over the Gram in memory, or over its tiles recomputed from X:
matrix-free, memory O(N d + N k)) and O(N r k) for the preconditioner of rank r. With a randomly pivoted
Cholesky preconditioner of rank r the iterations needed depend on the spectrum of K beyond its r-th eigenvalue
relative to the ridge (Diaz, Epperly, Frangella, Tropp and Webber 2023), typically tens.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..progress import meter
from .operator import KernelOperator
from .preconditioners import PRECONDITIONERS, LowRank, Woodbury, rp_cholesky, uniform_nystrom

DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
DEFAULT_MAX_ITER = 500
DEFAULT_RANK = 500


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at max_iter before reaching its tolerance."""


@dataclass
class CGResult:
    """The solution (N, k), the iterations run, the final relative residual max_j ||b_j - A x_j|| / ||b_j||, and
    whether every column reached the tolerance."""

    solution: torch.Tensor
    iterations: int
    residual: float
    converged: bool


def default_tol(dtype: torch.dtype) -> float:
    return DEFAULT_TOL.get(dtype, 1e-5)


def check_solver_options(tol: float | None, max_iter: int, dtype: torch.dtype) -> tuple[float, int]:
    """Validated (tol, max_iter); tol None -> the dtype's default."""
    from .._checks import check_positive_int, check_real

    max_iter = check_positive_int(max_iter, "max_iter")
    if tol is None:
        return default_tol(dtype), max_iter
    tol = float(check_real(tol, "tol", minimum=0.0, strict=True))
    if tol >= 1:
        raise ValueError(f"tol is a relative residual and must be < 1, got {tol}")
    return tol, max_iter


def conjugate_gradient(matvec, B: torch.Tensor, precondition=None, *, tol: float, max_iter: int,
                       desc: str = "conjugate gradients", show_progress: bool | None = None) -> CGResult:
    """Solve A X = B for a symmetric positive definite A given by `matvec` (V -> A V), with the preconditioner
    `precondition` (R -> P^-1 R, symmetric positive definite) or none. Columns are independent CG runs sharing
    each product with A. Raises ValueError when A is found not positive definite on the first direction
    (p^T A p <= 0); later, the same (rounding once the residual has stalled) ends the iteration where it is.
    Each column is first scaled by a power of two to a largest entry near 1 (exact), so right-hand sides far from 1
    (1e-170 or 1e160 in float64) neither underflow nor overflow in the inner products."""
    B, unscale = unit_columns(B)
    X = torch.zeros_like(B)
    R = B.clone()
    scale = B.norm(dim=0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    residual = R.norm(dim=0) / scale
    active = residual > tol
    Z = precondition(R) if precondition is not None else R
    P = Z.clone()
    rz = (R * Z).sum(0)
    iterations = 0
    bar = meter(max_iter, desc, show_progress)
    for iterations in range(1, max_iter + 1) if bool(active.any()) else ():
        AP = matvec(P)
        curvature = (P * AP).sum(0)
        if bool((curvature[active] <= 0).any()):
            if iterations == 1:      # on the first direction: the operator itself is not positive definite
                raise ValueError("K + ridge I is not positive definite (p^T (K + ridge I) p <= 0 in conjugate "
                                 "gradients): pass ridge > 0")
            iterations -= 1          # later: rounding once the residual has stalled; keep the iterate reached
            break
        alpha = torch.where(active, rz / torch.where(active, curvature, torch.ones_like(curvature)),
                            torch.zeros_like(rz))
        X += alpha * P
        R -= alpha * AP
        residual = R.norm(dim=0) / scale
        active = residual > tol
        bar.set_postfix_str(f"residual {float(residual.max()):.2e}")
        bar.update(1)
        if not bool(active.any()):
            break
        Z = precondition(R) if precondition is not None else R
        rz_new = (R * Z).sum(0)
        beta = torch.where(active, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        rz = rz_new
        P = Z + beta * P
    bar.close()
    final = float(residual.max()) if residual.numel() else 0.0
    if final != final:  # NaN: the operator or the preconditioner produced non-finite values
        raise FloatingPointError(f"conjugate gradients produced a non-finite residual at iteration {iterations}: "
                                 "the kernel or the preconditioner has non-finite values (check the Gram for inf "
                                 "or NaN, or pass a larger ridge)")
    return CGResult(unscale(X), iterations, final, final <= tol)


def unit_columns(B: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(B with each column scaled by 2^-e so that its largest entry lies in [1/2, 1), the map that scales a solution
    back). Powers of two are exact; all-zero columns are left as they are. Linear solves commute with it."""
    top = B.abs().amax(dim=0) if B.numel() else B.new_zeros(B.shape[1:])
    exponent = torch.where(top > 0, torch.frexp(top).exponent, torch.zeros_like(top, dtype=torch.int32))
    bound = int(torch.frexp(torch.tensor(torch.finfo(B.dtype).max, dtype=B.dtype)).exponent) - 3  # 2^bound exists
    exponent = exponent.clamp(-bound, bound)

    def unscale(X: torch.Tensor) -> torch.Tensor:
        return torch.ldexp(X, exponent)

    return torch.ldexp(B, -exponent), unscale


def warn_not_converged(result: CGResult, tol: float, max_iter: int, what: str = "conjugate gradients") -> None:
    if not result.converged:
        cause = f"max_iter = {max_iter}" if result.iterations >= max_iter else "a stalled residual"
        warnings.warn(f"{what} stopped after {result.iterations} iterations ({cause}) with relative residual "
                      f"{result.residual:.3g} > tol = {tol:.3g}. Raise max_iter, raise the preconditioner's rank, "
                      "pass a larger ridge (a singular or ill-conditioned K converges slowly), or loosen tol",
                      ConvergenceWarning, stacklevel=3)


def build_preconditioner(op: KernelOperator, ridge: float, kind: str = "rpcholesky", rank: int = DEFAULT_RANK,
                         seed: int = 0) -> tuple[Woodbury | None, LowRank | None]:
    """P ~ K + ridge I from a rank-`rank` approximation K ~ F F^T (`kind` "rpcholesky" or "nystrom"), shifted by
    mu = the larger of the ridge and the mean residual diagonal trace(K - F F^T) / N (what F misses, on average), and
    at least sqrt(eps) times the mean diagonal. Raises ValueError when ridge = 0
    and the approximation shows K singular (numerical rank below N)."""
    if kind == "none":
        return None, None
    generator = torch.Generator(device=op.device).manual_seed(seed)
    rank = min(rank, op.n)
    low = rp_cholesky(op, rank, generator=generator) if kind == "rpcholesky" else \
        uniform_nystrom(op, rank, generator=generator)
    trace = float(op.diag().sum())
    if ridge == 0 and low.F.shape[1] < op.n and low.residual_trace <= op.n * torch.finfo(op.dtype).eps * trace:
        raise ValueError(f"K is singular: its numerical rank is {low.F.shape[1]} < N = {op.n} (duplicated or "
                         "linearly dependent training points), so (K + ridge I) A = Y has no unique solution with "
                         "ridge = 0. Pass ridge > 0 (e.g. 1e-6 times the mean of diag K)")
    # a shift far below the diagonal makes the Woodbury form cancel catastrophically (R - F (...)^-1 F^T R) / mu:
    # it is kept at least sqrt(eps) times the mean diagonal, where P^-1 stays accurate to about sqrt(eps)
    floor = torch.finfo(op.dtype).eps ** 0.5 * trace / op.n
    mu = max(ridge, low.residual_trace / op.n, floor)
    return Woodbury(low.F, mu), low


def solve(op: KernelOperator, B: torch.Tensor, ridge: float = 0.0, *, tol: float | None = None,
          max_iter: int = DEFAULT_MAX_ITER, preconditioner: str = "rpcholesky", rank: int = DEFAULT_RANK,
          seed: int = 0, show_progress: bool | None = None) -> CGResult:
    """(K + ridge I)^-1 B by preconditioned CG; warns (ConvergenceWarning) when max_iter is reached first."""
    tol, max_iter = check_solver_options(tol, max_iter, op.dtype)
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {', '.join(map(repr, PRECONDITIONERS))}; "
                         f"got {preconditioner!r}")
    P, _ = build_preconditioner(op, ridge, preconditioner, rank, seed)
    result = conjugate_gradient(lambda V: op.matmul(V) + ridge * V, B, P, tol=tol, max_iter=max_iter,
                                show_progress=show_progress)
    warn_not_converged(result, tol, max_iter)
    return result
