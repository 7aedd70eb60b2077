"""sin and cos: their Gaussian expectations are exponentials of the variances times sinh and cosh of the covariance.

The maps depend on the gap q1 + q2 - 2c, not on the angle alone; `_trig_both_gap` carries it from the sine of the
angle (`ntkit.coincident`).
"""

from __future__ import annotations

import torch

from .base import Nonlinearity, angle_from_sine
from .registry import register


def _exp_sinh_cosh(c, q1, q2, sign: float) -> torch.Tensor:
    """exp(-(q1 + q2)/2) (e^c + sign e^-c) / 2, without overflow (|c| <= (q1 + q2)/2, enforced) and, for sinh, without
    cancellation at small |c|: e^{|c| - h} (1 + sign e^{-2|c|}) / 2, with 1 - e^{-2|c|} = -expm1(-2|c|)."""
    half = 0.5 * (q1 + q2)
    # |c| <= sqrt(q1 q2) <= half, also where rounding pushed c past it; |c| itself at the tie (identical inputs), so
    # that the derivatives in c, q1, q2 are those of the formula there (torch.minimum would share them)
    size = torch.where(c.abs() <= half, c.abs(), half)
    outer = 0.5 * torch.exp(size - half)
    if sign > 0:
        return outer * (1 + torch.exp(-2 * size))
    return torch.sign(c) * outer * -torch.expm1(-2 * size)


def _exp_difference(q1, q2, delta, k: float) -> torch.Tensor:
    """e^{-k q1} - e^{-k q2} from delta = q1 - q2 given accurately: -sign(delta) e^{-k min(q1, q2)} (1 - e^{-k |delta|})
    (no cancellation, no overflow)."""
    return -torch.sign(delta) * torch.exp(-k * torch.minimum(q1, q2)) * -torch.expm1(-k * delta.abs())


