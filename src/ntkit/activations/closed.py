"""Nonlinearities whose Gaussian expectations have closed forms: identity, erf, sign, step and gelu (the ReLU family
is in `piecewise.py`, sin and cos in `trig.py`).

Each class states its formulas; `c` is the covariance and `q1`, `q2` the variances of the centred Gaussian pair
(u, v); angles are theta = atan2(s, c), s = sqrt(q1 q2 - c^2) (`ntkit.activations.base.angle`).
"""

from __future__ import annotations

import math

import torch

from .base import TWO_PI, Nonlinearity, angle, angle_from_sine, root_plus_sine_squared
from .piecewise import PiecewiseLinear, leaky_relu
from .registry import register
from .trig import Cos, Sin


class Identity(Nonlinearity):
    """sigma(x) = x: E[uv] = c, E[1] = 1 (a deep linear network)."""

    name = "identity"
    homogeneous = True

    def __call__(self, x):
        return x

    def derivative(self, x):
        return torch.ones_like(x)

    def sigma(self, c, q1, q2):
        return c + 0 * (q1 + q2)

    def sigma_dot(self, c, q1, q2):
        return torch.ones_like(c + q1 + q2)


class Erf(Nonlinearity):
    """sigma(x) = erf(x), sigma'(x) = 2/sqrt(pi) exp(-x^2) (Williams 1997):
        E[erf(u) erf(v)]   = (2/pi) asin(2c / sqrt((1 + 2 q1)(1 + 2 q2)))
        E[erf'(u) erf'(v)] = (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 c^2)
    """

    name = "erf"

    def __call__(self, x):
        return torch.erf(x)

    def derivative(self, x):
        return 2.0 / math.sqrt(math.pi) * torch.exp(-x * x)

    def sigma(self, c, q1, q2):
        ratio = 2 * c / (torch.sqrt(1 + 2 * q1) * torch.sqrt(1 + 2 * q2))   # no q1 q2 product: no overflow
        return 2.0 / math.pi * torch.asin(ratio.clamp(-1.0, 1.0))

    def sigma_dot(self, c, q1, q2):
        # (1 + 2 q1)(1 + 2 q2) - 4 c^2 = 1 + 2 (q1 + q2) + 4 s^2, s^2 = q1 q2 - c^2 (overflow-safe, smooth at s = 0)
        return 4.0 / math.pi / root_plus_sine_squared(1 + 2 * (q1 + q2), 4.0, c, q1, q2)

    def sigma_diag(self, q):
        """(2/pi) asin(2q / (1 + 2q)) = (2/pi) atan2(2q, sqrt(1 + 4q)): no asin of a ratio rounded near 1 at large q
        (where asin's slope, sqrt(1 + 2q) / 2, would multiply the ratio's rounding)."""
        return 2.0 / math.pi * torch.atan2(2 * q, torch.sqrt(1 + 4 * q))

    closed_form_tangents = True

    def tangent(self, c, q1, q2, dc, dq1, dq2, want_dot: bool, factor: float = 1.0):
        """`Nonlinearity.tangent` in closed form: with A = 1 + 2 q1, B = 1 + 2 q2, D = A B - 4 c^2 (>= 1, as the
        SigmaDot map formed it), F_c = G (Price) and

            dF = G (dc - c dq1 / A - c dq2 / B),   dG = G (4 c dc - B dq1 - A dq2) / D."""
        A, B = 1 + 2 * q1, 1 + 2 * q2
        F, G = self.sigma_both(c, q1, q2)
        D = (4 / math.pi / G) ** 2
        G = G.mul_(factor)
        dG = None
        if want_dot:
            dG = (dc * (4 * c) - (dq1 * B + dq2 * A)).mul_(G / D)     # grouped: symmetric in (1, 2)
        dF = (dc - c * (dq1 / A + dq2 / B)).mul_(G)
        return F.mul_(factor), G, dF, dG

    def tangent_diag(self, q, dq):
        """On the diagonal c = q1 = q2 = q: A = 1 + 2q, D = 1 + 4q."""
        F, G = self.sigma_diag(q), self.sigma_dot_diag(q)
        A, D = 1 + 2 * q, 1 + 4 * q
        return F, G, G * (1 - 2 * q / A) * dq, G * (4 * q - 2 * A) / D * dq

    carries_gap = True

    def sigma_diag_difference(self, q1, q2, delta):
        """e1 - e2 = (2/pi)(t2 - t1), e_i = 1 - (2/pi) t_i with t_i = atan2(sqrt(q_i + 1/4), q_i) (the angle of
        [[q_i + 1/2, q_i], [q_i, q_i + 1/2]]), by the sine and cosine of t2 - t1:
            sin = delta (q1 q2 + (q1 + q2) / 4) / (q1 sqrt(q2 + 1/4) + q2 sqrt(q1 + 1/4)) / (A1 A2),
            cos = (q1 q2 + sqrt(q1 + 1/4) sqrt(q2 + 1/4)) / (A1 A2),   A_i = q_i + 1/2 (no cancellation)."""
        a1, a2 = q1 + 0.5, q2 + 0.5
        h1, h2 = torch.sqrt(q1 + 0.25), torch.sqrt(q2 + 0.25)
        both = (q1 / a1) * (q2 / a2)
        s1, s2 = torch.sqrt(a1), torch.sqrt(a2)        # numerator and denominator over sqrt(A1 A2): no overflow
        sine = ((delta / s1 / s2) * (both + 0.25 * ((q1 + q2) / a1) / a2)
                / ((q1 / s1) * (h2 / s2) + (q2 / s2) * (h1 / s1)))
        return 2.0 / math.pi * torch.atan2(sine, both + (h1 / a1) * (h2 / a2))

    def sigma_both_gap(self, c, q1, q2, sine, delta=None):
        """(E[erf u erf v], E[erf' u erf' v], G) given sine = sin(theta) accurately (`Nonlinearity.sigma_both_gap`).
        E = (2/pi) asin(rho~) is the sign kernel of [[A1, c], [c, A2]], A_i = q_i + 1/2, whose sine
        S~^2 = ((q1 + q2) / 2 + 1/4 + q1 q2 sine^2) / (A1 A2) has no cancellation: E = 1 - (2/pi) t with
        t = atan2(S~, rho~), and e_i = 1 - (2/pi) t_i (`sigma_diag_difference`). With d_i = (2/pi)(t - t_i),
            e1 e2 - E^2 = (d1 + d2) E + d1 d2,
        and sin(t - t_1) = S~ rho~_1 - rho~ S~_1 = X1 / ((q1 S~ + c sqrt(q1 + 1/4) / sqrt(A1 A2)) A1 A2),
        X1 = q1^2 q2 sine^2 + (q1 - c)(q1 + c) / 2, with q1 - c = (Dn + delta) / 2 from the gap Dn = q1 + q2 - 2c
        (as for sin and cos, `_trig_both_gap`). erf is odd: evaluated at |c|, E takes the sign of c. float32
        arguments are evaluated in float64 where the device has it (near pairs only: cheap), so that sine^2 does not
        underflow below angles of 1e-19."""
        dtype = c.dtype
        if dtype == torch.float32 and c.device.type != "mps":
            E, dot, G = self.sigma_both_gap(*(t.double() for t in (c, q1, q2, sine)),
                                            None if delta is None else delta.double())
            return E.to(dtype), dot.to(dtype), G.to(dtype)
        flip = c < 0
        c = c.abs()
        _, _, rho, positive = angle_from_sine(c, q1, q2, sine)
        delta = q1 - q2 if delta is None else delta
        r1, r2 = torch.sqrt(q1), torch.sqrt(q2)
        apart = torch.where(r1 + r2 > 0, delta / torch.where(r1 + r2 > 0, r1 + r2, 1.0), 0.0)
        gap = torch.hypot(apart, sine * torch.sqrt(2 * r1 * r2 / (1 + rho))) ** 2      # q1 + q2 - 2c
        a1, a2 = q1 + 0.5, q2 + 0.5
        root_a = torch.sqrt(a1) * torch.sqrt(a2)
        s_t = torch.sqrt(((0.5 * (q1 + q2) + 0.25) / a1) / a2 + (q1 / a1) * (q2 / a2) * sine * sine)
        rho_t = c / root_a
        E = 2.0 / math.pi * torch.atan2(rho_t, s_t)                                    # (2/pi) asin(rho~)
        dot = 4.0 / math.pi / torch.hypot(torch.sqrt(1 + 2 * (q1 + q2)), 2 * (r1 * r2) * sine)

        def apart_angle(qi, qj, ai, sign):      # t - t_i
            hi = torch.sqrt(qi + 0.25)
            x = (qi * (qi / root_a) * (qj / root_a) * sine * sine
                 + 0.5 * ((gap + sign * delta) / 2) * ((qi + c) / root_a) / root_a)          # X_i / (A1 A2)
            den = qi * s_t + c * hi / root_a
            return torch.atan2(torch.where(den > 0, x / torch.where(den > 0, den, 1.0), 0.0),
                               rho_t * (qi / ai) + s_t * (hi / ai))

        d1 = 2.0 / math.pi * apart_angle(q1, q2, a1, 1.0)
        d2 = 2.0 / math.pi * apart_angle(q2, q1, a2, -1.0)
        e1, e2 = 1 - 2.0 / math.pi * torch.atan2(torch.sqrt(q1 + 0.25), q1), \
            1 - 2.0 / math.pi * torch.atan2(torch.sqrt(q2 + 0.25), q2)
        unit = torch.sqrt(e1) * torch.sqrt(e2)
        ok = positive & (unit > 0)
        unit = torch.where(ok, unit, 1.0)
        G2 = ((d1 + d2) / unit) * (E / unit) + (d1 / unit) * (d2 / unit)
        G = torch.where(ok, G2.clamp(min=0).sqrt(), 1.0).clamp(max=1.0)
        return torch.where(flip, -E, E), dot, G



