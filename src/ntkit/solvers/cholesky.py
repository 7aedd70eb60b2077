"""The lean exact path: (K + ridge I)^-1 by a Cholesky factorization in the Gram's own storage.

The Gram is computed straight into one (N, N) buffer, the ridge is added to its diagonal in place and LAPACK's
potrf overwrites its lower triangle with the factor L (L L^T = K + ridge I): no second N x N array, so the peak
memory is the Gram's bytes plus O(N k). On a GPU torch's factorization needs one copy (2x the Gram).
"""

from __future__ import annotations

import numpy as np
import torch

from ..memory import format_bytes


def cholesky_in_place(A: torch.Tensor, ridge: float = 0.0) -> bool:
    """Overwrite the lower triangle of the symmetric A (N, N) with L, L L^T = A + ridge I. Returns False when
    A + ridge I is not positive definite to working precision (a failed factorization, or a pivot L_ii^2 below
    10 N eps max(diag A)); A is then destroyed. The upper triangle of A is left as it was (not referenced)."""
    n = A.shape[0]
    A.diagonal().add_(ridge)
    top = float(A.diagonal().max()) if n else 0.0
    if A.device.type == "cpu" and A.is_contiguous():
        from scipy.linalg import lapack

        array = A.numpy().T   # Fortran order view of the same memory; its upper triangle is A's lower triangle
        potrf = lapack.dpotrf if A.dtype == torch.float64 else lapack.spotrf
        factor, info = potrf(array, lower=0, clean=0, overwrite_a=1)
        if info != 0:
            return False
        if not np.shares_memory(factor, array):   # the wrapper copied (not expected for Fortran-order input)
            array[...] = factor
    else:
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) != 0:
            return False
        A.copy_(L)
    floor = 10 * n * torch.finfo(A.dtype).eps * top
    return float(A.diagonal().min()) ** 2 > floor


def solve(L: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """(L L^T)^-1 B with L the lower triangle of the buffer (its upper triangle is ignored), B (N, k)."""
    y = torch.linalg.solve_triangular(L, B, upper=False)
    return torch.linalg.solve_triangular(L.mT, y, upper=True)


def condition_estimate(L: torch.Tensor, top: float, steps: int = 6) -> float:
    """A lower bound on cond(L L^T) given its largest eigenvalue `top` (from power iteration before the factorization):
    1 / lambda_min by inverse iteration (two triangular solves a step) from a fixed random start."""
    generator = torch.Generator(device=L.device).manual_seed(0)
    v = torch.randn(L.shape[0], 1, generator=generator, dtype=L.dtype, device=L.device)
    inverse_bottom = 0.0
    for _ in range(steps):
        v = solve(L, v / v.norm())
        inverse_bottom = float(v.norm())
    return top * inverse_bottom


def largest_eigenvalue(A: torch.Tensor, steps: int = 6) -> float:
    """A lower bound on lambda_max of the symmetric PSD A, tight within a small factor: ||A u|| after power steps."""
    generator = torch.Generator(device=A.device).manual_seed(0)
    u = torch.randn(A.shape[0], 1, generator=generator, dtype=A.dtype, device=A.device)
    top = 0.0
    for _ in range(steps):
        u = A @ (u / u.norm())
        top = float(u.norm())
    return top


def gram_bytes(n: int, dtype: torch.dtype) -> int:
    """Bytes of an (n, n) array of `dtype`."""
    return n * n * torch.empty((), dtype=dtype).element_size()


def describe_need(n: int, dtype: torch.dtype) -> str:
    return f"one {n:,} x {n:,} {str(dtype).removeprefix('torch.')} Gram ({format_bytes(gram_bytes(n, dtype))})"
