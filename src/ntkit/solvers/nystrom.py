"""Nystrom kernel ridge regression, solved the way Falkon does (Rudi, Carratino and Rosasco 2017; Meanti et al. 2020).

With M centres C (uniform, or chosen by randomly pivoted Cholesky) the predictor is f(x) = K(x, C) alpha, and alpha
minimizes ||K_nm alpha - Y||^2 + ridge alpha^T K_mm alpha (K_nm = K(X, C), K_mm = K(C, C)), i.e.

    H alpha = K_nm^T Y,    H = K_nm^T K_nm + ridge K_mm.

With C = X (M = N) this is K (K + ridge I) alpha = K Y: exact kernel ridge regression. CG runs on B^T H B with
Falkon's preconditioner B B^T = ((N / M) K_mm^2 + ridge K_mm)^-1 (uniform centres make K_nm^T K_nm ~ (N / M) K_mm^2):
with T^T T = K_mm and A^T A = T T^T / M + (ridge / N) I (both upper Cholesky factors), B = T^-1 A^-1 / sqrt(N).
Each iteration costs one pass K_nm^T (K_nm v): 2 N M k from a cached K_nm (N M numbers), or the kernel tiles
recomputed when K_nm does not fit the memory budget (memory O(N d + M^2)).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import gram
from .cg import CGResult, conjugate_gradient, unit_columns, warn_not_converged


class FalkonPreconditioner:
    """B = T^-1 A^-1 / sqrt(N) for the centres' Gram K_mm (M, M) (see the module docstring).

    When K_mm is numerically singular (centres whose Gram has lower rank, such as 1-D inputs without bias) the
    Cholesky factor does not exist; then K_mm = U diag(lambda) U^T is restricted to its r eigenvalues above rounding,
    which loses nothing: K(x, C) v = 0 for every x when K_mm v = 0. There T = diag(lambda)^1/2 U^T (r, M),
    A = diag(lambda / M + ridge / N)^1/2 and B = U diag(lambda)^-1/2 A^-1 / sqrt(N) maps R^r to R^M.
    """

    def __init__(self, K_mm: torch.Tensor, ridge: float, n: int):
        m = K_mm.shape[0]
        self.scale = 1.0 / math.sqrt(n)
        scale = float(K_mm.diagonal().mean())
        if not scale > 0:
            raise ValueError("the Nystrom centres' Gram K(C, C) is zero: the centres carry no signal (all-zero "
                             "inputs without bias?)")
        jitter = m * torch.finfo(K_mm.dtype).eps * scale                    # as Falkon does
        T, info = torch.linalg.cholesky_ex(K_mm + jitter * torch.eye(m, dtype=K_mm.dtype, device=K_mm.device),
                                           upper=True)
        self.basis = None
        # singular but for the jitter (a pivot within a few roundings of it): T^-1 would amplify rounding by the
        # inverse pivot, and CG would stall far above tol; the eigendecomposition below is exact in the range
        if int(info) != 0 or float(T.diagonal().min()) ** 2 <= 100 * jitter:
            values, vectors = torch.linalg.eigh(K_mm)
            keep = values > m * torch.finfo(K_mm.dtype).eps * float(values.max())
            a = torch.sqrt(values[keep] / m + ridge / n)
            self.basis = vectors[:, keep] / (values[keep].sqrt() * a)          # U diag(lambda)^-1/2 A^-1, (M, r)
            return
        inner = T @ T.T / m
        inner.diagonal().add_(ridge / n + jitter / m)
        A = torch.linalg.cholesky(inner, upper=True)                         # A^T A = T T^T / M + ridge / N
        # column-major copies: LAPACK's triangular solves run on them without a conversion copy per call
        self._T, self._Tt, self._A, self._At = (_column_major(X) for X in (T, T.T, A, A.T))

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """B v."""
        if self.basis is not None:
            return self.basis @ v * self.scale
        u = torch.linalg.solve_triangular(self._A, v, upper=True)
        return torch.linalg.solve_triangular(self._T, u, upper=True) * self.scale

    def apply_transpose(self, v: torch.Tensor) -> torch.Tensor:
        """B^T v."""
        if self.basis is not None:
            return self.basis.T @ v * self.scale
        u = torch.linalg.solve_triangular(self._Tt, v, upper=False)
        return torch.linalg.solve_triangular(self._At, u, upper=False) * self.scale


def _column_major(X: torch.Tensor) -> torch.Tensor:
    """X with column-major (Fortran) strides."""
    return X.T.contiguous().T


class CrossOperator:
    """K_nm = K(X, C) (N, M), cached in memory or streamed tile by tile; products K_nm^T (K_nm V) and K_nm^T Y."""

    def __init__(self, tiles: gram.KernelTiles, cache: bool, *, client: Any = None, progress: bool | None = None):
        self.tiles, self.client, self.progress = tiles, client, progress
        self.matrix = gram.evaluate(tiles, show_progress=progress, **self._client())[0] if cache else None

    def normal(self, V: torch.Tensor) -> torch.Tensor:
        """K_nm^T K_nm V, (M, k)."""
        if self.matrix is not None:
            return self.matrix.T @ (self.matrix @ V)
        parts = gram.map_row_blocks(self.tiles, lambda rows, blocks: blocks[0].T @ (blocks[0] @ V),
                                    show_progress=self.progress, **self._client())
        return sum(parts)

    def transpose_times(self, Y: torch.Tensor) -> torch.Tensor:
        """K_nm^T Y for Y (N, k): (M, k)."""
        if self.matrix is not None:
            return self.matrix.T @ Y
        parts = gram.map_row_blocks(self.tiles, lambda rows, blocks: blocks[0].T @ Y[rows],
                                    show_progress=self.progress, **self._client())
        return sum(parts)

    def _client(self) -> dict:
        return {} if self.client is None else {"client": self.client}


def falkon(K_nm: CrossOperator, K_mm: torch.Tensor, Y: torch.Tensor, ridge: float, *, tol: float, max_iter: int,
           show_progress: bool | None = None) -> CGResult:
    """alpha (M, k) of Nystrom kernel ridge regression (module docstring) by CG on the Falkon-preconditioned
    system; the result's residual is that of the preconditioned system."""
    n = Y.shape[0]
    B = FalkonPreconditioner(K_mm, ridge, n)
    Y, unscale = unit_columns(Y)  # targets far from 1 (1e-170, 1e160) neither underflow nor overflow in K_nm^T Y

    def matvec(V: torch.Tensor) -> torch.Tensor:
        BV = B.apply(V)
        return B.apply_transpose(K_nm.normal(BV) + ridge * (K_mm @ BV))

    result = conjugate_gradient(matvec, B.apply_transpose(K_nm.transpose_times(Y)), tol=tol, max_iter=max_iter,
                                desc="Nystrom (Falkon) CG", show_progress=show_progress)
    warn_not_converged(result, tol, max_iter, "Nystrom conjugate gradients")
    result.solution = unscale(B.apply(result.solution))
    return result
