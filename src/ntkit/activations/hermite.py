"""The Gaussian maps of a smooth nonlinearity from its Hermite expansion (the dual activation).

With h_k(z) = He_k(z) / sqrt(k!) the orthonormal Hermite polynomials of the standard normal z, write
sigma^(m)(sqrt(q) z) = sum_k a_k^(m)(q) h_k(z). Mehler's formula gives, for (u, v) ~ N(0, [[q1, c], [c, q2]]) and
the correlation rho = c / sqrt(q1 q2) (Han, Avron, Shoham, Kim and Shin 2022):

    E[sigma^(m)(u) sigma^(n)(v)] = sum_k a_k^(m)(q1) a_k^(n)(q2) rho^k.                      (Mehler)

The coefficients depend on the variances only, so they are computed once per distinct variance: NODES-point
Gauss-Hermite quadrature, a_k = sum_i sqrt(w_i) h_k(z_i) sqrt(w_i) sigma^(m)(sqrt(q) z_i) (`_basis`), with
sigma^(m) by autograd. Parseval bounds the truncation: |sum_{k >= K} a_k b_k rho^k| <= sqrt(T_a(K) T_b(K)),
T_a(K) = sum_{k >= K} a_k^2, so the series is truncated where T_a(K) <= TOLERANCE E[sigma^(m)(u)^2] at every
variance, which bounds a map's error by TOLERANCE sqrt(E[sigma^(m)(u)^2] E[sigma^(n)(v)^2]), and used only where such
a K exists (`HermiteMaps.resolves`); kinks (relu, elu, selu) and
very large variances of steep functions fail it and stay with the 2-D quadrature.

A map is then a function of rho alone for each pair of distinct variances: few pairs (inputs of one norm, as
on the sphere) get a table of piecewise polynomials in rho (`_table`: TABLE_DEGREE on P equal panels, P doubled
until the table agrees with the series to TOLERANCE), evaluated with one gather per coefficient; many pairs, and
small blocks (below SERIES_BELOW entries), sum the truncated series for each pair (Horner). Derivatives come
from Price's theorem, dE/dc = E[sigma^(m+1) sigma^(n+1)] and dE/dq1 = E[sigma^(m+2)(u) sigma^(n)(v)] / 2,
through the same maps (`_Maps`), so the kernels are differentiable to any order in c, q1 and q2, hence in
the inputs, W_std and b_std.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from scipy.special import gammaln

NODES = 2048            # Gauss-Hermite nodes for the coefficients
TERMS = 1024            # coefficients kept (half the nodes: the rest only measure the aliasing)
TOLERANCE = 1e-12       # relative bound on a map's truncation and table error
TABLE_DEGREE = 3        # local polynomial degree of the tables in rho
MAX_TABLES = 16         # pairs of distinct variances up to which maps are tabulated
SERIES_BELOW = 1 << 14  # fewer entries than this take the series directly (cheaper than building a table)
MAX_PANELS = 1 << 15
_DIRECT_ORDER = 3       # derivatives of sigma by autograd up to this order, by shifting coefficients beyond
_SERIES_BLOCK = 1 << 22  # entries x terms per block of the series
_LOOSE = 1e-9           # truncation of the higher derivatives' series (used in derivatives of the maps only)
_MANTISSA_BITS = 42     # variances equal to 2^-42 relative share their coefficients


@lru_cache(maxsize=2)
def _basis(nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, psi, root_w): the Gauss rule of the standard normal (z: (nodes,), root_w = sqrt of the weights, which
    sum to 1) and psi[k, i] = sqrt(w_i) h_k(z_i) for k < nodes (an orthogonal matrix). The Hermite functions
    phi_k = h_k exp(-z^2/4) come from their three-term recurrence in log-scaled form (no underflow far out),
    and the weights from the Christoffel function, w_i = exp(-z_i^2/2) / sum_{k<nodes} phi_k(z_i)^2:
    psi = phi / ||phi||."""
    from scipy.linalg import eigvalsh_tridiagonal

    z = eigvalsh_tridiagonal(np.zeros(nodes), np.sqrt(np.arange(1.0, nodes)))
    log_scale = -z * z / 4                     # phi_k = value * exp(log_scale)
    previous, current = np.zeros_like(z), np.ones_like(z)
    rows = np.empty((nodes, nodes))
    total = np.zeros_like(z)                   # sum phi_k^2 * exp(-2 top), top = largest log |phi_k| so far
    top = np.full_like(z, -np.inf)
    for k in range(nodes):
        magnitude = np.log(np.abs(current) + 1e-300) + log_scale
        new_top = np.maximum(top, magnitude)
        total = total * np.exp(2 * (top - new_top)) + np.exp(2 * (magnitude - new_top))
        top = new_top
        rows[k] = np.sign(current) * np.exp(magnitude)
        if k + 1 < nodes:
            previous, current = current, (z * current - math.sqrt(k) * previous) / math.sqrt(k + 1)
            big = np.abs(current) > 1e100
            if big.any():                      # rescale to keep the recurrence in range
                current, previous = np.where(big, current * 1e-100, current), np.where(big, previous * 1e-100,
                                                                                    previous)
                log_scale = np.where(big, log_scale + 100 * math.log(10), log_scale)
    # ||phi(z_i)|| = exp(top) sqrt(total): divide in log form
    norm_log = top + 0.5 * np.log(total)
    psi = np.sign(rows) * np.exp(np.log(np.abs(rows) + 1e-300) - norm_log)
    psi[np.abs(rows) == 0] = 0.0
    return z, psi, psi[0].copy()


