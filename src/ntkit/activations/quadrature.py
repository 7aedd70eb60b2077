"""Any elementwise nonlinearity, through 2-D Gaussian quadrature in polar coordinates.

For (u, v) ~ N(0, [[q1, c], [c, q2]]) with q1 >= q2 (the integrand g(u) g(v) is symmetric, so the
pair is put in this order first, which makes Gram matrices exactly symmetric) write z = r (cos t, sin t)
standard normal and theta0 = arccos(c / sqrt(q1 q2)) (`angle`); then

    u = sqrt(q1) r cos(t),    v = sqrt(q2) r cos(t - theta0),
    E[g(u) h(v)] = (1 / 2 pi) int_0^{2 pi} dt int_0^inf g(u) h(v) r exp(-r^2 / 2) dr.

u and v change sign on four rays (t = pi/2, 3 pi/2, theta0 + pi/2, theta0 + 3 pi/2), which cut the plane
into four sectors, two of angle theta0 and two of angle pi - theta0, on which neither changes sign.
Activations with a kink or a jump at 0 (elu, selu, hard shrink, ...: sigma or sigma' jumps there) are
smooth on each side of 0, so the integrand is smooth on each sector: Gauss-Legendre in t on each sector
and, in r, the Gauss rule of the weight r exp(-r^2 / 2) on [0, inf) (`radial_rule`, computed once by the
Lanczos process) converge spectrally. A product Gauss-Hermite rule over the plane would converge only
like 1/degree across such a kink, and slowly for steep functions (erf(sqrt(q) z) at large variance q),
which the sector rule also resolves: the nodes in t cluster at the rays where u or v changes sign.

`degree` is the number of radial nodes and of angular nodes per sector, so a map costs 4 degree^2
evaluations (default 20: 1600). Measured largest absolute errors of the two maps against adaptive
integration, for variances q <= 2.3 (including correlations 0.9987 and 1) / for q from 4 to 20 (including
correlation 0.999):

    degree   tanh           erf            elu, selu       softplus        softsign
    12       7e-6 / 1e-4    1e-5 / 3e-4    3e-10 / 2e-7    5e-9 / 3e-7     8e-6 / 4e-5
    16       1e-7 / 7e-6    5e-7 / 3e-5    3e-14 / 3e-10   7e-12 / 1e-8    2e-7 / 5e-6
    20       3e-9 / 4e-6    5e-9 / 3e-6    3e-14 / 2e-13   1e-13 / 7e-10   5e-9 / 6e-7
    32       5e-13 / 2e-8   1e-13 / 1e-7   3e-14 / 6e-14   8e-15 / 3e-13   1e-13 / 2e-9

The former Gauss-Hermite product rule of degree 32 (1024 nodes, the cost of degree 16 here) had 2e-6 at
q = 1, 6e-4 at q = 2 and 3e-2 at q = 5 on erf, and 9e-3 on elu. Kinks away from 0
(hardtanh at +-1, relu6 at 6) still converge only algebraically. The derivative comes from autograd, so
any torch callable works. The diagonal maps are the same rule at c = q1 = q2, so Gram matrices stay
consistent with their diagonals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from .. import _fingerprint
from .base import Nonlinearity, angle, safe_sqrt
from .hermite import HermiteMaps
from .hermite_autograd import gaussian_maps

DEFAULT_DEGREE = 20
# elements x nodes evaluated at once; bounds the temporaries to a few tens of MB
_CHUNK_NODES = 1 << 21


@lru_cache(maxsize=16)
def _radial_rule(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss rule of the weight r exp(-r^2 / 2) on [0, inf), float64 NumPy: the Lanczos process (with full
    reorthogonalization) on a fine Gauss-Legendre discretization of the weight gives its Jacobi matrix,
    whose eigenvalues are the nodes (Golub-Welsch)."""
    top = math.sqrt(4.0 * degree) + 12.0             # r^(2 degree) exp(-r^2 / 2) is negligible past it
    x, w = np.polynomial.legendre.leggauss(8 * degree + 400)
    r = top * (x + 1) / 2
    mass = w * r * np.exp(-r * r / 2)
    basis = np.zeros((degree + 1, r.size))
    basis[0] = np.sqrt(mass / mass.sum())            # the weight has total mass 1
    alpha, beta = np.zeros(degree), np.zeros(degree)
    for k in range(degree):
        vector = r * basis[k] - (beta[k - 1] * basis[k - 1] if k else 0.0)
        alpha[k] = basis[k] @ vector
        for _ in range(2):                           # full reorthogonalization, twice
            vector -= basis[:k + 1].T @ (basis[:k + 1] @ vector)
        beta[k] = np.linalg.norm(vector)
        basis[k + 1] = vector / beta[k]
    nodes = np.linalg.eigvalsh(np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1))
    # weights from the Christoffel function 1 / sum_j p_j(node)^2 (orthonormal p_j by the recurrence):
    # accurate even where they are tiny, unlike the squared eigenvector entries
    previous, current, total = np.zeros_like(nodes), np.ones_like(nodes), np.ones_like(nodes)
    for k in range(degree - 1):
        previous, current = current, ((nodes - alpha[k]) * current - (beta[k - 1] * previous if k else 0.0)) / beta[k]
        total += current * current
    return nodes, 1.0 / total


