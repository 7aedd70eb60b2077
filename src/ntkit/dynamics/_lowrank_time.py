"""Quadratic forms at many times at once, by the low rank of the decays in time.

The variance of f_t (`gaussian.py`) at T times on M test points needs, in the eigenbasis of K / N,

    quad[t, x] = sum_ij D[t, i] P[x, i] S[i, j] P[x, j] D[t, j]      (the term k_x^T A_t Sigma A_t k_x)

with D (T, N) the integrated decays d_i(t) (the diagonal of A_t), P (M, N) = K(X*, X) V and S (N, N) =
V^T Sigma(X, X) V. Time by time this is T M N^2 / 2 multiply-adds at best. But the columns of D are one
smooth function of the eigenvalue, (1 - exp(-lambda t)) / lambda, so on a segment J of close eigenvalues
D has a low numerical rank: D[:, J] = A_J B_J + O(tol) with A_J (T, r_J), B_J (r_J, |J|) from a truncated
SVD. Then, with E_J[x] = B_J diag(P[x, J]) (r_J, |J|),

    quad[t, x] = sum over pairs of segments J <= J' (twice off the diagonal) of A_J[t] G_JJ'[x] A_J'[t]^T,
    G_JJ'[x] = E_J[x] S[J, J'] E_J'[x]^T   (r_J, r_J'),

where each pair applies S from its side of lower rank: per test point sum_pairs min(r_J, r_J') |J| |J'|
multiply-adds, and the T times cost only r_J r_J' each. For 50 log-spaced times and the NTK of random inputs
(N = 3000, ranks 3 to 9 on 12 segments) that is about 2.1 N^2 in place of 25 N^2.

Accuracy. quad[t, x] = u^T C u with u_i = d_i(t) P[x, i] sqrt(S_ii) and C the correlation matrix of S, so
what must be accurate is d_i(t) weighted by w_i = sqrt(S_ii) * rms_x P[x, i]: each row D[t] * w is scaled to
unit norm before the SVD and singular values below tol are dropped, so every time keeps relative accuracy
about tol in that norm, whatever the sizes of the eigenvalues (a lone large eigenvalue, heavily weighted,
keeps that relative accuracy itself). The default tol (1e-10 in float64) gives quadratic forms within 3e-12
relative of the time-by-time sums and standard deviations within 5e-12 relative of the covariance path
(measured at N = 3000; tol 1e-11 and 1e-12 give 5e-13 and 4e-14 there, for about 20% more modelled cost).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..progress import progress as progress_bar

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}   # truncation of the SVDs, relative per time
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

    @property
    def size(self) -> int:
        return self.stop - self.start


def factor_segment(D: torch.Tensor, weights: torch.Tensor, norms: torch.Tensor, start: int, stop: int,
                   tol: float) -> Segment:
    """Truncated SVD of D[:, start:stop] with columns weighted by `weights` and each row scaled by its norm in
    `norms` (the norms of the weighted rows of all of D): singular values at most tol are dropped. Rows of
    norm 0 (t = 0) and columns of weight 0 are factored as exact zeros."""
    w = weights[start:stop]
    U, s, Wt = torch.linalg.svd(D[:, start:stop] * w / _unit_scale(norms)[:, None], full_matrices=False)
    r = int((s > tol).sum())
    B = torch.where(w > 0, Wt[:r] / torch.where(w > 0, w, 1.0), 0.0)
    return Segment(start, stop, norms[:, None] * U[:, :r] * s[:r], B.contiguous())


def _unit_scale(norms: torch.Tensor) -> torch.Tensor:
    return torch.where(norms > 0, norms, torch.ones_like(norms))     # all-zero rows (t = 0) stay zero


@dataclass(frozen=True)
class Plan:
    """Segments of D and, for each, the segments it pairs with (those where it has the lower rank)."""

    segments: list[Segment]
    owned: list[list[int]]               # indices into segments, increasing

    def columns(self, i: int) -> torch.Tensor:
        """The int64 column indices of the segments that segment i pairs with, sorted."""
        return torch.cat([torch.arange(self.segments[j].start, self.segments[j].stop) for j in self.owned[i]])

    def _work(self, n_times: int) -> list[tuple[int, int, int]]:
        """(multiply-adds per test point of the product with S, of the rest, inner dimension |J|) by segment."""
        work = []
        for s, others in zip(self.segments, self.owned, strict=True):
            width = sum(self.segments[j].size for j in others)
            pairs = sum(self.segments[j].rank * (self.segments[j].size + n_times) for j in others)
            work.append((s.rank * s.size * width, s.rank * (s.size + width + pairs), s.size))
        return work

    def multiply_adds(self, n_times: int) -> int:
        """Multiply-adds per test point."""
        return sum(main + rest for main, rest, _ in self._work(n_times))

    def cost(self, n_times: int) -> float:
        """`multiply_adds` with the products with S weighted by their slowdown at a small inner dimension |J|."""
        return sum(main * (1 + GEMM_OVERHEAD / size) + rest for main, rest, size in self._work(n_times))


def plan_segments(segments: list[Segment]) -> Plan:
    """Assign each pair of segments to its side of lower rank (ties: the later segment)."""
    owned: list[list[int]] = [[] for _ in segments]
    for i, si in enumerate(segments):
        for j in range(i, len(segments)):
            owner = i if si.rank < segments[j].rank else j
            owned[owner].append(j if owner == i else i)
    return Plan(segments, [sorted(others) for others in owned])


def segment_decays(D: torch.Tensor, weights: torch.Tensor, tol: float | None = None) -> Plan:
    """Factor D (T, N) on contiguous segments of columns, choosing the number of (equal) segments that
    minimizes the work of `time_quadratic_forms`. `weights` (N,) >= 0: the columns' importance (see the
    module docstring); tol defaults to TOLERANCE of D's dtype."""
    T, n = D.shape
    tol = TOLERANCE.get(D.dtype, TOLERANCE[torch.float32]) if tol is None else tol
    weights = weights.to(D)
    norms = torch.linalg.vector_norm(D * weights, dim=1)
    best = None
    for count in (1, 2, 4, 6, 8, 12, 16):
        if count > 1 and n // count < MIN_SEGMENT:
            break
        edges = [round(i * n / count) for i in range(count + 1)]
        bounds = zip(edges[:-1], edges[1:], strict=True)
        plan = plan_segments([factor_segment(D, weights, norms, a, b, tol) for a, b in bounds])
        if best is None or plan.cost(T) < best.cost(T):
            best = plan
    return best