def _derivatives(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, order: int) -> torch.Tensor:
    """sigma^(order)(x) by repeated autograd (float64, detached); zeros once a derivative is constant."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        value = fn(xg)
        for _ in range(order):
            if not value.requires_grad:
                return torch.zeros_like(x)
            (value,) = torch.autograd.grad(value.sum(), xg, create_graph=True)
    return value.detach().to(torch.float64) * torch.ones_like(x)


def _snap(q: torch.Tensor) -> torch.Tensor:
    """Variances rounded to _MANTISSA_BITS (relative change below 3e-13), so that inputs of one norm, which differ
    in the last bits, share one set of coefficients."""
    mantissa, exponent = torch.frexp(q.detach().to(torch.float64).clamp(min=0.0))
    return torch.ldexp(torch.round(mantissa * 2.0**_MANTISSA_BITS) / 2.0**_MANTISSA_BITS, exponent)


class _Coefficients:
    """The Hermite coefficients of sigma^(m)(sqrt(q) z) for a set of distinct variances, with what decides the
    truncation: `values` (G, TERMS), `norms` (G,) = E[sigma^(m)(u)^2] and `tails` (G, TERMS + 1), tails[:, K] the
    sum of the squared coefficients from K to NODES - 1 (those past TERMS show whether the rule resolves sigma)."""

    def __init__(self, fn, variances: np.ndarray, order: int):
        z, psi, root_w = _basis(NODES)
        x = torch.as_tensor(np.sqrt(variances)[:, None] * z[None, :])
        values = _derivatives(fn, x, order).numpy()
        if not np.isfinite(values[:, root_w > 0]).all():
            self.values = None
            return
        weighted = np.where(root_w > 0, values, 0.0) * root_w
        self._set((psi @ weighted.T).T, (weighted * weighted).sum(1))

    def _set(self, every: np.ndarray, norms: np.ndarray) -> None:
        self.every = every                                              # (G, NODES): all coefficients
        self.values = every[:, :TERMS]
        self.norms = norms
        self.tails = np.cumsum((every * every)[:, ::-1], 1)[:, ::-1][:, :TERMS + 1]

    def shifted(self, fn, variances: np.ndarray, steps: int) -> _Coefficients:
        """The coefficients of sigma^(m + steps) from these of sigma^(m) (d/dz h_k = sqrt(k) h_{k-1}):
        a_j^(m+s) = a_{j+s}^(m) sqrt((j+s)! / j!) / q^(s/2); variance 0 by autograd at 0 (one point)."""
        out = _Coefficients.__new__(_Coefficients)
        if self.values is None:
            out.values = None
            return out
        j = np.arange(NODES - steps, dtype=np.float64)
        growth = np.exp(0.5 * (gammaln(j + steps + 1) - gammaln(j + 1)))
        positive = variances > 0
        scale = np.where(positive, np.maximum(variances, 1e-300) ** (-steps / 2), 0.0)
        every = np.zeros_like(self.every)
        every[:, :NODES - steps] = self.every[:, steps:] * growth * scale[:, None]
        if not positive.all():       # sigma^(m)(0 z) is the constant sigma^(m)(0)
            at_zero = float(_derivatives(fn, torch.zeros(1, dtype=torch.float64), _DIRECT_ORDER + steps)[0])
            every[~positive] = 0.0
            every[~positive, 0] = at_zero
        out._set(every, (every * every).sum(1))
        return out

    def terms_for(self, tolerance: float) -> int | None:
        """The fewest terms K with tail(K) <= tolerance E[sigma^(m)(u)^2] at every variance (then the truncation
        error of a map is at most tolerance sqrt(E[sigma^(m)(u)^2] E[sigma^(n)(v)^2])); None if TERMS do not
        suffice (a kink, or a variance too large for the steepness of sigma)."""
        if self.values is None:
            return None
        memo = self.__dict__.setdefault("_terms", {})
        if tolerance not in memo:
            memo[tolerance] = self._count(tolerance)
        return memo[tolerance]

    def _count(self, tolerance: float) -> int | None:
        ok = self.tails <= tolerance * self.norms[:, None] + 1e-300
        if not ok[:, -1].all():
            return None
        return max(1, int(np.argmax(ok.all(0))))


class HermiteMaps:
    """E[sigma^(m)(u) sigma^(n)(v)] for one nonlinearity `fn` from its Hermite expansion (module docstring).
    Coefficients are cached for the most recent sets of variances."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn
        self._cache: dict[tuple, object] = {}

    def __getstate__(self) -> dict:
        """Pickled without the cache (sent to workers as the function alone)."""
        return {"fn": self.fn, "_cache": {}}

    def coefficients(self, variances: np.ndarray, order: int) -> _Coefficients:
        """The coefficients of sigma^(order) at these variances: by autograd up to _DIRECT_ORDER (nested autograd
        grows combinatorially past it), shifted from those beyond; cached."""
        key = (order, variances.tobytes())
        if key not in self._cache:
            if len(self._cache) >= 256:
                self._cache.clear()
            self._cache[key] = (_Coefficients(self.fn, variances, order) if order <= _DIRECT_ORDER else
                                self.coefficients(variances, _DIRECT_ORDER).shifted(self.fn, variances,
                                                                                     order - _DIRECT_ORDER))
        return self._cache[key]

    def resolves(self, q1: torch.Tensor, q2: torch.Tensor, orders: Sequence[int] = (0, 1)) -> bool:
        """Whether the truncated series reaches TOLERANCE for sigma^(m), m in `orders`, at every variance in q1, q2
        (finite, non-negative); otherwise the caller falls back to quadrature."""
        for q in (q1, q2):
            if not bool(torch.isfinite(q).all()) or bool((q < 0).any()):
                return False
            reps = _groups(q)[0]
            if any(self.coefficients(reps, m).terms_for(TOLERANCE) is None for m in orders):
                return False
        return True

    def evaluate(self, c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor,
                 orders: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """[E[sigma^(m)(u) sigma^(n)(v)] for (m, n) in orders], each of the broadcast shape of c, q1, q2, in c's
        dtype; no autograd (`_Maps` supplies the derivatives)."""
        shape = torch.broadcast_shapes(c.shape, q1.shape, q2.shape)
        reps1, index1 = _groups(q1)
        reps2, index2 = _groups(q2)
        rho = _correlation(c, q1, q2, shape)
        if len(reps1) * len(reps2) <= MAX_TABLES and rho.numel() > SERIES_BELOW:
            return self._tabulated(rho, reps1, index1, reps2, index2, orders, shape)
        return [self._series(rho, reps1, index1, reps2, index2, m, n) for m, n in orders]

    def _terms(self, reps1, reps2, m, n) -> tuple[np.ndarray, np.ndarray, int]:
        a, b = self.coefficients(reps1, m), self.coefficients(reps2, n)
        if a.values is None or b.values is None:
            raise ValueError(f"the derivative of order {max(m, n)} of the activation is not finite at the "
                             f"quadrature nodes")
        terms = max(a.terms_for(TOLERANCE) or a.terms_for(_LOOSE) or TERMS,
                    b.terms_for(TOLERANCE) or b.terms_for(_LOOSE) or TERMS)
        return a.values[:, :terms], b.values[:, :terms], terms

    def _series(self, rho, reps1, index1, reps2, index2, m, n) -> torch.Tensor:
        """sum_k a_k(q1) b_k(q2) rho^k for every pair (many distinct variances, or few entries), in blocks of
        entries: the coefficient products and the powers of rho as (block, K) matrices."""
        a, b, terms = self._terms(reps1, reps2, m, n)
        a = torch.as_tensor(a, dtype=rho.dtype, device=rho.device)
        b = torch.as_tensor(b, dtype=rho.dtype, device=rho.device)
        if rho.ndim == 2 and index1.shape == (rho.shape[0], 1) and index2.shape == (1, rho.shape[1]):
            return _series_grid(rho, a[index1[:, 0]], b[index2[0]])
        flat_rho = rho.reshape(-1)
        i1 = index1.expand(rho.shape).reshape(-1)
        i2 = index2.expand(rho.shape).reshape(-1)
        out = torch.empty_like(flat_rho)
        block = max(1, _SERIES_BLOCK // terms)
        for start in range(0, flat_rho.numel(), block):
            part = slice(start, start + block)
            products = a[i1[part]] * b[i2[part]]                                    # (block, K)
            powers = flat_rho[part, None].expand(-1, terms - 1).cumprod(1)           # rho^1 .. rho^(K-1)
            out[part] = products[:, 0] + torch.linalg.vecdot(products[:, 1:], powers)
        return out.reshape(rho.shape)

    def _tabulated(self, rho, reps1, index1, reps2, index2, orders, shape) -> list[torch.Tensor]:
        """The maps from tables of piecewise polynomials in rho, one per pair of distinct variances."""
        tables = [self._tables(reps1, reps2, m, n) for m, n in orders]
        panels = max(t.shape[0] for t in tables) // (len(reps1) * len(reps2))
        u = rho.mul_(panels / 2).add_(panels / 2)                                  # (rho + 1) panels / 2
        j = u.floor().clamp_(0, panels - 1)
        t = u.sub_(j)
        flat = j.long()
        if len(reps1) * len(reps2) > 1:
            flat += (index1 * len(reps2) + index2) * panels
        out = []
        for table in tables:
            per_pair = table.shape[0] // (len(reps1) * len(reps2))
            table = table if per_pair == panels else np.concatenate(
                [_refine(part, panels) for part in np.split(table, len(reps1) * len(reps2))])
            table = torch.as_tensor(table.T.copy(), dtype=rho.dtype, device=rho.device)   # (d + 1, pairs panels)
            total = torch.take(table[-1], flat)
            for k in range(table.shape[0] - 2, -1, -1):
                total = torch.take(table[k], flat).addcmul_(total, t)
            out.append(total)
        return out

    def _tables(self, reps1, reps2, m, n) -> np.ndarray:
        """(pairs * panels, TABLE_DEGREE + 1): the tables of every pair of distinct variances on a common number of
        panels, pairs in row-major order of (reps1, reps2); cached."""
        key = ("table", m, n, reps1.tobytes(), reps2.tobytes())
        if key not in self._cache:
            a, b, _ = self._terms(reps1, reps2, m, n)
            tables = [_table(p) for p in (a[:, None, :] * b[None, :, :]).reshape(-1, a.shape[1])]
            panels = max(t.shape[0] for t in tables)
            self._cache[key] = np.concatenate([_refine(t, panels) for t in tables])
        return self._cache[key]


def _series_grid(rho: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """sum_k rows[i, k] cols[j, k] rho[i, j]^k for a block (N, M) whose variances vary along rows (rows: (N, K))
    and columns (cols: (M, K)), in blocks of rows: no gather of (N M, K) coefficients."""
    terms = rows.shape[1]
    out = torch.empty_like(rho)
    block = max(1, _SERIES_BLOCK // (terms * max(rho.shape[1], 1)))
    for start in range(0, rho.shape[0], block):
        part = slice(start, start + block)
        products = rows[part, None, :] * cols[None, :, :]                             # (block, M, K)
        powers = rho[part, :, None].expand(-1, -1, terms - 1).cumprod(2)               # rho^1 .. rho^(K-1)
        out[part] = products[:, :, 0] + torch.linalg.vecdot(products[:, :, 1:], powers)
    return out


def _groups(q: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """(distinct snapped variances, float64 NumPy (G,); index of each entry of q into them, long, q's shape)."""
    snapped = _snap(q)
    reps, index = torch.unique(snapped.reshape(-1), return_inverse=True)
    return reps.cpu().numpy(), index.reshape(q.shape).to(q.device)


def _correlation(c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, shape) -> torch.Tensor:
    """rho = c / sqrt(q1 q2) clamped to [-1, 1], 0 where a variance is 0, a new tensor of the broadcast shape."""
    tiny = torch.finfo(c.dtype).tiny
    r1 = torch.where(q1 > 0, torch.rsqrt(q1.clamp(min=tiny)), 0.0)
    r2 = torch.where(q2 > 0, torch.rsqrt(q2.clamp(min=tiny)), 0.0)
    rho = (c * r1).mul_(r2)
    return (rho if rho.shape == shape else rho.expand(shape).clone()).clamp_(-1.0, 1.0)


def _series_at(coefficients: np.ndarray, rho: np.ndarray) -> np.ndarray:
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


def _table(coefficients: np.ndarray, panels: int = 64) -> np.ndarray:
    """(panels, TABLE_DEGREE + 1) monomial coefficients in t in [0, 1] of the series on each of `panels` equal
    panels of rho in [-1, 1], panels doubled until the table agrees with the series to TOLERANCE times its largest
    value (sum |a_k|) at points between the interpolation nodes."""
    t, inverse, check = _local_rule(TABLE_DEGREE)
    scale = np.abs(coefficients).sum() + 1e-300
    while True:
        starts = -1 + 2 * np.arange(panels)[:, None] / panels
        local = inverse @ _series_at(coefficients, starts + 2 * t[None, :] / panels).T   # (d + 1, panels)
        table = local.T
        exact = _series_at(coefficients, starts + 2 * check[None, :] / panels)
        powers = check[:, None] ** np.arange(TABLE_DEGREE + 1)[None, :]
        error = np.abs(table @ powers.T - exact).max()
        if error <= TOLERANCE * scale or panels >= MAX_PANELS:
            return table
        panels *= 2


def _refine(table: np.ndarray, panels: int) -> np.ndarray:
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


class _Maps(torch.autograd.Function):
    """E[sigma^(m)(u) sigma^(n)(v)] for several (m, n) with derivatives by Price's theorem (any order)."""

    @staticmethod
    def forward(ctx, c, q1, q2, maps: HermiteMaps, orders: tuple[tuple[int, int], ...]):  # type: ignore[override]
        ctx.save_for_backward(c, q1, q2)
        ctx.maps, ctx.orders = maps, orders
        return tuple(maps.evaluate(c.detach(), q1.detach(), q2.detach(), orders))

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        c, q1, q2 = ctx.saved_tensors
        needs = ctx.needs_input_grad
        wanted: list[tuple[int, int]] = []
        for (m, n), grad in zip(ctx.orders, grads, strict=True):
            if grad is None:
                continue
            wanted += [(m + 1, n + 1)] * needs[0] + [(m + 2, n)] * needs[1] + [(m, n + 2)] * needs[2]
        wanted = list(dict.fromkeys(wanted))
        values = dict(zip(wanted, gaussian_maps(c, q1, q2, ctx.maps, wanted), strict=True)) if wanted else {}
        gc = gq1 = gq2 = None
        for (m, n), grad in zip(ctx.orders, grads, strict=True):
            if grad is None:
                continue
            if needs[0]:
                gc = _add(gc, grad * values[(m + 1, n + 1)])
            if needs[1]:
                gq1 = _add(gq1, 0.5 * grad * values[(m + 2, n)])
            if needs[2]:
                gq2 = _add(gq2, 0.5 * grad * values[(m, n + 2)])
        return (_reduce(gc, c), _reduce(gq1, q1), _reduce(gq2, q2), None, None)


def _add(total, value):
    return value if total is None else total + value


def _reduce(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if grad is None else grad.sum_to_size(like.shape)


def gaussian_maps(c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, maps: HermiteMaps,
                  orders: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """[E[sigma^(m)(u) sigma^(n)(v)] for (m, n) in orders], (u, v) ~ N(0, [[q1, c], [c, q2]]), differentiable to
    any order in c, q1 and q2 (tensors that broadcast; the results have their broadcast shape and c's dtype)."""
    return list(_Maps.apply(c, q1, q2, maps, tuple(orders)))
