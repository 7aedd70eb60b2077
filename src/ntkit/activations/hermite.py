"""The Gaussian maps of a smooth nonlinearity from its Hermite expansion (the dual activation).

With h_k(z) = He_k(z) / sqrt(k!) the orthonormal Hermite polynomials of the standard normal z, write
sigma^(m)(sqrt(q) z) = sum_k a_k^(m)(q) h_k(z). Mehler's formula gives, for (u, v) ~ N(0, [[q1, c], [c, q2]]) and
the correlation rho = c / sqrt(q1 q2) (Han, Avron, Shoham, Kim and Shin 2022):

    E[sigma^(m)(u) sigma^(n)(v)] = sum_k a_k^(m)(q1) a_k^(n)(q2) rho^k.                      (Mehler)

The coefficients depend on the variances only, so they are computed once per distinct variance and kept (a
convolution or pooling gives every position of every example its own variance, and the Gram's tiles share them):
n-point Gauss-Hermite quadrature, a_k = sum_i sqrt(w_i) h_k(z_i) sqrt(w_i) sigma^(m)(sqrt(q) z_i) (`_basis`), with
sigma^(m) by autograd, n the smallest of NODE_LADDER whose upper half of coefficients (which only measures the
aliasing) carries at most TOLERANCE of E[sigma^(m)(u)^2]. Parseval bounds the truncation: |sum_{k >= K} a_k b_k
rho^k| <= |rho|^K sqrt(T_a(K) T_b(K)), T_a(K) = sum_{k >= K} a_k^2, so the series is truncated where this is at most
TOLERANCE sqrt(E[sigma^(m)(u)^2] E[sigma^(n)(v)^2]) at every variance (fewer terms for smaller |rho|:
`hermite_sums.banded_series`), and used only where such a K exists at rho = 1 (`HermiteMaps.resolves`); kinks
(relu, elu, selu) and very large variances of steep functions fail it and stay with the 2-D quadrature.

A map is then a function of rho alone for each pair of distinct variances: few pairs (inputs of one norm, as
on the sphere) get a table of piecewise polynomials in rho (`hermite_sums.table`: TABLE_DEGREE on P equal panels, P
doubled until the table agrees with the series to TOLERANCE), evaluated with one gather per coefficient; many pairs,
and small blocks (below SERIES_BELOW entries), sum the truncated series (Horner, `hermite_sums.banded_series`).
Derivatives come from Price's theorem, dE/dc = E[sigma^(m+1) sigma^(n+1)] and dE/dq1 = E[sigma^(m+2)(u)
sigma^(n)(v)] / 2, through the same maps (`hermite_autograd`), so the kernels are differentiable to any order in c,
q1 and q2, hence in the inputs, W_std and b_std.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from scipy.special import gammaln

from .hermite_sums import Series, banded_series, tabulated, terms_for_radius
from .hermite_sums import table as _table

NODE_LADDER = (128, 256, 512, 1024, 2048)   # Gauss-Hermite nodes tried for the coefficients of a variance
TOLERANCE = 1e-12       # relative bound on a map's truncation and table error
MAX_TABLES = 16         # pairs of distinct variances up to which maps are tabulated
SERIES_BELOW = 1 << 14  # fewer entries than this take the series directly (cheaper than building a table)
_DIRECT_ORDER = 3       # derivatives of sigma by autograd up to this order, by shifting coefficients beyond
_LOOSE = 1e-9           # truncation of the higher derivatives' series (used in derivatives of the maps only)
_MANTISSA_BITS = 42     # variances equal to 2^-42 relative share their coefficients
_MAX_ROWS = 1 << 17     # coefficient rows kept per nonlinearity before the store is cleared
_MAX_SETS = 32          # assembled sets of variances (and tables) kept


@lru_cache(maxsize=len(NODE_LADDER))
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
    """sigma^(order)(x) (float64, detached) by repeated autograd, or inside torch.func transforms (which refuse
    requires_grad_) by nested forward mode (`forward_derivative`); zeros once a derivative is constant."""
    try:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            value = fn(xg)
            for _ in range(order):
                if not value.requires_grad:
                    return torch.zeros_like(x)
                (value,) = torch.autograd.grad(value.sum(), xg, create_graph=True)
    except RuntimeError:
        value = forward_derivative(fn, order)(x.detach())
    return value.detach().to(torch.float64) * torch.ones_like(x)


def forward_derivative(fn: Callable[[torch.Tensor], torch.Tensor], order: int) -> Callable:
    """x -> sigma^(order)(x) for an elementwise sigma, by `order` nested torch.func.jvp (forward mode)."""
    for _ in range(order):
        fn = (lambda f: lambda t: torch.func.jvp(f, (t,), (torch.ones_like(t),))[1])(fn)
    return fn


def _numpy(t: torch.Tensor) -> np.ndarray:
    """t as a NumPy array, also inside torch.func transforms (whose tensors have no storage to share)."""
    try:
        return t.detach().cpu().numpy()
    except RuntimeError:
        return np.array(t.tolist(), dtype=np.float64)


def _snap(q: torch.Tensor) -> torch.Tensor:
    """Variances rounded to _MANTISSA_BITS (relative change below 3e-13), so that inputs of one norm, which differ
    in the last bits, share one set of coefficients."""
    mantissa, exponent = torch.frexp(q.detach().to(torch.float64).clamp(min=0.0))
    return torch.ldexp(torch.round(mantissa * 2.0**_MANTISSA_BITS) / 2.0**_MANTISSA_BITS, exponent)


def _rows(fn, variances: np.ndarray, order: int) -> list[tuple[np.ndarray | None, float, float, int, np.ndarray]]:
    """(coefficients, E[sigma^(order)(u)^2], aliasing tail, nodes, tails) for each variance, each computed with the
    fewest nodes of NODE_LADDER whose upper half of coefficients carries at most TOLERANCE of the norm (the largest
    where none does); coefficients None where sigma^(order) is not finite at a node."""
    out: list = [None] * len(variances)
    pending = np.arange(len(variances))
    for nodes in NODE_LADDER:
        z, psi, root_w = _basis(nodes)
        x = torch.as_tensor(np.sqrt(variances[pending])[:, None] * z[None, :])
        values = _numpy(_derivatives(fn, x, order))
        finite = np.isfinite(values[:, root_w > 0]).all(1)
        weighted = np.where(root_w > 0, np.nan_to_num(values), 0.0) * root_w
        every = weighted @ psi.T                                            # (G, nodes)
        norms = (weighted * weighted).sum(1)
        alias = (every[:, nodes // 2:] ** 2).sum(1)
        done = ~finite | (alias <= TOLERANCE * norms + 1e-300) | (nodes == NODE_LADDER[-1])
        tails = np.cumsum((every * every)[:, ::-1], 1)[:, ::-1][:, :nodes // 2 + 1]
        for i in np.flatnonzero(done):
            out[pending[i]] = (every[i] if finite[i] else None, float(norms[i]), float(alias[i]), nodes, tails[i])
        pending = pending[~done]
        if not pending.size:
            break
    return out


class _Coefficients:
    """The Hermite coefficients of sigma^(m)(sqrt(q) z) for a set of distinct variances, with what decides the
    truncation: `every` (G, n) all coefficients (zero past a variance's own node count `nodes`), `values` (G, n / 2),
    `norms` (G,) = E[sigma^(m)(u)^2], `alias` (G,) the squared coefficients in the upper half of each variance's
    own rule (how well the rule resolves sigma) and `tails` (G, n / 2 + 1), tails[:, K] = sum_{k >= K} a_k^2."""

    def __init__(self, rows: Sequence[tuple[np.ndarray | None, float, float, int, np.ndarray]]):
        if not rows or any(row[0] is None for row in rows):
            self.values = None
            return
        width = max(row[3] for row in rows)
        every = np.zeros((len(rows), width))
        alias = np.array([row[2] for row in rows])
        tails = np.repeat(alias[:, None], width // 2 + 1, 1)   # past a variance's own rule: see `_set`
        for i, row in enumerate(rows):
            every[i, :row[3]] = row[0]
            tails[i, :len(row[4])] = row[4]
        self._set(every, np.array([row[1] for row in rows]), alias, np.array([row[3] for row in rows]), tails)

    def _set(self, every: np.ndarray, norms: np.ndarray, alias: np.ndarray, nodes: np.ndarray,
             tails: np.ndarray | None = None) -> None:
        self.every, self.norms, self.alias, self.nodes = every, norms, alias, nodes
        self.values = every[:, :every.shape[1] // 2]
        if tails is None:
            tails = np.cumsum((every * every)[:, ::-1], 1)[:, ::-1][:, :every.shape[1] // 2 + 1]
            # past a variance's own rule its coefficients are unknown: bounded by what its rule's upper half carries
            tails = np.where(np.arange(tails.shape[1])[None, :] >= nodes[:, None] // 2, alias[:, None], tails)
        self.tails = tails

    def shifted(self, fn, variances: np.ndarray, steps: int) -> _Coefficients:
        """The coefficients of sigma^(m + steps) from these of sigma^(m) (d/dz h_k = sqrt(k) h_{k-1}):
        a_j^(m+s) = a_{j+s}^(m) sqrt((j+s)! / j!) / q^(s/2); variance 0 by autograd at 0 (one point)."""
        out = _Coefficients.__new__(_Coefficients)
        if self.values is None:
            out.values = None
            return out
        width = self.every.shape[1]
        j = np.arange(width - steps, dtype=np.float64)
        growth = np.exp(0.5 * (gammaln(j + steps + 1) - gammaln(j + 1)))
        positive = variances > 0
        scale = np.where(positive, np.maximum(variances, 1e-300) ** (-steps / 2), 0.0)
        every = np.zeros_like(self.every)
        every[:, :width - steps] = self.every[:, steps:] * growth * scale[:, None]
        if not positive.all():       # sigma^(m)(0 z) is the constant sigma^(m)(0)
            at_zero = float(_derivatives(fn, torch.zeros(1, dtype=torch.float64), _DIRECT_ORDER + steps)[0])
            every[~positive] = 0.0
            every[~positive, 0] = at_zero
        upper = np.arange(width)[None, :] >= self.nodes[:, None] // 2
        out._set(every, (every * every).sum(1), (every * every * upper).sum(1), self.nodes)
        return out

    def terms_for(self, tolerance: float) -> int | None:
        """The fewest terms K with tail(K) <= tolerance E[sigma^(m)(u)^2] at every variance (then the truncation
        error of a map is at most tolerance sqrt(E[sigma^(m)(u)^2] E[sigma^(n)(v)^2])); None if the rules do not
        resolve sigma to it (a kink, or a variance too large for the steepness of sigma)."""
        if self.values is None:
            return None
        memo = self.__dict__.setdefault("_terms", {})
        if tolerance not in memo:
            memo[tolerance] = self._count(tolerance)
        return memo[tolerance]

    def _count(self, tolerance: float) -> int | None:
        if not (self.alias <= tolerance * self.norms + 1e-300).all():
            return None
        ok = self.tails <= tolerance * self.norms[:, None] + 1e-300
        return max(1, int(np.argmax(ok.all(0))))

    def relative_tails(self, width: int) -> np.ndarray:
        """(width + 1,): the largest tail(K) / E[sigma^(m)(u)^2] over the variances, K = 0 .. width (width >=
        n / 2: the last value repeated)."""
        tails = (self.tails / np.maximum(self.norms, 1e-300)[:, None]).max(0)
        return np.concatenate([tails, np.full(width + 1 - len(tails), tails[-1])])

    def padded(self, width: int) -> np.ndarray:
        """(G, width): the coefficients, zeros past n / 2."""
        return np.pad(self.values, ((0, 0), (0, width - self.values.shape[1])))


class HermiteMaps:
    """E[sigma^(m)(u) sigma^(n)(v)] for one nonlinearity `fn` from its Hermite expansion (module docstring).
    Coefficients are kept per distinct variance (`_rows`), tables and assembled sets for the most recent sets."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn
        self._cache: dict[tuple, object] = {}
        self._rows: dict[tuple[int, float], tuple] = {}

    def __getstate__(self) -> dict:
        """Pickled without the caches (sent to workers as the function alone)."""
        return {"fn": self.fn, "_cache": {}, "_rows": {}}

    def coefficients(self, variances: np.ndarray, order: int) -> _Coefficients:
        """The coefficients of sigma^(order) at these variances: by autograd up to _DIRECT_ORDER (nested autograd
        grows combinatorially past it), shifted from those beyond; kept."""
        key = (order, variances.tobytes())
        if key not in self._cache:
            if len(self._cache) >= _MAX_SETS:
                self._cache.clear()
            if order > _DIRECT_ORDER:
                self._cache[key] = self.coefficients(variances, _DIRECT_ORDER).shifted(self.fn, variances,
                                                                                       order - _DIRECT_ORDER)
            else:
                missing = np.array([v for v in variances.tolist() if (order, v) not in self._rows])
                if missing.size:
                    if len(self._rows) + missing.size > _MAX_ROWS:
                        self._rows.clear()
                        missing = variances
                    self._rows.update(zip([(order, v) for v in missing.tolist()], _rows(self.fn, missing, order),
                                          strict=True))
                self._cache[key] = _Coefficients([self._rows[(order, v)] for v in variances.tolist()])
        return self._cache[key]

    def resolves(self, q1: torch.Tensor, q2: torch.Tensor, orders: Sequence[int] = (0, 1)) -> bool:
        """Whether the truncated series reaches TOLERANCE for sigma^(m), m in `orders`, at every variance in q1, q2
        (finite, non-negative); otherwise the caller falls back to quadrature. The largest variance is tried first
        (a kink fails there at once)."""
        for q in (q1, q2):
            if not bool(torch.isfinite(q).all()) or bool((q < 0).any()):
                return False
            reps = _groups(q)[0]
            for subset in (reps[-1:], reps):
                if any(self.coefficients(subset, m).terms_for(TOLERANCE) is None for m in orders):
                    return False
        return True

    def evaluate(self, c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor,
                 orders: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """[E[sigma^(m)(u) sigma^(n)(v)] for (m, n) in orders], each of the broadcast shape of c, q1, q2, in c's
        dtype; no autograd (`hermite_autograd` supplies the derivatives)."""
        shape = torch.broadcast_shapes(c.shape, q1.shape, q2.shape)
        reps1, index1 = _groups(q1)
        reps2, index2 = _groups(q2)
        rho = _correlation(c, q1, q2, shape)
        pairs = len(reps1) * len(reps2)
        if pairs <= MAX_TABLES and rho.numel() > SERIES_BELOW:
            tables = [self._tables(reps1, reps2, m, n) for m, n in orders]
            return tabulated(rho, index1, index2, len(reps2), tables, pairs)
        series = []
        for m, n in orders:
            a, b, terms = self._series(reps1, reps2, m, n)
            full = terms(1.0)
            series.append(Series(torch.as_tensor(a[:, :full], dtype=rho.dtype, device=rho.device),
                                 torch.as_tensor(b[:, :full], dtype=rho.dtype, device=rho.device), terms))
        return banded_series(rho, index1, index2, series)

    def _series(self, reps1, reps2, m, n) -> tuple[np.ndarray, np.ndarray, Callable[[float], int]]:
        """The coefficients of sigma^(m) at reps1 and sigma^(n) at reps2 (NumPy (G, K)) and the terms K(r) that
        bound the tail for |rho| <= r, at TOLERANCE where both resolve it, else _LOOSE, else all terms."""
        a, b = self.coefficients(reps1, m), self.coefficients(reps2, n)
        if a.values is None or b.values is None:
            raise ValueError(f"the derivative of order {max(m, n)} of the activation is not finite at the "
                             f"quadrature nodes")
        tolerance = next((t for t in (TOLERANCE, _LOOSE) if a.terms_for(t) and b.terms_for(t)), 0.0)
        width = max(a.values.shape[1], b.values.shape[1])
        terms = terms_for_radius(a.relative_tails(width), b.relative_tails(width), tolerance)
        if tolerance != TOLERANCE:      # a loose series: its terms at rho = 1 everywhere (an error far below it)
            full = terms(1.0)
            return a.padded(width), b.padded(width), lambda radius: full
        return a.padded(width), b.padded(width), terms

    def _tables(self, reps1, reps2, m, n) -> np.ndarray:
        """(pairs * panels, TABLE_DEGREE + 1): the tables of every pair of distinct variances on a common number of
        panels, pairs in row-major order of (reps1, reps2); cached."""
        from .hermite_sums import refine

        key = ("table", m, n, reps1.tobytes(), reps2.tobytes())
        if key not in self._cache:
            a, b, terms = self._series(reps1, reps2, m, n)
            full = terms(1.0)
            tables = [_table(p, TOLERANCE) for p in (a[:, None, :full] * b[None, :, :full]).reshape(-1, full)]
            panels = max(t.shape[0] for t in tables)
            self._cache[key] = np.concatenate([refine(t, panels) for t in tables])
        return self._cache[key]


def _groups(q: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """(distinct snapped variances, float64 NumPy (G,); index of each entry of q into them, long, q's shape)."""
    snapped = _snap(q)
    reps, index = torch.unique(snapped.reshape(-1), return_inverse=True)
    return _numpy(reps), index.reshape(q.shape).to(q.device)


def _correlation(c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, shape) -> torch.Tensor:
    """rho = c / sqrt(q1 q2) clamped to [-1, 1], 0 where a variance is 0, a new tensor of the broadcast shape."""
    tiny = torch.finfo(c.dtype).tiny
    r1 = torch.where(q1 > 0, torch.rsqrt(q1.clamp(min=tiny)), 0.0)
    r2 = torch.where(q2 > 0, torch.rsqrt(q2.clamp(min=tiny)), 0.0)
    rho = (c * r1).mul_(r2)
    return (rho if rho.shape == shape else rho.expand(shape).clone()).clamp_(-1.0, 1.0)