def radial_rule(degree: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights (summing to 1) of the `degree`-point Gauss rule for int_0^inf g(r) r exp(-r^2/2) dr."""
    nodes, weights = _radial_rule(degree)
    return torch.as_tensor(nodes, dtype=dtype, device=device), torch.as_tensor(weights, dtype=dtype, device=device)


def _angular_rule(degree: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes in (0, 1) and weights (summing to 1) for each sector."""
    x, w = np.polynomial.legendre.leggauss(degree)
    return torch.as_tensor((x + 1) / 2, dtype=dtype, device=device), torch.as_tensor(w / 2, dtype=dtype, device=device)


class Quadrature(Nonlinearity):
    """A nonlinearity given as a torch callable; its Gaussian expectations from the Hermite expansion where it
    converges, by 2-D quadrature otherwise.

    fast: try the Hermite expansion first (`ntkit.activations.hermite`): each call whose variances the truncated
    series resolves to a relative 1e-11 (smooth functions at moderate variances: tanh up to q of about 3, sigmoid,
    softplus and SiLU up to about 10) takes it, at the cost of a few passes over the Gram; the others (a kink or
    jump, as in elu, selu and relu, or larger variances) take the quadrature of `degree`. `last_path` says which
    path the most recent map took ("hermite" or "quadrature"). fast=False: always the quadrature (the reference).
    Maps on the Hermite path are differentiable to any order by autograd and inside torch.func's grad, jacrev,
    jacfwd and hessian.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str | None = None,
                 degree: int = DEFAULT_DEGREE, fingerprint: str | None = None, fast: bool = True):
        if not callable(fn):
            raise TypeError(f"activation must be a name or a callable, got {type(fn).__name__}")
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 2:
            raise ValueError(f"degree must be an integer >= 2, got {degree!r}")
        if not isinstance(fast, bool):
            raise TypeError(f"fast must be True or False, got {type(fast).__name__}")
        self.fn = fn
        self.degree = degree
        self.fast = fast
        self.last_path: str | None = None
        #: whether to refuse the quadrature fallback with a ValueError, set while derivatives of the maps beyond the
        #: first are taken (`ntkit.pinn`), which only the Hermite path gives
        self.require_fast = False
        self._hermite = HermiteMaps(fn)
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint.strip()):
            raise TypeError(f"fingerprint must be a non-empty string naming the function, got {fingerprint!r}")
        #: what a Gram store's fingerprint knows of `fn`: the given name, else a digest of its code, constants,
        #: closure and defaults (`ntkit._fingerprint`); None where it cannot be fingerprinted
        self.fingerprint = fingerprint or _fingerprint.fingerprint(fn)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """sigma'(x) by autograd; differentiable itself when x carries a graph."""
        return self._value_and_derivative(x)[1]

    def _value_and_derivative(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma(x) and sigma'(x) from one evaluation (autograd); both differentiable when x carries a graph."""
        keep_graph = x.requires_grad and torch.is_grad_enabled()
        try:
            with torch.enable_grad():
                xg = x if keep_graph else x.detach().requires_grad_(True)
                y = self.fn(xg)
                if not y.requires_grad:  # a constant function
                    return y, torch.zeros_like(x)
                (grad,) = torch.autograd.grad(y.sum(), xg, create_graph=keep_graph)
        except RuntimeError:     # inside torch.func transforms, which refuse requires_grad_: forward mode
            y, grad = torch.func.jvp(self.fn, (x.detach(),), (torch.ones_like(x),))
        return (y if keep_graph else y.detach()), grad

    def _expect(self, c, q1, q2, derivatives: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(E[sigma(u) sigma(v)], E[sigma'(u) sigma'(v)] if derivatives else None), from one grid."""
        shape = torch.broadcast_shapes(c.shape, q1.shape, q2.shape)
        c, q1, q2 = (t.expand(shape).reshape(-1) for t in (c, q1, q2))
        r, w_r = radial_rule(self.degree, c.dtype, c.device)
        s, w_s = _angular_rule(self.degree, c.dtype, c.device)
        n_t = 4 * s.numel()
        chunk = max(1, _CHUNK_NODES // (n_t * r.numel()))
        maps: list[torch.Tensor] = []
        dots: list[torch.Tensor] = []
        for start in range(0, c.numel(), chunk):
            cc, a, b = c[start:start + chunk, None], q1[start:start + chunk, None], q2[start:start + chunk, None]
            a, b = torch.maximum(a, b), torch.minimum(a, b)              # q1 >= q2
            theta0, _ = angle(cc, a, b)
            # the four sectors between the rays where u or v changes sign: starts and angles (E, 4)
            starts = torch.cat([theta0 - math.pi / 2, torch.full_like(theta0, math.pi / 2), theta0 + math.pi / 2,
                                torch.full_like(theta0, 1.5 * math.pi)], 1)
            widths = torch.cat([math.pi - theta0, theta0, math.pi - theta0, theta0], 1)
            t = (starts[:, :, None] + widths[:, :, None] * s).reshape(-1, n_t)            # (E, 4 n)
            weights = (widths[:, :, None] * w_s / (2 * math.pi)).reshape(-1, n_t)[:, :, None] * w_r
            root_a = safe_sqrt(a)
            slope = cc / torch.clamp(root_a, min=torch.finfo(cc.dtype).tiny)   # sqrt(q2) cos(theta0) = c / sqrt(q1)
            rest = safe_sqrt(b - slope * slope * (a > 0))              # sqrt(q2) sin(theta0)
            cos_t, sin_t = torch.cos(t)[:, :, None], torch.sin(t)[:, :, None]
            u = root_a[:, :, None] * cos_t * r                          # (E, 4 n, degree)
            v = (slope[:, :, None] * cos_t + rest[:, :, None] * sin_t) * r
            if derivatives:
                (fu, du), (fv, dv) = self._value_and_derivative(u), self._value_and_derivative(v)
                dots.append((du * (dv * weights)).sum((-2, -1)))
            else:
                fu, fv = self.fn(u), self.fn(v)
            maps.append((fu * (fv * weights)).sum((-2, -1)))   # weights first: no overflow of fu fv

        def join(parts: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(parts).reshape(shape) if parts else c.reshape(shape)

        return join(maps), (join(dots) if derivatives else None)

    def resolution_error(self, q: torch.Tensor) -> torch.Tensor:
        """(E, 2) relative errors of the diagonal maps E[sigma(u)^2] and E[sigma'(u)^2], u ~ N(0, q), at the E
        variances q, against a 1-D rule that resolves any scale (16-point Gauss-Legendre panels in abs(z), u = sqrt(q) z
        with edges growing geometrically from 1e-3 / sqrt(q) to 13). The 2-D rule samples u no closer to 0 than
        about sqrt(q) times its smallest node, so a nonlinearity that varies on a scale of 1 near 0 (the
        derivative of tanh, sigmoid, softsign) is lost at large variances: at degree 20 its SigmaDot map is off
        by 1e-3 at q = 100, 4e-2 at 1e3, all of it at 1e10 (elu, selu, silu, softplus, mish: below 3e-3 at any
        variance)."""
        q = q.detach().reshape(-1)
        nodes, weights = np.polynomial.legendre.leggauss(16)
        errors = []
        for value in q.tolist():
            low = min(1e-3, 1e-3 / math.sqrt(max(value, 1e-300)))
            edges = np.concatenate([[0.0], np.geomspace(low, 13.0, int(math.log2(13.0 / low)) + 2)])
            half = (edges[1:] - edges[:-1])[:, None] / 2
            z = (half * nodes + (edges[1:] + edges[:-1])[:, None] / 2).ravel()
            w = (half * weights).ravel() * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
            z = torch.as_tensor(np.concatenate([z, -z]), dtype=q.dtype, device=q.device)
            w = torch.as_tensor(np.concatenate([w, w]), dtype=q.dtype, device=q.device)
            f, d = self._value_and_derivative(math.sqrt(value) * z)
            exact = torch.stack([(f * f * w).sum(), (d * d * w).sum()])
            variance = q.new_tensor([value])
            ours = torch.stack([self.sigma_diag(variance)[0], self.sigma_dot_diag(variance)[0]])
            errors.append((ours - exact).abs() / exact.abs().clamp(min=torch.finfo(q.dtype).tiny))
        return torch.stack(errors) if errors else q.new_zeros((0, 2))

    def hermite_resolves(self, q: torch.Tensor, orders: tuple[int, ...] = (0, 1)) -> bool:
        """Whether the Hermite series of sigma^(m), m in `orders`, reaches its tolerance at every variance in q
        (then the maps at these variances take the fast path, and their derivatives exist to that order)."""
        q = torch.as_tensor(q).detach()
        return self._hermite.resolves(q, q, orders)

    def _maps(self, c, q1, q2, derivatives: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Sigma map, SigmaDot map or None): the Hermite series where it resolves the variances, else `_expect`."""
        c, q1, q2 = (torch.as_tensor(t) for t in (c, q1, q2))
        if (self.fast and c.is_floating_point() and c.numel() and q1.numel() and q2.numel()
                and self._hermite.resolves(q1.detach(), q2.detach(), (0, 1) if derivatives else (0,))):
            self.last_path = "hermite"
            maps = gaussian_maps(c, q1.to(c.dtype), q2.to(c.dtype), self._hermite,
                                 ((0, 0), (1, 1)) if derivatives else ((0, 0),))
            return maps[0], (maps[1] if derivatives else None)
        if self.require_fast:
            raise ValueError(
                f"the Hermite expansion of activation {self.name!r} does not converge at these variances (largest "
                f"{float(torch.cat([q1.detach().reshape(-1), q2.detach().reshape(-1)]).max()):.3g}): a kink or jump "
                f"(relu, elu, selu, softsign), or variances too large for its steepness; the derivatives wanted here "
                f"need a smooth activation (tanh, sigmoid, softplus, silu, erf, gelu, sin) at moderate variances")
        self.last_path = "quadrature"
        return self._expect(c, q1, q2, derivatives)

    def sigma(self, c, q1, q2):
        return self._maps(c, q1, q2, derivatives=False)[0]

    def sigma_dot(self, c, q1, q2):
        return self._maps(c, q1, q2, derivatives=True)[1]

    def sigma_both(self, c, q1, q2):
        return self._maps(c, q1, q2, derivatives=True)

    def __repr__(self) -> str:
        code = f"code={self.fingerprint[:16]}" if self.fingerprint is not None else _fingerprint.unfingerprintable(
            f"the activation {self.name!r}; pass fingerprint='...' naming it, or use a registered activation name")
        fast = "" if self.fast else ", fast=False"
        return f"Quadrature({self.name!r}, degree={self.degree}{fast}, {code})"
