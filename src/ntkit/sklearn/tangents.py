"""Derivatives of the layer maps (closed forms where known): how E[sigma(u) sigma(v)] and E[sigma'(u) sigma'(v)]
move when the covariance [[q1, c], [c, q2]] of (u, v) moves.

For a map F(c, q1, q2) and tangents (dc, dq1, dq2) of its arguments, dF = F_c dc + F_q1 dq1 + F_q2 dq2. Price's
theorem gives F_c for every Sigma map: d/dc E[sigma(u) sigma(v)] = E[sigma'(u) sigma'(v)], the SigmaDot map.
The rest, per nonlinearity, with m = (dq1 / q1 + dq2 / q2) / 2:

- ReLU family, sigma(x) = max(x, 0) + a min(x, 0) (relu, leaky_relu, abs), positively homogeneous of degree 1 in
  (u, v): with rho = c / sqrt(q1 q2) = cos(theta), s = sqrt(q1 q2), k = ((1 + a^2)(pi - theta) + 2 a theta) / 2pi,
      F = (1 - a)^2 s sin(theta) / 2pi + k c,    G = k
      dF = k dc + (1 - a)^2 s sin(theta) / 2pi m         (Euler: q1 F_q1 = (F - c F_c) / 2)
      dG = (1 - a)^2 / 2pi (dc - c m) / (s sin(theta))    (= -k'(theta) d theta, d rho = (dc - c m) / s)
  dG has the removable 0 / 0 of d rho / sin(theta) at theta = 0 (x = y, where d rho = 0 exactly), and d rho
  keeps a rounding error of a few eps: sin(theta) is floored at `SINE_FLOOR` = 1e-7 in the division. Below the
  floor d rho = -sin(theta) d theta is at most theta^2 ~ 1e-14 (|d theta| ~ theta), so dG is its rounding error
  over the floor, a few eps / 1e-7 ~ 1e-9 relative, as just above the floor; where x = y exactly, d rho = 0.
- erf: with A = 1 + 2 q1, B = 1 + 2 q2, D = A B - 4 c^2 (>= 1 + 2 q1 + 2 q2, never 0),
      F = 2/pi asin(2c / sqrt(A B)),  G = 4/pi / sqrt(D)
      dF = G (dc - c dq1 / A - c dq2 / B),   dG = G (4 c dc - B dq1 - A dq2) / D
- any other nonlinearity (gelu, sin, cos, the rectified monomials, ...; `ntkit.sklearn.gradient` leaves those by
  quadrature to reverse mode over the Gram, which is cheaper for them): the
  partials F_c, F_q1, F_q2, G_c, G_q1, G_q2 of its own maps by reverse-mode autograd, element by element (each
  output depends on its own arguments only, so one backward pass with unit cotangents gives every partial of
  a block), then the same products with the tangents: as exact as those maps' autograd derivatives.

On the diagonal (c = q1 = q2 = q, one example with itself) the total derivatives of `sigma_diag` and
`sigma_dot_diag` serve: (1 + a^2) / 2 and 0 for the ReLU family (no angle at all: exact), the partials above at
c = q for erf, autograd of the two diagonal maps for the others. Tangents come stacked, one per hyperparameter:
dc (P, n, m), the diagonals' dq1 (P, n, 1) and dq2 (P, 1, m); everything is float64 in practice (the
scikit-learn kernels' dtype).
"""

from __future__ import annotations

import math

import torch

from ..activations import Erf, Nonlinearity, PiecewiseLinear

TWO_PI = 2.0 * math.pi
#: floor of sin(theta) in the ReLU family's d SigmaDot (theta = 0 is its removable singularity)
SINE_FLOOR = 1e-7

Maps = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


def closed_form(activation: Nonlinearity) -> bool:
    """Whether `activation` has closed-form derivatives here (the ReLU family and erf; others: autograd of its
    maps, element by element). Their tangents are exactly symmetric in (1, 2) on a symmetric block."""
    return isinstance(activation, (PiecewiseLinear, Erf))


def tangent(activation: Nonlinearity, c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, dc: torch.Tensor,
            dq1: torch.Tensor, dq2: torch.Tensor, want_dot: bool, factor: float = 1.0) -> Maps:
    """factor (F, G, dF, dG) on a block: F = E[sigma(u) sigma(v)] and G = E[sigma'(u) sigma'(v)] (n, m) for
    c (n, m), q1 (n, 1), q2 (1, m), and their tangents dF (P, n, m) and dG (P, n, m; None unless `want_dot`) from
    the tangents dc (P, n, m), dq1 (P, n, 1), dq2 (P, 1, m); `factor` is the next layer's W_std^2, folded in where
    it costs nothing. dc is overwritten (used as scratch)."""
    if isinstance(activation, PiecewiseLinear):
        return _piecewise_linear(activation.a, c, q1, q2, dc, dq1, dq2, want_dot, factor)
    if isinstance(activation, Erf):
        return _erf(activation, c, q1, q2, dc, dq1, dq2, want_dot, factor)
    return _elementwise(activation, c, q1, q2, dc, dq1, dq2, want_dot, factor)