class Sign(Nonlinearity):
    """sigma = sign (values -1, 0, +1), derivative 0 almost everywhere (as autograd has it), so
    the SigmaDot map is 0: gradients do not pass through a sign layer.
        E[sign(u) sign(v)] = 1 - 2 theta / pi  (0 when q1 q2 = 0)
    """

    name = "sign"

    def __call__(self, x):
        return torch.sign(x)

    def derivative(self, x):
        return torch.zeros_like(x)

    def sigma(self, c, q1, q2):
        theta, _ = angle(c, q1, q2)
        return torch.where((q1 > 0) & (q2 > 0), 1 - 2 * theta / math.pi, 0.0)

    def sigma_dot(self, c, q1, q2):
        return torch.zeros_like(c + q1 + q2)

    carries_gap = True

    def sigma_diag_difference(self, q1, q2, delta):
        return (q1 > 0).to(q1.dtype) - (q2 > 0).to(q2.dtype)    # e = 1 for q > 0, 0 at q = 0

    def sigma_both_gap(self, c, q1, q2, sine, delta=None):
        """(E[sign(u) sign(v)], 0, G) given sine = sin(theta) accurately (`Nonlinearity.sigma_both_gap`): with
        e_i = 1, E = 1 - 2 theta / pi = ((pi - theta) - theta) / pi and G^2 = (1 - E)(1 + E) =
        4 theta (pi - theta) / pi^2, both angles accurate (`angle_from_sine`): G vanishes at theta = 0 and pi."""
        theta, away, _, positive = angle_from_sine(c, q1, q2, sine)
        E = torch.where(positive, (away - theta) / math.pi, 0.0)
        G = torch.where(positive, 2 / math.pi * (theta * away).sqrt(), 1.0).clamp(max=1.0)
        return E, torch.zeros_like(E), G


