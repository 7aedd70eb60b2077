"""Summing the Hermite series of a dual activation, sum_k a_k(q1) b_k(q2) rho^k, for many entries at once.

`HermiteMaps` (`hermite.py`) supplies the coefficients per distinct variance; this module evaluates the sums:

- `banded_series`, for any number of distinct variances (convolutions and pooling give every position its own):
  the truncation is chosen per entry from |rho|. With t_a(K) = max over the variances of sum_{k >= K} a_k^2 /
  E[sigma^(m)(u)^2] (and t_b alike), Cauchy-Schwarz bounds the tail of an entry with |rho| <= r by

      |sum_{k >= K} a_k b_k rho^k| <= r^K sqrt(t_a(K) t_b(K)) sqrt(E[sigma^(m)(u)^2] E[sigma^(n)(v)^2]),      (tail)

  so K(r), the fewest terms that bring r^K sqrt(t_a t_b) below the tolerance, is small for small r. The entries are
  sorted into bands of |rho| (`EDGES`, one pass); every entry is summed by Horner with the K of a lower band
  (coefficients broadcast from their rows and columns, no per-entry gather, in chunks that stay in cache), and the
  few entries above it (near the diagonal of a block, where rho reaches 1) are gathered and summed again with the
  K of their own band. The split that costs least by a count of the terms is taken.
- `tabulated`, for few distinct variances (inputs of one norm): piecewise polynomials in rho per pair of variances.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch

#: upper edges of the bands of |rho|; the last band ends at 1
EDGES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.995, 1.0)
_CHUNK = 1 << 15         # entries per chunk of the broadcast Horner sum (a few arrays of this size stay in cache)
_GATHER_COST = 4.0       # cost of a term of a gathered entry, in terms of a broadcast entry
_FLAT_BLOCK = 1 << 22    # entries x terms per block of the gathered sums
TABLE_DEGREE = 3         # local polynomial degree of the tables in rho
MAX_PANELS = 1 << 15


class Series:
    """One map's series: coefficients `a` (G1, K) and `b` (G2, K) in the sums' dtype and device, and `terms(r)`,
    the number of terms that bounds the tail below the tolerance for |rho| <= r (at most K)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, terms: Callable[[float], int]):
        self.a, self.b, self.terms = a, b, terms


def terms_for_radius(tail_a: np.ndarray, tail_b: np.ndarray, tolerance: float) -> Callable[[float], int]:
    """K(r) of (tail) from the relative tails t_a, t_b (each (K + 1,), non-increasing, t[K] = 0 if the series is
    complete): the fewest K with r^K sqrt(t_a(K) t_b(K)) <= tolerance, else all K."""
    bound = np.sqrt(tail_a * tail_b)
    full = len(bound) - 1
    k = np.arange(len(bound))
    memo: dict[float, int] = {}

    def terms(radius: float) -> int:
        if radius not in memo:
            ok = (radius ** k) * bound <= tolerance if radius > 0 else k >= 1
            memo[radius] = max(1, int(np.argmax(ok))) if ok.any() else full
        return memo[radius]

    return terms


