"""Quadratic forms at many times at once, by the low rank of the decays in time.

The variance of f_t (`gaussian.py`) at T times on M test points needs, in the eigenbasis of K / N,

    quad[t, x] = sum_ij D[t, i] P[x, i] S[i, j] P[x, j] D[t, j]      (the term k_x^T A_t Sigma A_t k_x)

with D (T, N) the integrated decays d_i(t) (the diagonal of A_t), P (M, N) = K(X*, X) V and S (N, N) =
V^T Sigma(X, X) V. Time by time this is T M N^2 / 2 multiply-adds at best. But the columns of D are one
smooth function of the eigenvalue, (1 - exp(-lambda t)) / lambda, so on a segment J of close eigenvalues
D has a low numerical rank: D[:, J] = A_J B_J + O(tol) with A_J (T, r_J), B_J (r_J, |J|) from a truncated
SVD. With E_J[x] = B_J diag(P[x, J]) (r_J, |J|) and u_t[x] = D[t] * P[x] (exact),

    quad[t, x] = sum over pairs of segments J <= J' (twice off the diagonal) of A_J[t] . (E_J[x] S[J, J'] u_t[x, J'])

computed from the side of lower rank: per test point sum_pairs min(r_J, r_J') |J| |J'| multiply-adds, plus
the contraction with the T times. For 50 log-spaced times and the NTK of random inputs (N = 3000, ranks 6 to
14 on 6 segments; more, thinner segments do fewer multiply-adds but run slower) that is about 4.6 N^2 in
place of 25 N^2. The SVDs scale every row and column of D to
unit norm, so each entry keeps relative accuracy about tol (500 eps); the result agrees with the time-by-time
computation to about 1e-11 relative (measured: 4e-12 at N = 3000).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..progress import progress as progress_bar

TOLERANCE_EPS = 500      # truncation tolerance of the SVDs, in units of the dtype's eps
MIN_SEGMENT = 128        # smaller segments lose more matrix-product speed than their lower ranks save
# A product with inner dimension |J| runs at about 1 / (1 + GEMM_OVERHEAD / |J|) of full speed (fitted on the
# 2-core CPU: 21 GFMA/s at |J| = 188, 31 at 750, 36 for large products)
GEMM_OVERHEAD = 140
CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 2**30}   # working memory per block of test points, by device


@dataclass(frozen=True)
class Segment:
    """D[:, start:stop] ~= A @ B with A (T, r) and B (r, stop - start)."""

    start: int
    stop: int
    A: torch.Tensor
    B: torch.Tensor

    @property
    def rank(self) -> int:
        return self.B.shape[0]


def factor_segment(D: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, start: int, stop: int,
                   tol: float) -> Segment:
    """Truncated SVD of D[:, start:stop] with each row and each column scaled to unit norm (so that every
    entry keeps relative accuracy about tol, whatever its size): singular values at most tol are dropped."""
    c = cols[start:stop]
    U, s, Wt = torch.linalg.svd(D[:, start:stop] / rows[:, None] / c, full_matrices=False)
    r = int((s > tol).sum())
    return Segment(start, stop, rows[:, None] * U[:, :r] * s[:r], (Wt[:r] * c).contiguous())


def _unit_scale(norms: torch.Tensor) -> torch.Tensor:
    return torch.where(norms > 0, norms, torch.ones_like(norms))     # all-zero rows (t = 0) stay zero


@dataclass(frozen=True)
class Plan:
    """Segments of D and, for each, the columns of the pairs it computes (those where it has the lower rank)."""

    segments: list[Segment]
    columns: list[torch.Tensor]          # int64 column indices, sorted

    def _work(self, n_times: int) -> list[tuple[int, int]]:
        """(multiply-adds per test point, inner dimension |J|) of each segment's products."""
        pairs = zip(self.segments, self.columns, strict=True)
        return [(s.rank * len(c) * (s.stop - s.start + n_times), s.stop - s.start) for s, c in pairs]

    def multiply_adds(self, n_times: int) -> int:
        """Multiply-adds per test point."""
        return sum(work for work, _ in self._work(n_times))

    def cost(self, n_times: int) -> float:
        """`multiply_adds` weighted by the slowdown of products with a small inner dimension |J|."""
        return sum(work * (1 + GEMM_OVERHEAD / width) for work, width in self._work(n_times))


