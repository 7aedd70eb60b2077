"""Any elementwise nonlinearity, through 2-D Gauss-Hermite quadrature.

For (u, v) ~ N(0, [[q1, c], [c, q2]]) with q1 >= q2 (the integrand g(u) g(v) is symmetric, so the
pair is put in this order first, which makes Gram matrices exactly symmetric) write
u = sqrt(q1) z1 and v = (c / sqrt(q1)) z1 + sqrt(q2 - c^2 / q1) z2 with z1, z2 iid N(0, 1); then

    E[g(u) h(v)] ~= sum_ij w_i w_j g(u(z_i)) h(v(z_i, z_j))

with the `degree` probabilists' Gauss-Hermite nodes z_i and weights w_i (normalized to sum 1).
The rule is exact for polynomials of degree <= 2 degree - 1 in each variable. Its accuracy falls
as the pre-activation variance q grows, because sigma(sqrt(q) z) steepens; measured on erf (absolute
error of the SigmaDot map, the harder of the two):

    degree   q = 0.5   q = 1    q = 2    q = 5
    32       3e-10     2e-6     6e-4     3e-2
    64       1e-16     5e-12    5e-7     1e-3
    128      2e-16     2e-16    3e-13    3e-6

Where the derivative jumps (elu, selu at 0) the SigmaDot map converges only like 1/degree: its
error near the diagonal is about 9e-3 at degree 32, 2e-3 at 128, 1e-3 at 256 (cost grows like
degree^2); the Sigma map is about 100 times more accurate. The derivative comes from
autograd, so any torch callable works. At c = q1 = q2 the rule reduces to the 1-D rule used on
the diagonal, so Gram matrices stay consistent with their diagonals.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .base import Activation, safe_sqrt

DEFAULT_DEGREE = 32
_TINY = 1e-30
# elements x nodes evaluated at once; bounds the temporaries to a few tens of MB
_CHUNK_NODES = 1 << 21


def hermite_rule(degree: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights (summing to 1) of the `degree`-point rule for E_{z ~ N(0,1)}[g(z)]."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(degree)
    weights = weights / weights.sum()
    return (
        torch.as_tensor(nodes, dtype=dtype, device=device),
        torch.as_tensor(weights, dtype=dtype, device=device),
    )


class Quadrature(Activation):
    """A nonlinearity given as a torch callable; its Gaussian expectations by quadrature."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str | None = None,
                 degree: int = DEFAULT_DEGREE):
        if not callable(fn):
            raise TypeError(f"activation must be a name or a callable, got {type(fn).__name__}")
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 2:
            raise ValueError(f"degree must be an integer >= 2, got {degree!r}")
        self.fn = fn
        self.degree = degree
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """sigma'(x) by autograd; differentiable itself when x carries a graph."""
        keep_graph = x.requires_grad and torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if keep_graph else x.detach().requires_grad_(True)
            y = self.fn(xg)
            if not y.requires_grad:  # a constant function
                return torch.zeros_like(x)
            (grad,) = torch.autograd.grad(y.sum(), xg, create_graph=keep_graph)
        return grad

    def _expect(self, c, q1, q2, use_derivative: bool) -> torch.Tensor:
        shape = torch.broadcast_shapes(c.shape, q1.shape, q2.shape)
        c, q1, q2 = (t.expand(shape).reshape(-1) for t in (c, q1, q2))
        fn = self.derivative if use_derivative else self.fn
        z, w = hermite_rule(self.degree, c.dtype, c.device)
        chunk = max(1, _CHUNK_NODES // self.degree**2)
        out = []
        for start in range(0, c.numel(), chunk):
            cc, a, b = c[start:start + chunk, None], q1[start:start + chunk, None], q2[start:start + chunk, None]
            a, b = torch.maximum(a, b), torch.minimum(a, b)              # q1 >= q2
            root_a = safe_sqrt(a)
            slope = cc / torch.clamp(root_a, min=_TINY)                 # c / sqrt(q1)
            rest = safe_sqrt(b - slope * slope * (a > 0))              # sqrt(q2 - c^2 / q1)
            u = (root_a * z)[:, :, None]                                # (E, deg_i, 1)
            v = (slope * z)[:, :, None] + (rest * z)[:, None, :]        # (E, deg_i, deg_j)
            values = fn(u) * fn(v) * w[:, None] * w[None, :]
            out.append(values.sum((-2, -1)))
        return torch.cat(out).reshape(shape) if out else c.reshape(shape)

    def sigma(self, c, q1, q2):
        return self._expect(c, q1, q2, use_derivative=False)

    def sigma_dot(self, c, q1, q2):
        return self._expect(c, q1, q2, use_derivative=True)

    def _expect_diag(self, q, use_derivative: bool) -> torch.Tensor:
        fn = self.derivative if use_derivative else self.fn
        z, w = hermite_rule(self.degree, q.dtype, q.device)
        values = fn(safe_sqrt(q)[..., None] * z)
        return (values * values * w).sum(-1)

    def sigma_diag(self, q):
        return self._expect_diag(q, use_derivative=False)

    def sigma_dot_diag(self, q):
        return self._expect_diag(q, use_derivative=True)

    def __repr__(self) -> str:
        return f"Quadrature({self.name!r}, degree={self.degree})"