def banded_series(rho: torch.Tensor, index1: torch.Tensor, index2: torch.Tensor,
                  series: Sequence[Series]) -> list[torch.Tensor]:
    """[sum_k s.a[index1, k] s.b[index2, k] rho^k for s in series], each of rho's shape. rho: the correlations, any
    shape; index1, index2: long indices into the rows of a and b, broadcasting against rho."""
    shape = rho.shape
    rho = rho.contiguous()
    if rho.ndim == 0:
        rho, index1, index2 = rho.reshape(1), index1.reshape(1), index2.reshape(1)
    index1 = index1.reshape((1,) * (rho.ndim - index1.ndim) + tuple(index1.shape))
    index2 = index2.reshape((1,) * (rho.ndim - index2.ndim) + tuple(index2.shape))
    edges = torch.tensor(EDGES, dtype=rho.dtype, device=rho.device)
    band = torch.bucketize(rho.abs(), edges)                       # edges[band - 1] < |rho| <= edges[band]
    counts = torch.bincount(band.reshape(-1), minlength=len(EDGES)).tolist()
    need = [sum(s.terms(edge) for s in series) for edge in EDGES]
    above = np.cumsum([counts[b] * need[b] for b in range(len(EDGES))][::-1])[::-1].tolist() + [0]
    cost = [rho.numel() * need[b] + _GATHER_COST * above[b + 1] for b in range(len(EDGES))]
    bulk = int(np.argmin(cost))
    outs = [_broadcast_horner(rho, s.a[:, :s.terms(EDGES[bulk])].T[:, index1],
                              s.b[:, :s.terms(EDGES[bulk])].T[:, index2]) for s in series]
    if bulk < len(EDGES) - 1 and above[bulk + 1]:
        _resum_bands(rho, band, bulk, index1, index2, series, outs)
    return [out.reshape(shape) for out in outs]