def column_weights(P: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """w_i = sqrt(S_ii) * rms_x P[x, i] (N,): how much column i of D weighs in the quadratic forms."""
    return S.diagonal().clamp_min(0.0).sqrt() * torch.linalg.vector_norm(P, dim=0) / max(1, P.shape[0]) ** 0.5


def time_quadratic_forms(P: torch.Tensor, S: torch.Tensor, D: torch.Tensor, plan: Plan | None = None, *,
                         progress: bool | None = None) -> torch.Tensor:
    """quad[t, x] = sum_ij D[t, i] P[x, i] S[i, j] P[x, j] D[t, j] for P (M, N), a symmetric S (N, N) and
    D (T, N): (T, M), in P's dtype. `plan` defaults to `segment_decays(D, column_weights(P, S))`."""
    plan = segment_decays(D, column_weights(P, S)) if plan is None else plan
    m, device, segs = P.shape[0], P.device, plan.segments
    out = torch.zeros(D.shape[0], m, dtype=P.dtype, device=device)
    work = []
    for i, (s, others) in enumerate(zip(segs, plan.owned, strict=True)):
        if s.rank == 0 or not others:
            continue
        idx = plan.columns(i)
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        cols = slice(lo, hi) if hi - lo == len(idx) else idx.to(device)       # a slice needs no copy
        pairs, at = [], 0
        for j in others:        # A_J[t] G A_J'[t]^T = sum_kl (A_J[t, k] A_J'[t, l]) G[k, l]; twice off the diagonal
            o = segs[j]
            times = (s.A[:, :, None] * o.A[:, None, :]).reshape(len(s.A), -1) * (1.0 if j == i else 2.0)
            pairs.append((slice(at, at + o.size), slice(o.start, o.stop), o.B.T.contiguous(), times, o.rank))
            at += o.size
        work.append((s, S[s.start:s.stop, cols], pairs, len(idx)))
    widest = max((s.rank * width for s, _, _, width in work), default=1)
    budget = CHUNK_BYTES.get(device.type, CHUNK_BYTES["cpu"])
    chunk = max(1, min(m, budget // (2 * P.element_size() * widest)))
    # working buffers reused by every block: fresh large tensors would cost a page fault per 4 kB on CPU
    E_buf = P.new_empty(chunk * max((s.rank * s.size for s, _, _, _ in work), default=1))
    Y_buf = P.new_empty(chunk * widest)
    starts = range(0, m, chunk)
    for x0 in progress_bar(starts, total=len(starts), desc="std", enabled=progress):
        Pc = P[x0:x0 + chunk]
        mc = Pc.shape[0]
        for s, S_block, pairs, width in work:
            E = torch.mul(Pc[:, None, s.start:s.stop], s.B, out=E_buf[:mc * s.rank * s.size].view(mc, s.rank, -1))
            Y = torch.mm(E.view(mc * s.rank, -1), S_block, out=Y_buf[:mc * s.rank * width].view(mc * s.rank, -1))
            Y3 = Y.view(mc, s.rank, -1)                                          # E S[J, C], then diag(P[x, C])
            for own, src, Bt, times, rank in pairs:
                Y3[:, :, own].mul_(Pc[:, None, src])
                G = (Y[:, own] @ Bt).view(mc, s.rank * rank)                     # G_JJ'[x], flattened
                out[:, x0:x0 + mc].addmm_(times, G.T)
    return out