class Step(Nonlinearity):
    """sigma = Heaviside step 1{x > 0}, derivative 0 almost everywhere:
        E[step(u) step(v)] = (pi - theta) / (2 pi)  (0 when q1 q2 = 0)
    """

    name = "step"

    def __call__(self, x):
        return (x > 0).to(x.dtype)

    def derivative(self, x):
        return torch.zeros_like(x)

    def sigma(self, c, q1, q2):
        theta, _ = angle(c, q1, q2)
        return torch.where((q1 > 0) & (q2 > 0), (math.pi - theta) / TWO_PI, 0.0)

    def sigma_dot(self, c, q1, q2):
        return torch.zeros_like(c + q1 + q2)

    carries_gap = True

    def sigma_diag_difference(self, q1, q2, delta):
        return 0.5 * ((q1 > 0).to(q1.dtype) - (q2 > 0).to(q2.dtype))    # e = 1/2 for q > 0, 0 at q = 0

    def sigma_both_gap(self, c, q1, q2, sine, delta=None):
        """(E[step(u) step(v)], 0, G) given sine = sin(theta) accurately (`Nonlinearity.sigma_both_gap`): with
        e_i = 1/2 and w = theta / pi, E = (pi - theta) / (2 pi) and G^2 = 1 - 4 E^2 = (1 - 2E)(1 + 2E) = w (2 - w)."""
        theta, away, _, positive = angle_from_sine(c, q1, q2, sine)
        w = theta / math.pi
        E = torch.where(positive, away / TWO_PI, 0.0)
        return E, torch.zeros_like(E), torch.where(positive, (w * (2 - w)).sqrt(), 1.0).clamp(max=1.0)


