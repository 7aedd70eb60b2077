"""The piecewise-linear nonlinearities sigma(x) = x for x > 0, a x for x < 0: relu, leaky_relu and abs.

Their maps are the arc-cosine kernels of Cho and Saul (2009), written with theta = atan2(s, c) and
s = sqrt(q1 q2 - c^2) (`ntkit.activations.base.angle`: no arccos of a value that rounding pushed past 1).
"""

from __future__ import annotations

import math

import torch

from .base import TWO_PI, Nonlinearity, angle, angle_from_sine, variance_scale
from .registry import register

#: floor of sin(theta) in the ReLU family's d SigmaDot (theta = 0 is its removable singularity)
SINE_FLOOR = 1e-7


def _inverse_root(q: torch.Tensor) -> torch.Tensor:
    """1 / sqrt(q), and 0 where q = 0 (a zero variance: no angle, and every tangent of that example is 0)."""
    return torch.where(q > 0, q, math.inf).rsqrt()


class PiecewiseLinear(Nonlinearity):
    """sigma(x) = x for x > 0 and a x for x < 0: relu (a = 0), leaky_relu (a), abs (a = -1).

    With theta and s from `angle`:
        E[sigma(u) sigma(v)]   = ((1 - a)^2 s + ((1 + a^2)(pi - theta) + 2 a theta) c) / (2 pi)
        E[sigma'(u) sigma'(v)] = ((1 + a^2)(pi - theta) + 2 a theta) / (2 pi)
    (a = 0 gives the paper's ReLU forms: (s + (pi - theta) c) / 2pi and (pi - theta) / 2pi.)
    """

    homogeneous = True

    def __init__(self, negative_slope: float = 0.0, name: str | None = None):
        self.a = float(negative_slope)
        self.name = name or f"leaky_relu({self.a:g})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, self.a * x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, self.a))

    closed_form_tangents = True

    def tangent(self, c, q1, q2, dc, dq1, dq2, want_dot: bool, factor: float = 1.0):
        """`Nonlinearity.tangent` in closed form. Positively homogeneous of degree 1 in (u, v): with rho = c / s =
        cos(theta), s = sqrt(q1 q2), k = ((1 + a^2)(pi - theta) + 2 a theta) / 2pi and m = (dq1 / q1 + dq2 / q2) / 2,

            F = (1 - a)^2 s sin(theta) / 2pi + k c,    G = k
            dF = k dc + (1 - a)^2 s sin(theta) / 2pi m         (Euler: q1 F_q1 = (F - c F_c) / 2; F_c = G, Price)
            dG = (1 - a)^2 / 2pi (dc - c m) / (s sin(theta))    (= -k'(theta) d theta, d rho = (dc - c m) / s)

        dG has the removable 0 / 0 of d rho / sin(theta) at theta = 0 (x = y, where d rho = 0 exactly), and d rho
        keeps a rounding error of a few eps: sin(theta) is floored at `SINE_FLOOR` = 1e-7 in the division. Below the
        floor d rho = -sin(theta) d theta is at most theta^2 ~ 1e-14, so dG is its rounding error over the floor, a
        few eps / 1e-7 ~ 1e-9 relative, as just above the floor; where x = y exactly, d rho = 0. With
        C = (1 - a)^2 / 2pi and h = factor (F - k c); 1 / sqrt of a zero variance is taken as 0 (no angle: every
        tangent of that example is 0)."""
        a = self.a
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
        if want_dot:        # factor C / (s max(sin(theta), floor))
            dG = dc.sub_(m.mul_(c)).mul_(rr.div_(sine.clamp_(min=SINE_FLOOR)).mul_(C * factor))
        return F, k, dF, dG

    def tangent_diag(self, q, dq):
        """On the diagonal: (1 + a^2) / 2 dq and 0 (no angle at all: exact)."""
        return self.sigma_diag(q), self.sigma_dot_diag(q), 0.5 * (1 + self.a ** 2) * dq, torch.zeros_like(dq)

    def _angular(self, theta: torch.Tensor) -> torch.Tensor:
        a = self.a
        return ((1 + a * a) * (math.pi - theta) + 2 * a * theta) / TWO_PI

    def sigma_both(self, c, q1, q2):
        theta, s = angle(c, q1, q2)
        dot = self._angular(theta)
        return (1 - self.a) ** 2 / TWO_PI * s + dot * c, dot

    def sigma(self, c, q1, q2):
        return self.sigma_both(c, q1, q2)[0]

    def sigma_dot(self, c, q1, q2):
        return self.sigma_both(c, q1, q2)[1]

    def sigma_diag(self, q):
        return 0.5 * (1 + self.a**2) * q

    def sigma_dot_diag(self, q):
        return torch.full_like(q, 0.5 * (1 + self.a**2))

    carries_gap = True

    def sigma_diag_difference(self, q1, q2, delta):
        return 0.5 * (1 + self.a**2) * delta

    def sigma_both_gap(self, c, q1, q2, sine, delta=None):
        """(E[sigma(u) sigma(v)], E[sigma'(u) sigma'(v)], G) given sine = sin(theta) accurately (the contract of
        `Nonlinearity.sigma_both_gap`; scale-free, so `delta` is not needed). With m = (1 + a^2) / 2 (e_i = m q_i),
        kappa = (1 - a)^2 / (2 pi), rho = cos(theta), r = sqrt(q1 q2) and h(theta) = theta cos(theta) - sin(theta) <= 0:
            E = kappa r sine + dot c,   eps = E / (m r) = (kappa sine + dot rho) / m,
            G^2 = 1 - eps^2 = sine^2 + (kappa / m) h(theta) (rho + eps)
        (from e1 e2 - E^2 = m^2 (q1 q2 - c^2) + kappa r h(theta) (m c + E), as theta c - s = r h(theta)); below
        theta = 1/2, where h(theta) = -theta^3 / 3 + ..., as G = sine sqrt(1 + (kappa / m) (h / theta^2)
        (theta / sine)^2 (rho + eps)), with h / theta^2 by its series: no cancellation, no underflow of sine^2.
        abs (a = -1) is even, E(c) = E(-c) and dot(-c) = -dot(c): it is evaluated at |c|, so that G, which
        vanishes at theta = pi too, is as accurate there."""
        flip = (c < 0) if self.a == -1.0 else None
        if flip is not None:
            c = c.abs()
        theta, _, rho, positive = angle_from_sine(c, q1, q2, sine)
        m, kappa = 0.5 * (1 + self.a**2), (1 - self.a) ** 2 / TWO_PI
        dot = self._angular(theta)
        E = kappa * (sine * torch.sqrt(q1) * torch.sqrt(q2)) + dot * c   # no q1 q2 product: no overflow
        slope = (kappa / m) * (rho + (kappa * sine + dot * rho) / m)
        stretch = torch.where(sine > 0, theta / torch.where(sine > 0, sine, 1.0), 1.0)   # theta / sin(theta)
        small = sine * (1 + slope * theta_cos_minus_sin_over_square(theta) * stretch**2).clamp(min=0).sqrt()
        large = (sine * sine + slope * (theta * torch.cos(theta) - torch.sin(theta))).clamp(min=0).sqrt()
        G = torch.where(positive, torch.where(theta < 0.5, small, large), 1.0).clamp(max=1.0)
        return E, (dot if flip is None else torch.where(flip, -dot, dot)), G

    def pair_maps(self, c: torch.Tensor, theta: torch.Tensor | None, q1: torch.Tensor, q2: torch.Tensor,
                  moderate: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Sigma', Theta') on a block of pairs (the layers' records, `ntkit.layers.Activation` without autograd) in
        a few passes over memory, leaving the inputs untouched. With s = sqrt(max(q1 q2 - c^2, 0)) and
        ang = atan2(s, c) (exactly 0 for a position paired with itself, as in `angle`):
            k = ((1 + a^2)(pi - ang) + 2 a ang) / (2 pi),   Sigma' = (1 - a)^2 s / (2 pi) + k c,   Theta' = Theta k
        `moderate`: the variances are known to be 0 or well inside the dtype's range, so q1 q2 is formed as it is;
        otherwise s comes from variances scaled by powers of two (`_root_gap`), which neither overflows nor
        underflows. q1 q2 and c^2 are rounded alike (no fused multiply-add, which would keep the rounding error of
        one product only: s of sqrt(eps) q and an angle of 1e-8 at a position paired with itself)."""
        a = self.a
        if moderate:   # two rounded products, no fused multiply-add: exactly 0 where q1 = q2 = c
            s = (q1 * q2).sub_(c * c).clamp_(min=0.0).sqrt_()
            k = torch.atan2(s, c)
        else:
            s, k = _root_gap(c, q1, q2)
        k.mul_((2 * a - 1 - a * a) / (2 * math.pi)).add_(0.5 * (1 + a * a))
        theta = None if theta is None else theta * k if theta.ndim else theta
        sigma = s.mul_((1 - a) ** 2 / (2 * math.pi)).addcmul_(k, c)
        return sigma, theta

    def __repr__(self) -> str:
        return f"PiecewiseLinear(negative_slope={self.a:g})"


def theta_cos_minus_sin_over_square(theta: torch.Tensor) -> torch.Tensor:
    """h(theta) / theta^2 = (theta cos(theta) - sin(theta)) / theta^2 by its Taylor series
    sum_n (-1)^n 2n theta^(2n-1) / (2n+1)! (accurate to rounding below theta = 1/2, where h itself cancels to
    -theta^3 / 3 and its square underflows)."""
    t2 = theta * theta
    series = torch.zeros_like(theta)
    power = theta                            # theta^(2n-1) for n = 1
    for n in range(1, 8):
        series = series + (-1) ** n * (2 * n) / math.factorial(2 * n + 1) * power
        power = power * t2
    return series



def _root_gap(c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """s = sqrt(max(q1 q2 - c^2, 0)) and atan2(s, c) for variances anywhere in the dtype's range, q1 q2 never
    formed: with q_i 2^-k_i in [1/4, 2) and r_i = 2^-k_i/2 (`base.variance_scale`, powers of two, exact),
    s = sqrt(q1 2^-k1 q2 2^-k2 - (c r1 r2)^2) / (r1 r2), and the angle is that of the scaled pair. Exact where
    q1 = q2 = c."""
    (s1, r1), (s2, r2) = variance_scale(q1), variance_scale(q2)
    ch = c * (r1 * r2)
    root = ((q1 * s1) * (q2 * s2)).sub_(ch * ch).clamp_(min=0.0).sqrt_()     # no fused multiply-add (see pair_maps)
    return root / (r1 * r2), torch.atan2(root, ch)


def leaky_relu(negative_slope: float = 0.01) -> Nonlinearity:
    """Leaky ReLU with any slope (closed form)."""
    return PiecewiseLinear(float(negative_slope), name=f"leaky_relu({float(negative_slope):g})")


def _leaky(negative_slope: float | None = None) -> Nonlinearity:
    """leaky_relu by name (slope 0.01, named "leaky_relu"), or with a slope (named by it)."""
    return PiecewiseLinear(0.01, name="leaky_relu") if negative_slope is None else leaky_relu(negative_slope)


def _leaky_from_torch(module) -> dict:
    return {"negative_slope": float(module.negative_slope)}


register("relu", lambda: PiecewiseLinear(0.0, name="relu"), layer="ReLU", torch_module=torch.nn.ReLU,
         doc="max(x, 0) (closed form).")
register("leaky_relu", _leaky, layer="LeakyReLU", params=(("negative_slope", 0.01),),
         torch_module=torch.nn.LeakyReLU, from_torch=_leaky_from_torch,
         doc="max(x, 0) + negative_slope min(x, 0) (closed form).")
register("abs", lambda: PiecewiseLinear(-1.0, name="abs"), layer="Abs", doc="`|x|` (closed form).")