def _trig_both_gap(c, q1, q2, sine, sign: float, delta=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(e^{-(q1+q2)/2} cosh(c), e^{-(q1+q2)/2} sinh(c), G) from the sine of the angle given accurately
    (`Nonlinearity.sigma_both_gap`), for cos (sign = +1: E[cos u cos v], E[sin u sin v]) and sin (sign = -1:
    E[sin u sin v] is the sinh term, E[cos u cos v] the cosh term; the caller orders them).

    Both expectations depend on the two gaps D-+ = q1 + q2 -+ 2c, the variances of u - v and u + v. The near one,
    Dn = q1 + q2 - 2|c| (D- for c >= 0, D+ for c < 0), cancels to eps (q1 + q2) from (c, q1, q2) (an error of about
    1 in the exponent at variances of 1e7 in float32); from the sine, with rho = c / sqrt(q1 q2),
        Dn = (sqrt(q1) - sqrt(q2))^2 + 2 sqrt(q1 q2) (1 - |rho|),   1 - |rho| = sine^2 / (1 + |rho|),
    both terms nonnegative, with sqrt(q1) - sqrt(q2) = delta / (sqrt(q1) + sqrt(q2)) from delta = q1 - q2 given
    accurately (`ntkit.coincident` carries it: the rounded variances keep only eps q of it). Then
    e^{-(q1+q2)/2} cosh(c) = e^{-Dn/2} (1 + e^{-2|c|}) / 2 and the sinh term sign(c) e^{-Dn/2} (1 - e^{-2|c|}) / 2.
    With e_i = (1 +- e^{-2 q_i}) / 2 (`sigma_diag`), E the Sigma map and
    Df = Dn + 4|c| the far gap, the next angle's sine G^2 = (e1 e2 - E^2) / (e1 e2) comes from
        4 (e1 e2 - E^2) = (1 - e^{-Dn})(1 - e^{-Df}) +- (e^{-q1} - e^{-q2})^2
    (+ for cos, - for sin): for cos both terms are nonnegative (no cancellation); for sin they cancel only where
    q1 != q2 at small variances (sin nearly linear there), to about eps absolute in G^2, as the plain formulas."""
    _, _, rho, _ = angle_from_sine(c, q1, q2, sine)
    r1, r2 = torch.sqrt(q1), torch.sqrt(q2)
    delta = q1 - q2 if delta is None else delta
    apart_roots = torch.where(r1 + r2 > 0, delta / torch.where(r1 + r2 > 0, r1 + r2, 1.0), 0.0)   # sqrt q1 - sqrt q2
    root_near = torch.hypot(apart_roots, sine * torch.sqrt(2 * r1 * r2 / (1 + rho.abs())))   # sqrt(Dn): no underflow
    near = root_near * root_near
    size = c.abs()
    half = 0.5 * torch.exp(-0.5 * near)
    cosh_term = half * (1 + torch.exp(-2 * size))
    sinh_term = torch.sign(c) * half * -torch.expm1(-2 * size)
    if sign > 0:
        e1, e2 = 0.5 * (1 + torch.exp(-2 * q1)), 0.5 * (1 + torch.exp(-2 * q2))
    else:          # -expm1: accurate at small variances
        e1, e2 = -0.5 * torch.expm1(-2 * q1), -0.5 * torch.expm1(-2 * q2)
    unit = 2 * torch.sqrt(e1) * torch.sqrt(e2)                          # 2 sqrt(e1 e2)
    positive = unit > 0
    unit = torch.where(positive, unit, 1.0)
    apart = _exp_difference(q1, q2, delta, 1.0).abs() / unit             # |e^{-q1} - e^{-q2}| / (2 sqrt(e1 e2))
    # sqrt((1 - e^{-Dn})(1 - e^{-Df})) / (2 sqrt(e1 e2)) as sqrt(Dn) sqrt(phi(Dn) (1 - e^{-Df})) / (2 sqrt(e1 e2)),
    # phi(x) = (1 - e^{-x}) / x: no square of a small sine
    phi = torch.where(near > 0, -torch.expm1(-near) / torch.where(near > 0, near, 1.0), 1.0)
    gaps = root_near * torch.sqrt(phi * -torch.expm1(-(near + 4 * size))) / unit
    if sign > 0:
        G = torch.hypot(gaps, apart)
    else:
        G = (gaps - apart).clamp(min=0).sqrt() * (gaps + apart).sqrt()
    G = torch.where(positive, G, 1.0).clamp(max=1.0)
    return cosh_term, sinh_term, G


class Sin(Nonlinearity):
    """sigma = sin: E[sin u sin v] = e^{-(q1+q2)/2} sinh(c), E[cos u cos v] = e^{-(q1+q2)/2} cosh(c)."""

    name = "sin"

    def __call__(self, x):
        return torch.sin(x)

    def derivative(self, x):
        return torch.cos(x)

    def sigma(self, c, q1, q2):
        return _exp_sinh_cosh(c, q1, q2, -1.0)

    def sigma_dot(self, c, q1, q2):
        return _exp_sinh_cosh(c, q1, q2, +1.0)

    carries_gap = True

    def sigma_both_gap(self, c, q1, q2, sine, delta=None):
        """(E[sin u sin v], E[cos u cos v], G) with the gap carried by the sine (`_trig_both_gap`)."""
        cosh_term, sinh_term, G = _trig_both_gap(c, q1, q2, sine, -1.0, delta)
        return sinh_term, cosh_term, G

    def sigma_diag_difference(self, q1, q2, delta):
        return -_exp_difference(q1, q2, delta, 2.0) / 2      # e = (1 - e^{-2q}) / 2


class Cos(Nonlinearity):
    """sigma = cos: E[cos u cos v] = e^{-(q1+q2)/2} cosh(c), E[sin u sin v] = e^{-(q1+q2)/2} sinh(c)."""

    name = "cos"

    def __call__(self, x):
        return torch.cos(x)

    def derivative(self, x):
        return -torch.sin(x)

    def sigma(self, c, q1, q2):
        return _exp_sinh_cosh(c, q1, q2, +1.0)

    def sigma_dot(self, c, q1, q2):
        return _exp_sinh_cosh(c, q1, q2, -1.0)

    carries_gap = True

    def sigma_both_gap(self, c, q1, q2, sine, delta=None):
        """(E[cos u cos v], E[sin u sin v], G) with the gap carried by the sine (`_trig_both_gap`)."""
        return _trig_both_gap(c, q1, q2, sine, +1.0, delta)

    def sigma_diag_difference(self, q1, q2, delta):
        return _exp_difference(q1, q2, delta, 2.0) / 2       # e = (1 + e^{-2q}) / 2



register("sin", Sin, doc="sin(x) (closed form).")
register("cos", Cos, doc="cos(x) (closed form).")