class Gelu(Nonlinearity):
    """sigma(x) = x Phi(x) (exact GELU), sigma'(x) = Phi(x) + x phi(x).

    With D = (1 + q1)(1 + q2) - c^2 and r = c / sqrt((1 + q1)(1 + q2)) (derived by Stein's lemma
    and Gaussian tilting; checked against quadrature in the tests):
        E[sigma(u) sigma(v)]   = c/4 + c asin(r)/(2 pi)
                                 + (q1 q2 (1 + q1)(1 + q2) + c^2 (1 - q1 q2)) / (2 pi (1 + q1)(1 + q2) sqrt(D))
        E[sigma'(u) sigma'(v)] = 1/4 + asin(r)/(2 pi) + c (1/(1 + q1) + 1/(1 + q2)) / (2 pi sqrt(D))
                                 + c / (2 pi D^(3/2))
    """

    name = "gelu"

    def __call__(self, x):
        return torch.nn.functional.gelu(x)

    def derivative(self, x):
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        return cdf + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    @staticmethod
    def _parts(c, q1, q2):
        """1 + q1, 1 + q2, sqrt(D) and asin(r), without the products q1 q2 or (1 + q1)(1 + q2), which overflow
        long before the kernel does: D = 1 + q1 + q2 + s^2 with s^2 = q1 q2 - c^2 (`root_plus_sine_squared`)."""
        p1, p2 = 1 + q1, 1 + q2
        root_d = root_plus_sine_squared(p1 + q2, 1.0, c, q1, q2)  # D >= 1 + q1 + q2 > 0
        r = (c / (torch.sqrt(p1) * torch.sqrt(p2))).clamp(-1.0, 1.0)
        return p1, p2, root_d, r

    @staticmethod
    def _asin_r(c, root_d):
        """asin(r) = atan2(c, sqrt(p1 p2 - c^2)) = atan2(c, sqrt(D)): no rounding of r to 1 at large variances,
        where d asin(r) / dr = 1 / sqrt(1 - r^2) would be infinite and the gradients NaN."""
        return torch.atan2(c, root_d)

    def sigma(self, c, q1, q2):
        # the tail (q1 q2 p1 p2 + c^2 (1 - q1 q2)) / (2 pi p1 p2 sqrt(D)) = ((q1/p1)(q2/p2) D + r^2) / (2 pi sqrt(D))
        p1, p2, root_d, r = self._parts(c, q1, q2)
        tail = ((q1 / p1) * (q2 / p2) * root_d + r * (r / root_d)) / TWO_PI
        return c / 4 + c * self._asin_r(c, root_d) / TWO_PI + tail

    def sigma_dot(self, c, q1, q2):
        p1, p2, root_d, r = self._parts(c, q1, q2)
        return (0.25 + self._asin_r(c, root_d) / TWO_PI + c * (1 / p1 + 1 / p2) / (TWO_PI * root_d)
                + c / root_d / root_d / (TWO_PI * root_d))


register("identity", Identity, aliases=("linear",), doc="x (closed form: a deep linear network).")
register("erf", Erf, layer="Erf", doc="erf(x) (closed form).")
register("sign", Sign, doc="sign(x) (closed form).")
register("step", Step, doc="1 for x > 0, else 0 (closed form).")
register("gelu", Gelu, layer="GELU", torch_module=torch.nn.GELU,
         from_torch=lambda module: {} if module.approximate == "none" else None, doc="x Phi(x) (closed form).")

__all__ = ["Cos", "Erf", "Gelu", "Identity", "PiecewiseLinear", "Sign", "Sin", "Step", "leaky_relu"]