def plan_segments(segments: list[Segment]) -> Plan:
    """Assign each pair of segments to its side of lower rank (ties: the later segment)."""
    owned: list[list[int]] = [[] for _ in segments]
    for i, si in enumerate(segments):
        for j in range(i, len(segments)):
            owner = i if si.rank < segments[j].rank else j
            owned[owner].append(j if owner == i else i)
    columns = [torch.cat([torch.arange(segments[j].start, segments[j].stop) for j in sorted(others)])
               for others in owned]
    return Plan(segments, columns)


def segment_decays(D: torch.Tensor, tol: float | None = None) -> Plan:
    """Factor D (T, N) on contiguous segments of columns, choosing the number of (equal) segments that
    minimizes the work of `time_quadratic_forms`."""
    T, n = D.shape
    tol = TOLERANCE_EPS * torch.finfo(D.dtype).eps if tol is None else tol
    rows = _unit_scale(torch.linalg.vector_norm(D, dim=1))
    cols = _unit_scale(torch.linalg.vector_norm(D / rows[:, None], dim=0))
    best = None
    for count in (1, 2, 4, 6, 8, 12, 16):
        if count > 1 and n // count < MIN_SEGMENT:
            break
        edges = [round(i * n / count) for i in range(count + 1)]
        bounds = zip(edges[:-1], edges[1:], strict=True)
        plan = plan_segments([factor_segment(D, rows, cols, a, b, tol) for a, b in bounds])
        if best is None or plan.cost(T) < best.cost(T):
            best = plan
    return best


def time_quadratic_forms(P: torch.Tensor, S: torch.Tensor, D: torch.Tensor, plan: Plan | None = None, *,
                         progress: bool | None = None) -> torch.Tensor:
    """quad[t, x] = sum_ij D[t, i] P[x, i] S[i, j] P[x, j] D[t, j] for P (M, N), a symmetric S (N, N) and
    D (T, N): (T, M), in P's dtype. `plan` defaults to `segment_decays(D)`."""
    plan = segment_decays(D) if plan is None else plan
    m, device = P.shape[0], P.device
    out = torch.zeros(D.shape[0], m, dtype=P.dtype, device=device)
    work = []
    for s, idx in zip(plan.segments, plan.columns, strict=True):
        if s.rank == 0:
            continue
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        cols = slice(lo, hi) if hi - lo == len(idx) else idx.to(device)       # a slice needs no copy
        own = ((idx >= s.start) & (idx < s.stop)).to(device)
        right = (D[:, cols] * torch.where(own, 1.0, 2.0).to(D)).T.contiguous()   # pairs off the diagonal: twice
        work.append((s, S[s.start:s.stop, cols], right, cols, len(idx)))
    widest = max((s.rank * width for s, _, _, _, width in work), default=1)
    budget = CHUNK_BYTES.get(device.type, CHUNK_BYTES["cpu"])
    chunk = max(1, min(m, budget // (2 * P.element_size() * widest)))
    starts = range(0, m, chunk)
    for x0 in progress_bar(starts, total=len(starts), desc="std", enabled=progress):
        Pc = P[x0:x0 + chunk]
        mc = Pc.shape[0]
        for s, S_block, right, cols, _ in work:
            E = (Pc[:, None, s.start:s.stop] * s.B).reshape(mc * s.rank, -1)   # B diag(P[x, J]), (m r, |J|)
            Y = (E @ S_block).view(mc, s.rank, -1).mul_(Pc[:, None, cols])     # (E S[J, C]) diag(P[x, C])
            W = (Y.view(mc * s.rank, -1) @ right).view(mc, s.rank, -1)         # (m, r, T)
            out[:, x0:x0 + mc] += (W * s.A.T).sum(1).T
    return out
