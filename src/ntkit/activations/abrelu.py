"""ABReLU: sigma(x) = a min(x, 0) + b max(x, 0), two slopes (neural-tangents' `stax.ABRelu(a, b)`; relu is (0, 1),
leaky_relu (alpha, 1), abs (-1, 1)).

Its maps are the arc-cosine kernel of degree 1 (Cho and Saul 2009) for the two slopes: with theta = atan2(s, c),
s = sqrt(q1 q2 - c^2) (`ntkit.activations.base.angle`),

    E[sigma'(u) sigma'(v)] = (a^2 + b^2) / 2 - (a - b)^2 theta / (2 pi)
    E[sigma(u) sigma(v)]   = (a - b)^2 s / (2 pi) + E[sigma'(u) sigma'(v)] c
"""

from __future__ import annotations

import torch

from .._checks import check_real
from .base import TWO_PI, Nonlinearity, angle
from .registry import register


class ABRelu(Nonlinearity):
    """a min(x, 0) + b max(x, 0) for finite slopes a (x < 0) and b (x > 0); the maps in the module docstring."""

    homogeneous = True

    def __init__(self, a: float = 0.0, b: float = 1.0):
        self.a, self.b = float(check_real(a, "a")), float(check_real(b, "b"))
        self.name = f"abrelu(a={self.a!r}, b={self.b!r})"

    def __call__(self, x):
        return self.a * torch.clamp(x, max=0.0) + self.b * torch.clamp(x, min=0.0)

    def derivative(self, x):
        return torch.where(x > 0, self.b, self.a).to(x.dtype)

    def sigma_both(self, c, q1, q2):
        theta, s = angle(c, q1, q2)
        spread = (self.a - self.b) ** 2 / TWO_PI
        dot = 0.5 * (self.a**2 + self.b**2) - spread * theta
        return spread * s + dot * c, dot

    def sigma(self, c, q1, q2):
        return self.sigma_both(c, q1, q2)[0]

    def sigma_dot(self, c, q1, q2):
        return self.sigma_both(c, q1, q2)[1]

    def sigma_diag(self, q):
        return 0.5 * (self.a**2 + self.b**2) * q

    def sigma_dot_diag(self, q):
        return torch.full_like(q, 0.5 * (self.a**2 + self.b**2))


register("abrelu", ABRelu, layer="ABRelu", params=(("a", 0.0), ("b", 1.0)),
         doc="a min(x, 0) + b max(x, 0) (closed form).")

__all__ = ["ABRelu"]