def _broadcast_horner(rho: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_k a[k] b[k] rho^k by Horner, a (K, *index1 shape) and b (K, *index2 shape) broadcasting against rho, in
    chunks along rho's first dimension."""
    out = torch.empty_like(rho)
    rows = max(1, _CHUNK // max(1, math.prod(rho.shape[1:])))
    for start in range(0, rho.shape[0], rows):
        part = slice(start, start + rows)
        r = rho[part]
        ak = a[:, part] if a.shape[1] > 1 else a
        bk = b[:, part] if b.shape[1] > 1 else b
        total = torch.mul(ak[-1], bk[-1])
        if total.shape != r.shape:
            total = total.expand(r.shape).contiguous()
        for k in range(a.shape[0] - 2, -1, -1):
            total.mul_(r).addcmul_(ak[k], bk[k])
        out[part] = total
    return out


def _resum_bands(rho, band, bulk, index1, index2, series, outs) -> None:
    """The entries of bands above `bulk` summed again with their own band's terms (gathered), into outs."""
    flat = torch.nonzero(band.reshape(-1) > bulk).squeeze(1)
    flat = flat[torch.argsort(band.reshape(-1)[flat], stable=True)]
    bands = band.reshape(-1)[flat]
    coords = torch.unravel_index(flat, rho.shape)
    r = rho.reshape(-1)[flat]
    i1 = index1.expand(rho.shape)[coords]
    i2 = index2.expand(rho.shape)[coords]
    starts = torch.searchsorted(bands, torch.arange(bulk + 1, len(EDGES) + 1, device=bands.device)).tolist()
    for b, (lo, hi) in enumerate(zip(starts[:-1], starts[1:], strict=True), start=bulk + 1):
        if hi == lo:
            continue
        for s, out in zip(series, outs, strict=True):
            k = s.terms(EDGES[b])
            out.view(-1)[flat[lo:hi]] = _flat_series(r[lo:hi], s.a[i1[lo:hi], :k], s.b, i2[lo:hi], k)


def _flat_series(r: torch.Tensor, rows: torch.Tensor, b: torch.Tensor, i2: torch.Tensor, terms: int) -> torch.Tensor:
    """sum_k rows[e, k] b[i2[e], k] r[e]^k for gathered entries e, in blocks: coefficient products and powers of r
    as (block, K) matrices."""
    out = torch.empty_like(r)
    block = max(1, _FLAT_BLOCK // terms)
    for start in range(0, r.numel(), block):
        part = slice(start, start + block)
        products = rows[part] * b[i2[part], :terms]                                  # (block, K)
        powers = r[part, None].expand(-1, terms - 1).cumprod(1)                     # rho^1 .. rho^(K-1)
        out[part] = products[:, 0] + torch.linalg.vecdot(products[:, 1:], powers)
    return out


# ----------------------------------------------------------------------------- tables (few distinct variances)
def tabulated(rho: torch.Tensor, index1: torch.Tensor, index2: torch.Tensor, pairs2: int,
              tables: Sequence[np.ndarray], pairs: int) -> list[torch.Tensor]:
    """The maps from tables of piecewise polynomials in rho (`table`), one per pair of distinct variances, pairs in
    row-major order of (variances 1, variances 2), `pairs2` the number of distinct variances 2. rho is consumed."""
    panels = max(t.shape[0] for t in tables) // pairs
    u = rho.mul_(panels / 2).add_(panels / 2)                                  # (rho + 1) panels / 2
    j = u.floor().clamp_(0, panels - 1)
    t = u.sub_(j)
    flat = j.long()
    if pairs > 1:
        flat += (index1 * pairs2 + index2) * panels
    out = []
    for table in tables:
        per_pair = table.shape[0] // pairs
        table = table if per_pair == panels else np.concatenate(
            [refine(part, panels) for part in np.split(table, pairs)])
        table = torch.as_tensor(table.T.copy(), dtype=rho.dtype, device=rho.device)   # (d + 1, pairs panels)
        total = torch.take(table[-1], flat)
        for k in range(table.shape[0] - 2, -1, -1):
            total = torch.take(table[k], flat).addcmul_(total, t)
        out.append(total)
    return out


def series_at(coefficients: np.ndarray, rho: np.ndarray) -> np.ndarray:
    total = np.full_like(rho, coefficients[-1])
    for value in coefficients[-2::-1]:
        total = total * rho + value
    return total


@lru_cache(maxsize=1)
def _local_rule(degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chebyshev points in [0, 1], the inverse of their Vandermonde matrix (values -> monomial coefficients in t)
    and check points halfway between them."""
    t = (1 - np.cos(np.pi * (np.arange(degree + 1) + 0.5) / (degree + 1))) / 2
    check = np.concatenate([[0.0], (t[1:] + t[:-1]) / 2, [1.0]])
    return t, np.linalg.inv(np.vander(t, increasing=True)), check


def table(coefficients: np.ndarray, tolerance: float, panels: int = 64) -> np.ndarray:
    """(panels, TABLE_DEGREE + 1) monomial coefficients in t in [0, 1] of the series on each of `panels` equal
    panels of rho in [-1, 1], panels doubled until the table agrees with the series to `tolerance` times its largest
    value (sum |a_k|) at points between the interpolation nodes."""
    t, inverse, check = _local_rule(TABLE_DEGREE)
    scale = np.abs(coefficients).sum() + 1e-300
    while True:
        starts = -1 + 2 * np.arange(panels)[:, None] / panels
        local = inverse @ series_at(coefficients, starts + 2 * t[None, :] / panels).T   # (d + 1, panels)
        result = local.T
        exact = series_at(coefficients, starts + 2 * check[None, :] / panels)
        powers = check[:, None] ** np.arange(TABLE_DEGREE + 1)[None, :]
        error = np.abs(result @ powers.T - exact).max()
        if error <= tolerance * scale or panels >= MAX_PANELS:
            return result
        panels *= 2


def refine(table: np.ndarray, panels: int) -> np.ndarray:
    """A table on `panels` panels from one on fewer (a power of two fewer): each panel's polynomial re-expanded on
    its sub-panels, t = (i + s) / r."""
    ratio = panels // table.shape[0]
    if ratio == 1:
        return table
    degree = table.shape[1] - 1
    out = np.empty((panels, degree + 1))
    for i in range(ratio):
        # p(t) with t = (i + s) / ratio: coefficients in s by the binomial expansion
        shift = np.zeros((degree + 1, degree + 1))
        for k in range(degree + 1):
            for j in range(k + 1):
                shift[k, j] = math.comb(k, j) * (i / ratio) ** (k - j) * (1 / ratio) ** j
        out[i::ratio] = table @ shift
    return out
