"""Exponential nonlinearities with closed-form maps: exp (a e^{bx}), gaussian (a e^{bx^2}) and rbf
(sqrt(2) sin(sqrt(2 gamma) x + pi/4)), with the parameters of neural-tangents' `stax.Exp`, `stax.Gaussian` and
`stax.Rbf`.

For the centred Gaussian pair (u, v) with covariance [[q1, c], [c, q2]] each map is an exponential of a quadratic
form of (c, q1, q2) (the moment generating function of u + v, or of (u^2, v^2)). Values past the dtype's range are
returned as inf, never NaN: the architectures' range checks (`ntkit._range`) then refuse them with the layer and
the fix.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_real
from .base import Nonlinearity, angle, root_plus_sine_squared
from .registry import register


def _real(value, name: str, minimum: float | None = None) -> float:
    return float(check_real(value, name, minimum=minimum))


class Exp(Nonlinearity):
    """sigma(x) = a exp(b x), sigma'(x) = a b exp(b x). With m = (q1 + q2 + 2c) / 2 (half the variance of u + v):
        E[sigma(u) sigma(v)]   = a^2 exp(b^2 m)
        E[sigma'(u) sigma'(v)] = a^2 b^2 exp(b^2 m)
    """

    def __init__(self, a: float = 1.0, b: float = 1.0):
        self.a, self.b = _real(a, "a"), _real(b, "b")
        self.name = f"exp(a={self.a!r}, b={self.b!r})"

    def __call__(self, x):
        return self.a * torch.exp(self.b * x)

    def derivative(self, x):
        return self.a * self.b * torch.exp(self.b * x)

    def _scaled_exp(self, half_sum: torch.Tensor, scale: float) -> torch.Tensor:
        """scale a^2 exp(b^2 half_sum) as one exponential (no 0 * inf where a or b is 0 and the exponent is large)."""
        if self.a == 0.0 or scale == 0.0:
            return torch.zeros_like(half_sum)
        return torch.exp(self.b**2 * half_sum + math.log(scale * self.a**2))

    def sigma(self, c, q1, q2):
        return self._scaled_exp(0.5 * (q1 + q2) + c, 1.0)

    def sigma_dot(self, c, q1, q2):
        return self._scaled_exp(0.5 * (q1 + q2) + c, self.b**2)

    def sigma_diag(self, q):
        return self._scaled_exp(2 * q, 1.0)

    def sigma_dot_diag(self, q):
        return self._scaled_exp(2 * q, self.b**2)


class Gaussian(Nonlinearity):
    """sigma(x) = a exp(b x^2), sigma'(x) = 2 a b x exp(b x^2). With P_i = 1 - 2 b q_i and
    D = P1 P2 - 4 b^2 c^2 = det(I - 2 b Sigma):

        E[sigma(u) sigma(v)]   = a^2 / sqrt(D)
        E[sigma'(u) sigma'(v)] = 4 a^2 b^2 c / D^(3/2)

    finite where I - 2 b Sigma is positive definite (always for b <= 0; for b > 0 where P1, P2 and D are positive,
    on the diagonal where q < 1 / (4b)); elsewhere the expectation is infinite: the diagonal maps refuse such
    variances (`check_domain`), the pair maps return inf.
    """

    def __init__(self, a: float = 1.0, b: float = -1.0):
        self.a, self.b = _real(a, "a"), _real(b, "b")
        self.name = f"gaussian(a={self.a!r}, b={self.b!r})"

    def __call__(self, x):
        return self.a * torch.exp(self.b * x * x)

    def derivative(self, x):
        return 2 * self.a * self.b * x * torch.exp(self.b * x * x)

    def _root_det(self, c, q1, q2) -> torch.Tensor:
        """sqrt(D), D = 1 - 2b (q1 + q2) + 4 b^2 s^2 with s^2 = q1 q2 - c^2 (`root_plus_sine_squared`: overflow-safe,
        smooth at s = 0); 0 where I - 2 b Sigma is not positive definite (then the maps are infinite)."""
        b = self.b
        if b <= 0:
            return root_plus_sine_squared(1 - 2 * b * (q1 + q2), 4 * b * b, c, q1, q2)
        _, s = angle(c, q1, q2)
        det = 1 - 2 * b * (q1 + q2) + (2 * b * s) ** 2
        definite = (1 - 2 * b * q1 > 0) & (1 - 2 * b * q2 > 0) & (det > 0)
        return torch.where(definite, torch.sqrt(torch.where(definite, det, 1.0)), 0.0)

    def _maps(self, c, root) -> tuple[torch.Tensor, torch.Tensor]:
        a2 = self.a**2
        if a2 == 0.0:
            return torch.zeros_like(root), torch.zeros_like(root)
        finite = root > 0
        safe = torch.where(finite, root, 1.0)
        sigma = torch.where(finite, a2 / safe, math.inf)
        dot = torch.where(finite, 4 * a2 * self.b**2 * ((c / safe) / safe) / safe, math.inf)   # inf: not finite
        return sigma, dot

    def sigma_both(self, c, q1, q2):
        return self._maps(c, self._root_det(c, q1, q2))

    def sigma(self, c, q1, q2):
        return self.sigma_both(c, q1, q2)[0]

    def sigma_dot(self, c, q1, q2):
        return self.sigma_both(c, q1, q2)[1]

    def _root_diag(self, q):
        """sqrt(1 - 4 b q); for b > 0 a variance q >= 1 / (4b) is refused (`check_domain`)."""
        self.check_domain(q)
        return torch.sqrt(1 - 4 * self.b * q)

    def check_domain(self, q: torch.Tensor) -> None:
        """For b > 0, E[sigma(u)^2] = a^2 / sqrt(1 - 4 b q) is infinite once the variance q of u reaches 1 / (4b):
        not a number too large for the dtype but a network whose outputs have no second moment. Raises a
        ValueError naming the bound and the largest variance (the off-diagonal maps are finite wherever both
        diagonals are in range: I - 2b Sigma is positive definite when q1 + q2 < 1 / (2b))."""
        if self.b <= 0 or not q.numel():
            return
        largest = float(q.detach().max())
        if not largest < 1 / (4 * self.b):
            raise ValueError(
                f"{self.name}: E[sigma(u)^2] = a^2 / sqrt(1 - 4 b q) is infinite for a pre-activation variance q >= "
                f"1 / (4b) = {1 / (4 * self.b):.4g}, and a variance here reaches {largest:.4g}: use b <= 0, or a "
                "smaller W_std, b_std or input norm so that the variances stay below the bound")

    def sigma_diag(self, q):
        return self._maps(q, self._root_diag(q))[0]

    def sigma_dot_diag(self, q):
        return self._maps(q, self._root_diag(q))[1]


class Rbf(Nonlinearity):
    """sigma(x) = sqrt(2) sin(sqrt(2 gamma) x + pi/4), whose NNGP map is the RBF kernel of the pre-activations:
        E[sigma(u) sigma(v)]   = exp(-gamma (q1 + q2 - 2c))       (1 on the diagonal)
        E[sigma'(u) sigma'(v)] = 2 gamma exp(-gamma (q1 + q2 - 2c))

    (gamma = 1 / (2 l^2) for a length scale l; gamma >= 0).
    """

    def __init__(self, gamma: float = 1.0):
        self.gamma = _real(gamma, "gamma", minimum=0.0)
        self.name = f"rbf(gamma={self.gamma!r})"

    def __call__(self, x):
        return math.sqrt(2) * torch.sin(math.sqrt(2 * self.gamma) * x + math.pi / 4)

    def derivative(self, x):
        return 2 * math.sqrt(self.gamma) * torch.cos(math.sqrt(2 * self.gamma) * x + math.pi / 4)

    def sigma(self, c, q1, q2):
        return torch.exp(-self.gamma * (q1 + q2 - 2 * c).clamp(min=0.0))   # the gap is a variance: >= 0

    def sigma_dot(self, c, q1, q2):
        return 2 * self.gamma * self.sigma(c, q1, q2)

    def sigma_diag(self, q):
        return torch.ones_like(q)

    def sigma_dot_diag(self, q):
        return torch.full_like(q, 2 * self.gamma)


register("exp", Exp, layer="Exp", params=(("a", 1.0), ("b", 1.0)), doc="a exp(b x) (closed form).")
register("gaussian", Gaussian, layer="Gaussian", params=(("a", 1.0), ("b", -1.0)),
         doc="a exp(b x^2) (closed form; b > 0 needs variances below 1 / (4b)).")
register("rbf", Rbf, layer="Rbf", params=(("gamma", 1.0),),
         doc="sqrt(2) sin(sqrt(2 gamma) x + pi/4): the NNGP map is exp(-gamma (u - v)^2) (closed form).")

__all__ = ["Exp", "Gaussian", "Rbf"]
