"""Nonlinearities whose Gaussian expectations have closed forms.

Each class states its formulas; `c` is the covariance and `q1`, `q2` the variances of the
centred Gaussian pair (u, v). The ReLU family uses the arc-cosine kernels of Cho and Saul (2009)
written with theta = atan2(s, c), s = sqrt(q1 q2 - c^2) (NOTES.md, "ReLU closed forms").
"""

from __future__ import annotations

import math

import torch

from .base import TWO_PI, Activation, angle, angle_from_sine


class PiecewiseLinear(Activation):
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
        `Activation.sigma_both_gap`; scale-free, so `delta` is not needed). With m = (1 + a^2) / 2 (e_i = m q_i),
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


class Identity(Activation):
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


class Erf(Activation):
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
        # (1 + 2 q1)(1 + 2 q2) - 4 c^2 = 1 + 2 (q1 + q2) + 4 s^2, s^2 = q1 q2 - c^2 (`angle`, overflow-safe)
        _, s = angle(c, q1, q2)
        return 4.0 / math.pi / torch.hypot(torch.sqrt(1 + 2 * (q1 + q2)), 2 * s)

    def sigma_diag(self, q):
        """(2/pi) asin(2q / (1 + 2q)) = (2/pi) atan2(2q, sqrt(1 + 4q)): no asin of a ratio rounded near 1 at large q
        (where asin's slope, sqrt(1 + 2q) / 2, would multiply the ratio's rounding)."""
        return 2.0 / math.pi * torch.atan2(2 * q, torch.sqrt(1 + 4 * q))

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
        """(E[erf u erf v], E[erf' u erf' v], G) given sine = sin(theta) accurately (`Activation.sigma_both_gap`).
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


def _exp_sinh_cosh(c, q1, q2, sign: float) -> torch.Tensor:
    """exp(-(q1 + q2)/2) (e^c + sign e^-c) / 2, without overflow (|c| <= (q1 + q2)/2, enforced) and, for sinh, without
    cancellation at small |c|: e^{|c| - h} (1 + sign e^{-2|c|}) / 2, with 1 - e^{-2|c|} = -expm1(-2|c|)."""
    half = 0.5 * (q1 + q2)
    size = torch.minimum(c.abs(), half)     # |c| <= sqrt(q1 q2) <= half, also where rounding pushed c past it
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
    (`Activation.sigma_both_gap`), for cos (sign = +1: E[cos u cos v], E[sin u sin v]) and sin (sign = -1:
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


class Sin(Activation):
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


class Cos(Activation):
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


class Sign(Activation):
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
        """(E[sign(u) sign(v)], 0, G) given sine = sin(theta) accurately (`Activation.sigma_both_gap`): with
        e_i = 1, E = 1 - 2 theta / pi = ((pi - theta) - theta) / pi and G^2 = (1 - E)(1 + E) =
        4 theta (pi - theta) / pi^2, both angles accurate (`angle_from_sine`): G vanishes at theta = 0 and pi."""
        theta, away, _, positive = angle_from_sine(c, q1, q2, sine)
        E = torch.where(positive, (away - theta) / math.pi, 0.0)
        G = torch.where(positive, 2 / math.pi * (theta * away).sqrt(), 1.0).clamp(max=1.0)
        return E, torch.zeros_like(E), G


class Step(Activation):
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
        """(E[step(u) step(v)], 0, G) given sine = sin(theta) accurately (`Activation.sigma_both_gap`): with
        e_i = 1/2 and w = theta / pi, E = (pi - theta) / (2 pi) and G^2 = 1 - 4 E^2 = (1 - 2E)(1 + 2E) = w (2 - w)."""
        theta, away, _, positive = angle_from_sine(c, q1, q2, sine)
        w = theta / math.pi
        E = torch.where(positive, away / TWO_PI, 0.0)
        return E, torch.zeros_like(E), torch.where(positive, (w * (2 - w)).sqrt(), 1.0).clamp(max=1.0)


class Gelu(Activation):
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
        long before the kernel does: D = 1 + q1 + q2 + s^2 with s^2 = q1 q2 - c^2 from `angle`."""
        p1, p2 = 1 + q1, 1 + q2
        _, s = angle(c, q1, q2)
        root_d = torch.hypot(torch.sqrt(p1 + q2), s)  # D >= 1 + q1 + q2 > 0
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
