"""The lean exact path: (K + ridge I)^-1 by a Cholesky factorization in the Gram's own storage.

The Gram is computed straight into one (N, N) buffer, the ridge is added to its diagonal in place and a blocked
Cholesky factorization overwrites its lower triangle with the factor L (L L^T = K + ridge I): no second N x N
array, so the peak memory is the Gram's bytes plus one N x 1024 panel, on a CPU or a GPU.
"""

from __future__ import annotations

import torch


def cholesky_in_place(A: torch.Tensor, ridge: float = 0.0, block: int = 1024) -> bool:
    """Overwrite the lower triangle of the symmetric A (N, N) with L, L L^T = A + ridge I. Returns False when
    A + ridge I is not positive definite to working precision (a failed factorization, or a pivot L_ii^2 below
    10 N eps max(diag A)); A is then destroyed. The strict upper triangle is left as it was.

    Right-looking blocked Cholesky over `block` columns at a time: factor the diagonal block, solve the panel below
    it, update the lower triangle of the trailing matrix block column by block column (matrix products written
    straight into A). Working memory is one panel (N x block), on CPU and GPU alike; the flops are LAPACK's N^3 / 3.
    """
    n = A.shape[0]
    A.diagonal().add_(ridge)
    top = float(A.diagonal().max()) if n else 0.0
    for k in range(0, n, block):
        e = min(k + block, n)
        diagonal_block = A[k:e, k:e]
        L11, info = torch.linalg.cholesky_ex(diagonal_block)
        if int(info) != 0:
            return False
        diagonal_block.copy_(L11 + torch.triu(diagonal_block, 1))      # the upper triangle stays as it was
        if e == n:
            break
        panel = A[e:, k:e]
        panel.copy_(torch.linalg.solve_triangular(L11.mT, panel, upper=True, left=False))    # P L11^-T
        for j in range(e, n, block):                                   # A22 -= P P^T, lower block columns
            j2 = min(j + block, n)
            target = A[j:, j:j2]
            torch.addmm(target, panel[j - e:], panel[j - e:j2 - e].mT, beta=1.0, alpha=-1.0, out=target)
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