def tangent_diag(activation: Nonlinearity, q: torch.Tensor, dq: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(F, G, dF, dG) on the diagonal c = q1 = q2 = q (N,), with dq (P, N): exact (no angle)."""
    F, G = activation.sigma_diag(q), activation.sigma_dot_diag(q)
    if isinstance(activation, PiecewiseLinear):
        return F, G, 0.5 * (1 + activation.a ** 2) * dq, torch.zeros_like(dq)
    if isinstance(activation, Erf):
        A, D = 1 + 2 * q, 1 + 4 * q                   # A B - 4 c^2 at c = q1 = q2 = q
        return F, G, G * (1 - 2 * q / A) * dq, G * (4 * q - 2 * A) / D * dq
    with torch.enable_grad():
        x = q.detach().clone().requires_grad_()
        slopes = [_partials(f(x), [x])[0] for f in (activation.sigma_diag, activation.sigma_dot_diag)]
    return F, G, slopes[0] * dq, slopes[1] * dq


def _partials(value: torch.Tensor, args: list[torch.Tensor], retain: bool = False) -> list[torch.Tensor]:
    """d value / d arg for each arg, element by element (value elementwise in the args); zeros for an arg it does
    not depend on (a constant map, as sign's SigmaDot)."""
    if not value.requires_grad:
        return [torch.zeros_like(arg) for arg in args]
    grads = torch.autograd.grad(value, args, torch.ones_like(value), retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(arg) if g is None else g.detach() for arg, g in zip(args, grads, strict=True)]


def _elementwise(activation: Nonlinearity, c, q1, q2, dc, dq1, dq2, want_dot: bool, factor: float) -> Maps:
    """Any map's values and tangents from its partials by autograd, element by element (module docstring)."""
    with torch.enable_grad():
        args = [t.detach().expand(c.shape).clone().requires_grad_() for t in (c, q1, q2)]
        F, G = activation.sigma_both(*args)
        partials = [_partials(F, args, retain=want_dot)] + ([_partials(G, args)] if want_dot else [])

    def combine(p: list[torch.Tensor]) -> torch.Tensor:
        return (dc * p[0]).addcmul_(dq1, p[1]).addcmul_(dq2, p[2]).mul_(factor)

    dG = combine(partials[1]) if want_dot else None
    return F.detach().mul_(factor), G.detach().mul_(factor), combine(partials[0]), dG


def _piecewise_linear(a: float, c, q1, q2, dc, dq1, dq2, want_dot: bool, factor: float) -> Maps:
    """The ReLU family's maps and tangents (module docstring), times `factor`, with C = (1 - a)^2 / 2pi and
    h = factor (F - k c)."""
    C = (1 - a) ** 2 / TWO_PI
    r1, r2 = _inverse_root(q1), _inverse_root(q2)
    rr = r1 * r2                                                  # 1 / s, 0 where a variance is 0
    rho = (c * rr).clamp_(-1.0, 1.0)
    theta = torch.acos(rho)
    sine = torch.sin(theta)
    k = theta.mul_(-C * factor).add_(0.5 * (1 + a * a) * factor)   # factor G: ((1 + a^2) / 2 - C theta) factor
    h = sine.mul(torch.sqrt((C * factor) * q1) * torch.sqrt((C * factor) * q2))   # symmetric in (1, 2)
    F = torch.addcmul(h, k, c)
    m = (dq1 * (0.5 * r1 * r1)) + (dq2 * (0.5 * r2 * r2))        # (P, n, m)
    dF = torch.mul(dc, k).addcmul_(h, m)
    dG = None
    if want_dot:        # factor C / (s max(sin(theta), floor)) (module docstring)
        dG = dc.sub_(m.mul_(c)).mul_(rr.div_(sine.clamp_(min=SINE_FLOOR)).mul_(C * factor))
    return F, k, dF, dG


def _inverse_root(q: torch.Tensor) -> torch.Tensor:
    """1 / sqrt(q), and 0 where q = 0 (a zero variance: no angle, and every tangent of that example is 0)."""
    return torch.where(q > 0, q, math.inf).rsqrt()


def _erf(activation: Erf, c, q1, q2, dc, dq1, dq2, want_dot: bool, factor: float) -> Maps:
    """erf's maps (the activation's own, to rounding the kernel's values) and tangents (module docstring), times
    `factor`."""
    A, B = 1 + 2 * q1, 1 + 2 * q2
    F, G = activation.sigma_both(c, q1, q2)
    D = (4 / math.pi / G) ** 2                       # A B - 4 c^2, as the SigmaDot map formed it
    G = G.mul_(factor)
    dG = None
    if want_dot:
        dG = (dc * (4 * c) - (dq1 * B + dq2 * A)).mul_(G / D)     # grouped: symmetric in (1, 2)
    dF = (dc - c * (dq1 / A + dq2 / B)).mul_(G)
    return F.mul_(factor), G, dF, dG
