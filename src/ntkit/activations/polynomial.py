"""Polynomial nonlinearities with closed-form maps: polynomial (any coefficients), monomial (x^degree, degree 0 to
5) and hermite (the normalized probabilists' Hermite polynomial He_degree(x) / sqrt(degree!)), with the parameters
of neural-tangents' `stax.Polynomial`, `stax.Monomial` and `stax.Hermite`.

Every map comes from the Hermite expansion of sigma(sqrt(q) z), z ~ N(0, 1): x^n = sum_i n! / (2^i i! (n - 2i)!)
He_{n-2i}(x), so sigma(sqrt(q) z) = sum_l q^(l/2) h_l(q) He_l(z) / sqrt(l!) with the polynomials

    h_l(q) = sum_i coef[l + 2i] (l + 2i)! / (2^i i! sqrt(l!)) q^i,

and E[He_j(z1) He_l(z2)] = delta_jl l! rho^l (Mehler) gives, with c = rho sqrt(q1 q2),

    E[sigma(u) sigma(v)]   = sum_l h_l(q1) h_l(q2) c^l
    E[sigma'(u) sigma'(v)] = sum_{l >= 1} l h_l(q1) h_l(q2) c^(l-1)     (Price's theorem: d/dc of the first)

polynomials in (c, q1, q2): no square root, no division, exact at q = 0 and at c = +-sqrt(q1 q2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._checks import check_positive_int, check_real
from .base import Nonlinearity
from .registry import register

#: the degrees neural-tangents' `stax.Monomial` accepts
MONOMIAL_DEGREES = range(0, 6)


def _horner(coefficients: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    """sum_k coefficients[k] x^k for a tensor x (zeros for no coefficients)."""
    out = torch.zeros_like(x)
    for value in reversed(coefficients):
        out = out * x + value
    return out


def hermite_coefficients(degree: int) -> list[int]:
    """The integer coefficients (constant first) of the probabilists' Hermite polynomial He_degree:
    He_0 = 1, He_1 = x, He_{n+1} = x He_n - n He_{n-1}."""
    before, current = [1], [0, 1]
    if degree == 0:
        return before
    for n in range(1, degree):
        shifted = [0, *current]
        before, current = current, [s - n * (before[k] if k < len(before) else 0) for k, s in enumerate(shifted)]
    return current


class Polynomial(Nonlinearity):
    """sigma(x) = coef[0] + coef[1] x + ... + coef[n] x^n (neural-tangents' `stax.Polynomial(coef)`); maps from
    the Hermite expansion (module docstring): exact for any variances."""

    def __init__(self, coef: Sequence[float] = (0.0, 1.0), name: str | None = None):
        if isinstance(coef, torch.Tensor) or type(coef).__module__ == "numpy":    # a 1-D array of coefficients
            if getattr(coef, "ndim", 1) != 1:
                raise ValueError(f"coef must be one-dimensional, got shape {tuple(coef.shape)}")
            coef = coef.tolist()
        if not isinstance(coef, (list, tuple)):
            raise TypeError(f"coef must be a sequence of real numbers (constant first), got {type(coef).__name__}")
        self.coef = tuple(float(check_real(value, f"coef[{k}]")) for k, value in enumerate(coef))
        self.name = name or f"polynomial(coef={list(self.coef)!r})"
        n = len(self.coef)
        # h_l(q) = sum_i table[l][i] q^i,  table[l][i] = coef[l + 2i] (l + 2i)! / (2^i i! sqrt(l!))
        self._table = [[self.coef[l + 2 * i] * math.factorial(l + 2 * i) / (2**i * math.factorial(i))
                        / math.sqrt(math.factorial(l)) for i in range((n - 1 - l) // 2 + 1)] for l in range(n)]

    def __call__(self, x):
        return _horner(self.coef, x)

    def derivative(self, x):
        return _horner([k * value for k, value in enumerate(self.coef)][1:], x)

    def _h(self, q: torch.Tensor) -> list[torch.Tensor]:
        return [_horner(row, q) for row in self._table]

    def _maps(self, c, h1, h2, want_dot: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """sum_l h1_l h2_l c^l and sum_l l h1_l h2_l c^(l-1), both by Horner in c."""
        sigma = torch.zeros_like(c)
        dot = torch.zeros_like(c) if want_dot else None
        for l in reversed(range(len(h1))):
            weight = h1[l] * h2[l]
            sigma = sigma * c + weight
            if want_dot and l >= 1:
                dot = dot * c + l * weight
        return sigma, dot

    def sigma_both(self, c, q1, q2):
        c, q1, q2 = torch.broadcast_tensors(c, q1, q2)
        return self._maps(c, self._h(q1), self._h(q2))

    def sigma(self, c, q1, q2):
        c, q1, q2 = torch.broadcast_tensors(c, q1, q2)
        return self._maps(c, self._h(q1), self._h(q2), want_dot=False)[0]

    def sigma_dot(self, c, q1, q2):
        return self.sigma_both(c, q1, q2)[1]

    def sigma_diag(self, q):
        h = self._h(q)
        return self._maps(q, h, h, want_dot=False)[0]

    def sigma_dot_diag(self, q):
        h = self._h(q)
        return self._maps(q, h, h)[1]


def _degree(degree, allowed: range | None = None) -> int:
    value = check_positive_int(degree, "degree", minimum=0)
    if allowed is not None and value not in allowed:
        raise ValueError(f"degree must be an integer from {allowed.start} to {allowed.stop - 1} (as neural-tangents' "
                         f"Monomial), got {value}")
    return value


class Monomial(Polynomial):
    """sigma(x) = x^degree, degree 0 to 5 (neural-tangents' `stax.Monomial`):
        E[u^n v^n] = sum_{l = n, n-2, ...} (n! / (2^i i! l!))^2 l! c^l (q1 q2)^i,   i = (n - l) / 2

    (degree 2: 2c^2 + q1 q2; degree 3: 6c^3 + 9 c q1 q2), the diagonal (2n - 1)!! q^n."""

    def __init__(self, degree: int = 2):
        self.degree = _degree(degree, MONOMIAL_DEGREES)
        super().__init__([0.0] * self.degree + [1.0], name=f"monomial({self.degree})")


class Hermite(Polynomial):
    """sigma(x) = He_degree(x) / sqrt(degree!), the probabilists' Hermite polynomial normalized to unit norm under
    N(0, 1) (neural-tangents' `stax.Hermite(degree)`). At unit variances (q1 = q2 = 1) the maps are c^degree and
    degree c^(degree - 1), neural-tangents' forms, which assume inputs of unit variance; here they are the exact
    Gaussian expectations at any variances (`Polynomial`)."""

    def __init__(self, degree: int = 2):
        self.degree = _degree(degree)
        norm = math.sqrt(math.factorial(self.degree))
        super().__init__([value / norm for value in hermite_coefficients(self.degree)],
                         name=f"hermite({self.degree})")


register("polynomial", Polynomial, layer="Polynomial", params=(("coef", (0.0, 1.0)),),
         doc="coef[0] + coef[1] x + ... + coef[n] x^n (closed form).")
register("monomial", Monomial, layer="Monomial", params=(("degree", 2),),
         doc="x^degree, degree 0 to 5 (closed form).")
register("hermite", Hermite, layer="Hermite", params=(("degree", 2),),
         doc="He_degree(x) / sqrt(degree!), the normalized Hermite polynomial (closed form at any variance).")

__all__ = ["Hermite", "Monomial", "Polynomial", "hermite_coefficients"]
