"""Operator kernels of fully-connected chains in O(N M): the kernel as a function of three scalars.

For a chain of dense layers (`Linear`) and elementwise nonlinearities on flat inputs, starting and ending with a
dense layer (`MLP`, and `Sequential(Linear, Tanh, Linear, ...)`), the first layer's Sigma^(1)(x, y) =
W^2 x.y / n0 + b^2 and its diagonals are all the recursion sees, so

    Theta(x, y) = F(s, p, q),   s = x.y,  p = |x|^2,  q = |y|^2,

with F elementwise over the pairs. A derivative along x_a is F_s y_a + 2 F_p x_a, one along y_b is F_s x_b + 2 F_q y_b
(chain rule), so L_x R_y Theta for operators of orders k_x, k_y <= 2 is a sum of partials F_(i,j,k) = d^(i+j+k) F /
ds^i dp^j dq^k times polynomials in x and y (`_chain_rule`), with j + (x-side s-derivatives) <= k_x and
k + (y-side ones) <= k_y.

The partials come from truncated Taylor polynomials (jets) in (s, p, q) carried through the recursion
(`_Jets`): a dense layer is affine in them; a nonlinearity's maps E_mn = E[sigma^(m)(u) sigma^(n)(v)] compose with
them by Taylor's formula, whose partials are again maps by Price's theorem,

    d^(a+b+c) E_mn / dc^a dq1^b dq2^c = E_(m+a+2b, n+a+2c) / 2^(b+c),

each evaluated once per pair from the Hermite series of the dual activation (`ntkit.activations.hermite`), which
converges to its tolerance for every smooth activation at moderate variances. The work is O(N M): per layer, a few
dozen maps (each a truncated series, tens to hundreds of terms) and a few hundred products of Taylor coefficients,
elementwise over the pairs, where nested autograd through the kernel builds graphs that grow with every derivative
order (dozens of backward passes of the maps). Closed-form
activations take the same series (their Hermite coefficients from the function itself), so one code path serves
all; the exactness is that of the series (truncated where Parseval bounds its error by 1e-12 of the maps' scale for
orders up to 3, 1e-9 beyond), checked in the tests against autograd through the closed forms.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch

from .activations import Nonlinearity, Quadrature
from .activations.hermite import _LOOSE, TOLERANCE, HermiteMaps, _groups
from .progress import progress

Index = tuple[int, int, int]          # partial orders in (s, p, q)
Jet = dict[Index, torch.Tensor]       # Taylor coefficients d^alpha f / alpha!, broadcastable tensors
Poly = dict[tuple[int, ...], float]   # exponents of (x_0 .. x_{d-1}, y_0 .. y_{d-1}) -> coefficient

#: pairs per block of rows: the jets of one block hold a few hundred tensors of this many entries
BLOCK_PAIRS = 1 << 16
_hermite_cache: dict[int, tuple[Nonlinearity, HermiteMaps]] = {}


def dense_chain(arch: Any) -> list[tuple] | None:
    """The chain [("dense", W_std, b_std), ("act", nonlinearity), ..., ("dense", W_std, b_std)] of an architecture
    whose layers are dense and elementwise layers alternating, dense first and last (`MLP`, or a `Sequential` of
    such layers: read from what each layer declares); None for any other architecture."""
    layers = getattr(arch, "layers", None)
    layers = getattr(layers, "layers", layers)      # MLP.layers is a Sequential, Sequential.layers a tuple
    if not isinstance(layers, tuple) or len(layers) % 2 == 0:
        return None
    chain: list[tuple] = []
    for index, layer in enumerate(layers):
        scales = getattr(layer, "dense_scales", None) if index % 2 == 0 else None
        act = getattr(layer, "elementwise", None) if index % 2 else None
        if index % 2 == 0 and scales is None or index % 2 and act is None:
            return None
        if scales is not None and any(isinstance(v, torch.Tensor) and v.requires_grad for v in scales):
            return None                                         # differentiating in W_std or b_std: autograd path
        chain.append(("dense", float(scales[0]), float(scales[1])) if scales is not None else ("act", act))
    return chain


def _hermite(act: Nonlinearity) -> HermiteMaps:
    """The Hermite maps of a nonlinearity (a quadrature activation's own, else built from the function; cached)."""
    if isinstance(act, Quadrature):
        return act._hermite
    if id(act) not in _hermite_cache or _hermite_cache[id(act)][0] is not act:
        if len(_hermite_cache) >= 16:
            _hermite_cache.clear()
        _hermite_cache[id(act)] = (act, HermiteMaps(act))
    return _hermite_cache[id(act)][1]


def resolves(act: Nonlinearity, q: torch.Tensor, top: int) -> bool:
    """Whether the Hermite series of sigma^(m), m <= top, serve at every variance in q: converged to 1e-12 of the
    maps' scale for m <= 1 (as the kernel itself), to 1e-9 for m <= 3, and finite coefficients beyond (whose
    series `HermiteMaps.evaluate` truncates at 1e-9 where it can)."""
    if not bool(torch.isfinite(q).all()) or bool((q < 0).any()):
        return False
    maps = _hermite(act)
    reps = _groups(q.detach())[0]
    for m in range(top + 1):
        coefficients = maps.coefficients(reps, m)
        if coefficients.values is None or m <= 1 and coefficients.terms_for(TOLERANCE) is None \
                or m <= 3 and coefficients.terms_for(_LOOSE) is None:
            return False
    return True


class _Jets:
    """Truncated multivariate Taylor polynomials in (s, p, q) on the downward-closed index set `indices`."""

    def __init__(self, indices: Sequence[Index]):
        self.indices = set(indices)
        self.top = max(sum(i) for i in indices)
        self.products = [(a, b, tuple(x + y for x, y in zip(a, b, strict=True))) for a in indices for b in indices]
        self.products = [(a, b, c) for a, b, c in self.products if c in self.indices]

    def mul(self, f: Jet, g: Jet, limit: int | None = None) -> Jet:
        """The product f g, its terms of order up to `limit` (None: all)."""
        out: Jet = {}
        for a, b, c in self.products:
            if a in f and b in g and (limit is None or sum(c) <= limit):
                if c in out:
                    out[c] = out[c].addcmul_(f[a], g[b]) if out[c].shape == torch.broadcast_shapes(
                        out[c].shape, f[a].shape, g[b].shape) else out[c] + f[a] * g[b]
                else:
                    out[c] = f[a] * g[b]
        return out

    @staticmethod
    def affine(f: Jet, scale: float, shift: float) -> Jet:
        out = {i: v * scale for i, v in f.items()}
        out[(0, 0, 0)] = out[(0, 0, 0)] + shift
        return out

    @staticmethod
    def add(f: Jet, g: Jet) -> Jet:
        out = dict(f)
        for i, v in g.items():
            out[i] = v if i not in out else out[i] + v
        return out

    def powers(self, f: Jet) -> list[Jet]:
        """[1, df, df^2, ...] of df = f - f(0) up to the top order (shorter where a power vanishes)."""
        d = {i: v for i, v in f.items() if i != (0, 0, 0)}
        out: list[Jet] = [{(0, 0, 0): torch.ones((), dtype=f[(0, 0, 0)].dtype)}]
        while d and len(out) <= self.top:
            out.append(d if len(out) == 1 else self.mul(out[-1], d))
            if not out[-1]:
                out.pop()
                break
        return out

    def compose(self, maps: HermiteMaps, c: Jet, q1: Jet, q2: Jet, wanted: Sequence[tuple[int, int]]) -> list[Jet]:
        """[E_mn(c, q1, q2) as a jet for (m, n) in wanted]: Taylor's formula with the partials of Price's theorem,
        sum_a dc^a / a! G_a by Horner in dc, G_a = sum_(b, k) E_(m+a+2b, n+a+2k) / (2^(b+k) b! k!) dq1^b dq2^k."""
        top = self.top
        dc = {i: v for i, v in c.items() if i != (0, 0, 0)}
        p1, p2 = self.powers(q1), self.powers(q2)
        cross = {(b, k): self.mul(p1[b], p2[k]) for b in range(len(p1)) for k in range(len(p2)) if b + k <= top}
        depth = top if dc else 0
        orders = sorted({(m + a + 2 * b, n + a + 2 * k) for m, n in wanted for a in range(depth + 1)
                         for b, k in cross if a + b + k <= top})
        values = dict(zip(orders, maps.evaluate(c[(0, 0, 0)], q1[(0, 0, 0)], q2[(0, 0, 0)], orders), strict=True))
        outs = []
        for m, n in wanted:
            total: Jet = {}
            for a in range(depth, -1, -1):
                g: Jet = {}
                for (b, k), jet in cross.items():     # only terms of order <= top - a survive dc^a
                    if a + b + k <= top:
                        coef = values[(m + a + 2 * b, n + a + 2 * k)] / (2.0 ** (b + k) * math.factorial(b)
                                                                          * math.factorial(k))
                        g = self.add(g, {i: coef * v for i, v in jet.items() if sum(i) <= top - a})
                total = self.add(g, {i: v / (a + 1) for i, v in self.mul(dc, total, top - a).items()}) if total \
                    else g
            outs.append(total)
        return outs


def kernel_partials(chain: list[tuple], X: torch.Tensor, Y: torch.Tensor, indices: Sequence[Index],
                    get: str) -> dict[Index, torch.Tensor]:
    """The partials d^(i+j+k) F / ds^i dp^j dq^k of the kernel F(s, p, q) ("ntk": Theta, "nngp": Sigma) of a
    dense chain at every pair of rows of X (N, d) and Y (M, d): {index: (N, M)} for each index, float64."""
    jets = _Jets(indices)
    n0 = X.shape[1]
    s = {(0, 0, 0): X @ Y.T, (1, 0, 0): torch.ones((), dtype=X.dtype)}
    p = {(0, 0, 0): (X * X).sum(1)[:, None], (0, 1, 0): torch.ones((), dtype=X.dtype)}
    q = {(0, 0, 0): (Y * Y).sum(1)[None, :], (0, 0, 1): torch.ones((), dtype=X.dtype)}
    sigma = theta = qx = qy = None
    want_ntk = get == "ntk"
    for step in chain:
        if step[0] == "dense":
            _, w, b = step
            if sigma is None:                       # the first layer: Sigma^(1) = W^2 x.y / n0 + b^2, Theta^(1) = it
                w2 = w * w / n0
                sigma, qx, qy = (jets.affine(t, w2, b * b) for t in (s, p, q))
                theta = sigma if want_ntk else None
            else:
                sigma, qx, qy = (jets.affine(t, w * w, b * b) for t in (sigma, qx, qy))
                theta = jets.add(jets.affine(theta, w * w, 0.0), sigma) if want_ntk else None
            continue
        maps = _hermite(step[1])
        pair = jets.compose(maps, sigma, qx, qy, [(0, 0), (1, 1)] if want_ntk else [(0, 0)])
        qx = jets.compose(maps, qx, qx, qx, [(0, 0)])[0]
        qy = jets.compose(maps, qy, qy, qy, [(0, 0)])[0]
        sigma = pair[0]
        theta = jets.mul(theta, pair[1]) if want_ntk else None
    out = theta if want_ntk else sigma
    shape = (X.shape[0], Y.shape[0])
    return {i: (out[i] * (math.factorial(i[0]) * math.factorial(i[1]) * math.factorial(i[2]))).expand(shape)
            if i in out else X.new_zeros(shape) for i in indices}


# ------------------------------------------------------------------------------------------ the chain rule
def _poly_derivative(poly: Poly, var: int) -> Poly:
    out: Poly = {}
    for exps, coef in poly.items():
        if exps[var]:
            lowered = exps[:var] + (exps[var] - 1,) + exps[var + 1:]
            out[lowered] = out.get(lowered, 0.0) + coef * exps[var]
    return out


def _poly_times(poly: Poly, var: int, scale: float) -> Poly:
    return {exps[:var] + (exps[var] + 1,) + exps[var + 1:]: coef * scale for exps, coef in poly.items()}


def _merge(expr: dict[Index, Poly], index: Index, poly: Poly) -> None:
    target = expr.setdefault(index, {})
    for exps, coef in poly.items():
        target[exps] = target.get(exps, 0.0) + coef


def _differentiate(expr: dict[Index, Poly], a: int, d: int, side: int) -> dict[Index, Poly]:
    """d/dx_a (side 0) or d/dy_a (side 1) of sum_index poly(x, y) F_index, with ds/dx_a = y_a, dp/dx_a = 2 x_a
    (dq/dy_a = 2 y_a)."""
    own, other = a + side * d, a + (1 - side) * d
    step = (0, 1, 0) if side == 0 else (0, 0, 1)
    out: dict[Index, Poly] = {}
    for index, poly in expr.items():
        _merge(out, index, _poly_derivative(poly, own))
        _merge(out, (index[0] + 1, index[1], index[2]), _poly_times(poly, other, 1.0))
        _merge(out, tuple(i + j for i, j in zip(index, step, strict=True)), _poly_times(poly, own, 2.0))
    return out


def chain_rule(left: Any, right: Any, d: int) -> dict[Index, Poly]:
    """L_x R_y F(x.y, |x|^2, |y|^2) = sum_index poly_index(x, y) F_index: {index: poly} (`left`, `right`:
    `ntkit.pinn.Operator`s)."""
    total: dict[Index, Poly] = {}
    start = {(0, 0, 0): {(0,) * (2 * d): 1.0}}
    for cl, xs in left.terms:
        for cr, ys in right.terms:
            expr = start
            for a in xs:
                expr = _differentiate(expr, a, d, 0)
            for b in ys:
                expr = _differentiate(expr, b, d, 1)
            for index, poly in expr.items():
                _merge(total, index, {e: c * cl * cr for e, c in poly.items()})
    kept = {i: {e: c for e, c in poly.items() if c != 0.0} for i, poly in total.items()}
    return {i: poly for i, poly in kept.items() if poly}


def _evaluate_poly(poly: Poly, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """poly(x_i, y_j) for every pair: (N, M), as (monomials of x) C (monomials of y)^T."""
    d = X.shape[1]
    xs = sorted({e[:d] for e in poly})
    ys = sorted({e[d:] for e in poly})
    C = X.new_zeros((len(xs), len(ys)))
    for exps, coef in poly.items():
        C[xs.index(exps[:d]), ys.index(exps[d:])] += coef

    def monomials(Z: torch.Tensor, exps: list[tuple[int, ...]]) -> torch.Tensor:
        return torch.stack([torch.prod(Z ** torch.tensor(e, dtype=Z.dtype), 1) for e in exps], 1)

    return monomials(X, xs) @ C @ monomials(Y, ys).T


def operator_block(chain: list[tuple], X: torch.Tensor, Y: torch.Tensor, terms: dict[Index, Poly],
                   get: str) -> torch.Tensor:
    """L_x R_y K on the pairs of rows of X (N, d) and Y (M, d), float64, from the chain rule's `terms`."""
    indices = sorted({j for i in terms for j in _below(i)}, key=lambda i: (sum(i), i))
    partials = kernel_partials(chain, X, Y, indices, get)
    out = X.new_zeros((X.shape[0], Y.shape[0]))
    for index, poly in terms.items():
        out += partials[index] * _evaluate_poly(poly, X, Y)
    return out


def _below(index: Index) -> list[Index]:
    return list(itertools.product(*(range(i + 1) for i in index)))


def dense_operator_kernel(chain: list[tuple], X: torch.Tensor, Y: torch.Tensor, left: Any, right: Any,
                          get: str, symmetric: bool = False) -> torch.Tensor:
    """L_x R_y K(X, Y) for a dense chain, float64 (N, M), in blocks of rows (a progress bar over them); see the
    module docstring. `symmetric`: Y is X and left is right, so only the blocks on and above the diagonal are
    computed and the rest mirrored (the result exactly symmetric)."""
    terms = chain_rule(left, right, X.shape[1])
    X64, Y64 = X.detach().to(torch.float64), Y.detach().to(torch.float64)
    out = X64.new_zeros((X.shape[0], Y.shape[0]))
    if not terms:                                  # a zero operator
        return out
    rows = max(1, BLOCK_PAIRS // max(Y.shape[0], 1))
    starts = range(0, X.shape[0], rows)
    for i in progress(starts, total=len(starts), desc="operator kernel"):
        j = i if symmetric else 0
        block = operator_block(chain, X64[i:i + rows], Y64[j:], terms, get)
        out[i:i + rows, j:] = block
        if symmetric:                              # mirrored below the diagonal, the diagonal block made symmetric
            out[i + rows:, i:i + rows] = block[:, rows:].T
            square = block[:, :rows]
            out[i:i + rows, i:i + rows] = (square + square.T) / 2
    return out


def variances(chain: list[tuple], X: torch.Tensor) -> list[torch.Tensor]:
    """The variances q(x) = Sigma^(l)(x, x) each nonlinearity of the chain sees, for the rows of X: [(N,), ...]."""
    q = (X.detach().to(torch.float64) ** 2).sum(1)
    out, n0, first = [], X.shape[1], True
    for step in chain:
        if step[0] == "dense":
            q = (step[1] ** 2 / (n0 if first else 1)) * q + step[2] ** 2
            first = False
        else:
            out.append(q)
            q = step[1].sigma_diag(q)
    return out


def ready(chain: list[tuple], X: torch.Tensor, Y: torch.Tensor, left: Any, right: Any) -> bool:
    """Whether the Hermite series of every nonlinearity converge at the variances the rows of X and Y give them,
    for the derivative orders these operators need (`resolves`)."""
    top = orders_needed(left, right)
    acts = [step[1] for step in chain if step[0] == "act"]
    return all(resolves(act, torch.cat([qx, qy]), top)
               for act, qx, qy in zip(acts, variances(chain, X), variances(chain, Y), strict=True))


def orders_needed(left: Any, right: Any) -> int:
    """The highest derivative order sigma^(m) of a nonlinearity whose Hermite series the maps use."""
    kx, ky = left.order, right.order
    return 1 + max(kx, ky) + kx + ky   # E_11's partials: m = 1 + a + 2b with a + b <= k_x + k_y, b <= k_x


__all__ = ["chain_rule", "dense_chain", "dense_operator_kernel", "kernel_partials", "ready", "variances"]
