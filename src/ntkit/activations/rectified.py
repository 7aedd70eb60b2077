"""Rectified monomials sigma(x) = x^n for x >= 0, 0 for x < 0 (neural-tangents' `stax.RectifiedMonomial(degree)`):
their maps are the arc-cosine kernels of Cho and Saul (2009) of every degree n >= 0.

With theta = atan2(s, c), s = sqrt(q1 q2 - c^2) (`ntkit.activations.base.angle`),
    E[sigma(u) sigma(v)] = (q1 q2)^(n/2) J_n(theta) / (2 pi),
    J_n(theta) = (-1)^n sin(theta)^(2n + 1) ((1 / sin(theta)) d/dtheta)^n ((pi - theta) / sin(theta)),

and (q1 q2)^(n/2) J_n(theta) = (pi - theta) P_n(c, s) + Q_n(c, s) with P_n, Q_n homogeneous polynomials of degree n
and nonnegative integer coefficients, derived once per degree (`arc_cosine_polynomials`; J_1 = sin + (pi - theta)
cos gives ReLU's s + (pi - theta) c). No division: finite at q = 0 and at c = +-sqrt(q1 q2). The SigmaDot map is
n^2 times the Sigma map of degree n - 1 (Price's theorem), 0 for degree 0 (a step: derivative 0 almost everywhere).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict

import torch

from .._checks import check_positive_int
from .base import TWO_PI, Nonlinearity, angle
from .registry import register

#: a term (e, p, r): (pi - theta)^e s^p c^r, with its integer coefficient
Terms = dict[tuple[int, int, int], int]


@functools.cache
def arc_cosine_polynomials(degree: int) -> tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]:
    """The terms (e, p, r) and coefficients k of (q1 q2)^(n/2) J_n(theta) = sum k (pi - theta)^e s^p c^r, each of
    degree p + r = n: the operator f -> (1/sin) df/dtheta applied n times to (pi - theta) / sin, symbolically in
    t = pi - theta, S = sin, C = cos (dt = -1, dS = C, dC = -S), times (-1)^n S^(2n + 1); terms of lower degree are
    made degree n with (S^2 + C^2)^k = 1, so that S -> s and C -> c (both scaled by sqrt(q1 q2)) gives the form."""
    f: Terms = {(1, -1, 0): 1}
    for _ in range(degree):
        g: Terms = defaultdict(int)
        for (e, p, r), k in f.items():       # (1/S) d/dtheta of t^e S^p C^r
            if e:
                g[(e - 1, p - 1, r)] -= e * k
            if p:
                g[(e, p - 2, r + 1)] += p * k
            if r:
                g[(e, p, r - 1)] -= r * k
        f = {key: value for key, value in g.items() if value}
    out: Terms = defaultdict(int)
    for (e, p, r), k in f.items():
        p += 2 * degree + 1
        pad = (degree - p - r) // 2
        for j in range(pad + 1):
            out[(e, p + 2 * j, r + 2 * (pad - j))] += (-1) ** degree * k * math.comb(pad, j)
    kept = sorted((key, value) for key, value in out.items() if value)
    return tuple(key for key, _ in kept), tuple(value for _, value in kept)


def _double_factorial(n: int) -> int:
    return math.prod(range(n, 0, -2))


def arc_cosine(degree: int, c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """E[u^n v^n 1{u >= 0} 1{v >= 0}] for (u, v) ~ N(0, [[q1, c], [c, q2]]), n = degree (broadcast shape). Degree 0
    is P(u >= 0, v >= 0): (pi - theta) / (2 pi), with u = 0 counted as u >= 0 where a variance is 0."""
    theta, s = angle(c, q1, q2)
    if degree == 0:
        positive = ((q1 > 0).to(c.dtype) + 1) * ((q2 > 0).to(c.dtype) + 1)    # 4 where both variances are positive
        return torch.where(positive == 4, (math.pi - theta) / TWO_PI, 2.0 / positive)
    away = math.pi - theta
    terms, coefficients = arc_cosine_polynomials(degree)
    out = torch.zeros_like(theta)
    for (e, p, r), k in zip(terms, coefficients, strict=True):
        out = out + k * (away if e else 1.0) * s**p * c**r
    return out / TWO_PI


def arc_cosine_diag(degree: int, q: torch.Tensor) -> torch.Tensor:
    """E[u^(2n) 1{u >= 0}] = (2n - 1)!! q^n / 2 for u ~ N(0, q) (1 at q = 0 for degree 0)."""
    if degree == 0:
        return torch.where(q > 0, 0.5, 1.0).to(q.dtype) + 0 * q
    return 0.5 * _double_factorial(2 * degree - 1) * q**degree


class RectifiedMonomial(Nonlinearity):
    """sigma(x) = x^degree for x >= 0, else 0; degree >= 0 (0: the step 1{x >= 0}, 1: ReLU, 2: squared ReLU).
    Maps: the arc-cosine kernel of its degree (module docstring)."""

    def __init__(self, degree: int = 2):
        self.degree = check_positive_int(degree, "degree", minimum=0)
        self.name = f"rectified_monomial({self.degree})"
        arc_cosine_polynomials(self.degree)

    def __call__(self, x):
        return torch.where(x >= 0, x**self.degree, 0.0)

    def derivative(self, x):
        if self.degree == 0:
            return torch.zeros_like(x)
        return torch.where(x >= 0, self.degree * x ** (self.degree - 1), 0.0)

    def sigma(self, c, q1, q2):
        return arc_cosine(self.degree, c, q1, q2)

    def sigma_dot(self, c, q1, q2):
        if self.degree == 0:
            return torch.zeros_like(c + q1 + q2)
        return self.degree**2 * arc_cosine(self.degree - 1, c, q1, q2)

    def sigma_diag(self, q):
        return arc_cosine_diag(self.degree, q)

    def sigma_dot_diag(self, q):
        if self.degree == 0:
            return torch.zeros_like(q)
        return self.degree**2 * arc_cosine_diag(self.degree - 1, q)


register("rectified_monomial", RectifiedMonomial, layer="RectifiedMonomial", params=(("degree", 2),),
         doc="x^degree for x >= 0, else 0 (closed form: the arc-cosine kernel of that degree).")

__all__ = ["RectifiedMonomial", "arc_cosine", "arc_cosine_polynomials"]
