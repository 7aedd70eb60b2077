"""Low-rank approximations K ~ F F^T and the preconditioners built from them.

- Randomly pivoted Cholesky (Chen, Epperly, Tropp and Webber 2023, "Randomly pivoted Cholesky: practical
  approximation of a kernel matrix with few entry evaluations"): pivots drawn with probability proportional to
  the diagonal of the residual K - F F^T, so the approximation adapts to the data (near-duplicates are not picked
  twice, isolated points are). Blocked: b pivots per step, one (N, b) column block of K each.
- Uniform Nystrom: pivots drawn uniformly at random, F = K[:, S] K[S, S]^-1/2.

Either gives the preconditioner P = F F^T + mu I of (K + ridge I), applied by the Woodbury identity
P^-1 R = (R - F (mu I + F^T F)^-1 F^T R) / mu in O(N k) per column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .operator import KernelOperator

PRECONDITIONERS = ("rpcholesky", "nystrom", "none")


@dataclass
class LowRank:
    """K ~ F F^T with F (N, r); `pivots` (r' >= r,) the columns of K it was built from; `residual_trace` the trace of
    K - F F^T (>= 0), the error in nuclear norm."""

    F: torch.Tensor
    pivots: torch.Tensor
    residual_trace: float


def _factor_block(G: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """F_new = G U Lambda^-1/2 from the eigendecomposition G[S] = U Lambda U^T of the pivot block, dropping
    eigenvalues at rounding level (so near-duplicate pivots in one block cost nothing and break nothing)."""
    block = G[S]
    block = (block + block.T) / 2
    values, vectors = torch.linalg.eigh(block)
    keep = values > values.max().clamp(min=0) * len(S) * torch.finfo(G.dtype).eps * 10
    return G @ (vectors[:, keep] / values[keep].sqrt())


def rp_cholesky(op: KernelOperator, rank: int, *, block: int | None = None, generator: torch.Generator | None = None,
                tol: float = 0.0) -> LowRank:
    """Blocked randomly pivoted Cholesky of K: rank <= `rank`, stopping early once the residual trace falls
    below tol * trace(K) (or to rounding level: K then has numerical rank below `rank`). Each step draws `block`
    pivots from the current residual (default rank / 20, between 1 and 64: small enough to stay adaptive)."""
    block = min(64, max(1, rank // 20)) if block is None else block
    d = op.diag().clone()
    total = float(d.sum())
    F = torch.zeros(op.n, 0, dtype=op.dtype, device=op.device)
    pivots = []
    floor = max(tol, op.n * torch.finfo(op.dtype).eps) * total
    while F.shape[1] < rank and float(d.sum()) > floor:
        b = min(block, rank - F.shape[1])
        weights = d.clamp(min=0)
        count = min(b, int((weights > 0).sum()))
        S = torch.multinomial(weights, count, replacement=False, generator=generator)
        G = op.columns(S) - F @ F[S].T                            # columns of the residual K - F F^T
        F_new = _factor_block(G, S)
        F = torch.cat([F, F_new], dim=1)
        d = (d - (F_new * F_new).sum(1)).clamp_(min=0)
        d[S] = 0.0
        pivots.append(S)
    pivots_all = torch.cat(pivots) if pivots else torch.zeros(0, dtype=torch.long, device=op.device)
    return LowRank(F, pivots_all, float(d.sum()))


def uniform_nystrom(op: KernelOperator, rank: int, *, generator: torch.Generator | None = None) -> LowRank:
    """K ~ K[:, S] K[S, S]^-1 K[S, :] with `rank` pivots S drawn uniformly without replacement."""
    S = torch.randperm(op.n, generator=generator, device="cpu")[:min(rank, op.n)].to(op.device)
    F = _factor_block(op.columns(S), S)
    residual = float((op.diag() - (F * F).sum(1)).clamp(min=0).sum())
    return LowRank(F, S, residual)


class Woodbury:
    """P^-1 for P = F F^T + mu I, mu > 0: P^-1 R = (R - F (mu I + F^T F)^-1 F^T R) / mu."""

    def __init__(self, F: torch.Tensor, mu: float):
        if not mu > 0:
            raise ValueError(f"the preconditioner's shift must be > 0, got {mu}")
        self.F, self.mu = F, float(mu)
        inner = F.T @ F
        inner.diagonal().add_(self.mu)
        self.root = torch.linalg.cholesky(inner)

    def __call__(self, R: torch.Tensor) -> torch.Tensor:
        coef = torch.cholesky_solve(self.F.T @ R, self.root)
        return (R - self.F @ coef) / self.mu
