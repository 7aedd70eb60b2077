"""Three blocked products that skip the zero or mirrored half of a matrix product.

torch exposes neither BLAS trmm (triangular times full) nor syrk (A^T A); splitting the work into
blocks of `block` rows recovers most of their factor-2 saving with plain matrix products.
"""

from __future__ import annotations

import torch


def default_block(n: int) -> int:
    """About six blocks, at least 256 rows each (smaller products lose more speed than they save)."""
    return max(256, -(-n // 6))


def scaled_upper_product(Rt: torch.Tensor, d: torch.Tensor, B: torch.Tensor, block: int) -> torch.Tensor:
    """Rt diag(d) B for an upper-triangular Rt (N, N), d (N,), B (N, M): (N, M)."""
    n = Rt.shape[0]
    out = torch.empty(n, B.shape[1], dtype=B.dtype, device=B.device)
    for j0 in range(0, n, block):
        j1 = min(j0 + block, n)
        torch.matmul(Rt[j0:j1, j0:] * d[j0:], B[j0:], out=out[j0:j1])
    return out


def add_gram(out: torch.Tensor, U: torch.Tensor, block: int, alpha: float = 1.0,
             W: torch.Tensor | None = None) -> torch.Tensor:
    """out += alpha U W^T for U, W (M, N) (W defaults to U) whose product is symmetric, out (M, M): for each
    block of rows one product with the rows from the block on (the upper block triangle), mirrored below
    the diagonal."""
    W = U if W is None else W
    m = U.shape[0]
    for i0 in range(0, m, block):
        i1 = min(i0 + block, m)
        tile = U[i0:i1] @ W[i0:].T                                  # (i1 - i0, m - i0)
        diagonal = tile[:, : i1 - i0]
        diagonal.add_(diagonal.T.clone()).mul_(0.5)                 # exactly symmetric diagonal block
        out[i0:i1, i0:].add_(tile, alpha=alpha)
        out[i1:, i0:i1].add_(tile[:, i1 - i0:].T, alpha=alpha)
    return out


def congruence(V: torch.Tensor, A: torch.Tensor, block: int) -> torch.Tensor:
    """V^T A V for a symmetric A (N, N) and V (N, K), exactly symmetric (K, K): A V in full, then V^T (A V)
    on the upper block triangle only, mirrored (3/4 of the two full products)."""
    AV = A @ V
    out = torch.zeros(V.shape[1], V.shape[1], dtype=AV.dtype, device=AV.device)
    return add_gram(out, V.T, block, W=AV.T)
