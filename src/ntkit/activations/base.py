"""The interface every nonlinearity implements, and the numerically safe helpers they share.

For a nonlinearity sigma and a centred 2-D Gaussian (u, v) with covariance [[q1, c], [c, q2]]
an activation provides the two expectations the paper's recursion needs (Proposition 1, Theorem 1):

    Sigma map:     E[sigma(u) sigma(v)]
    SigmaDot map:  E[sigma'(u) sigma'(v)]

Arguments are tensors that broadcast against each other; the result has their broadcast shape.
"""

from __future__ import annotations

import math

import torch

TWO_PI = 2.0 * math.pi


class _SafeSqrt(torch.autograd.Function):
    """sqrt(max(x, 0)) whose gradient is finite: zero where x <= 0 (the one-sided limit we need
    for identical or collinear points, where the arc-cosine formulas have a removable kink)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.sqrt(torch.clamp(x, min=0.0))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (root,) = ctx.saved_tensors
        return _SafeSqrt.derivative_times(root, grad)

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (root,) = ctx.saved_tensors
        return _SafeSqrt.derivative_times(root, tangent)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def derivative_times(root: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """value / (2 sqrt(x)) where x > 0, and 0 where x <= 0."""
        positive = root > 0
        return torch.where(positive, value / (2.0 * torch.where(positive, root, 1.0)), 0.0)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(max(x, 0)) with a finite gradient everywhere."""
    return _SafeSqrt.apply(x)


def angle(c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The angle theta = arccos(c / sqrt(q1 q2)) in [0, pi] and s = sqrt(q1 q2 - c^2).

    Computed as atan2(s, c) with a clamped square root: no arccos of a value that rounding pushed past 1 (whose
    error near theta = 0 would be sqrt(eps)), and theta = 0 (not NaN) when q1 = q2 = c = 0.
    """
    scales = _power_of_two_scales(c, q1, q2)
    if scales is None:
        s = safe_sqrt(q1 * q2 - c * c)
    else:  # q1 q2 would overflow or underflow: the same formula on values scaled by 2^-k1, 2^-k2 (exact)
        (s1, r1), (s2, r2) = scales
        s = safe_sqrt((q1 * s1) * (q2 * s2) - ((c * r1) * r2) ** 2) / r1 / r2
    both_zero = (s == 0) & (c == 0)
    theta = torch.atan2(s, torch.where(both_zero, torch.ones_like(c), c))
    return theta, s


def root_plus_sine_squared(a2: torch.Tensor, k2: float, c: torch.Tensor, q1: torch.Tensor,
                           q2: torch.Tensor) -> torch.Tensor:
    """sqrt(a2 + k2 s^2) with s^2 = q1 q2 - c^2, for maps that are smooth at coincident pairs (a2 >= 1: erf, gelu,
    gaussian). s^2 is used as such, not as the square of `angle`'s s: d s / d c is infinite at s = 0 (identical
    inputs), so the square of a clamped s has a zero derivative there where d s^2 / d c = -2c, and second
    derivatives in the inputs (physics-informed kernels) would be wrong on the diagonal. Where q1 q2 would leave
    the dtype's range the scaled `angle` is used (values as accurate; derivatives at s = 0 then as `angle`'s).
    Rounding can make s^2 slightly negative at a pair that is identical up to rounding; a2 / 2 bounds the sum
    from below (reached only where eps q1 q2 > a2, at variances past 1 / eps)."""
    if _power_of_two_scales(c, q1, q2) is None:
        return torch.sqrt(torch.maximum(a2 + k2 * (q1 * q2 - c * c), 0.5 * a2))
    _, s = angle(c, q1, q2)
    return torch.hypot(torch.sqrt(a2), math.sqrt(k2) * s)


def angle_from_sine(c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor,
                    sine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(theta, pi - theta, rho, positive) from the sine of the angle given accurately (`ntkit.coincident`):
    theta = atan2(sine, rho) and pi - theta = atan2(sine, -rho), both accurate to rounding (the second where theta
    is near pi), rho = c / sqrt(q1 q2) formed without the product q1 q2, and the mask q1 > 0 and q2 > 0;
    theta = 0, pi - theta = pi and rho = 0 where a variance is 0."""
    positive = (q1 > 0) & (q2 > 0)
    one = torch.ones_like(c)
    rho = torch.where(positive, c / torch.where(positive, q1, one).sqrt() / torch.where(positive, q2, one).sqrt(),
                      0.0)
    sine = torch.where(positive, sine, 0.0)
    return (torch.atan2(sine, torch.where(positive, rho, one)), torch.atan2(sine, torch.where(positive, -rho, -one)),
            rho, positive)


def _power_of_two_scales(c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor):
    """None when q1 q2 and c^2 are safely inside the dtype's range (the usual case, decided from the extremes
    of the variances, which are vectors in a Gram block: `moderate`); else `variance_scale` of each variance."""
    if bool(moderate(q1.detach()) & moderate(q2.detach())):
        return None
    return variance_scale(q1), variance_scale(q2)


def moderate(q: torch.Tensor) -> torch.Tensor:
    """Whether all variances in q are 0 or within [4 sqrt(tiny), sqrt(max) / 4] of their dtype (a 0-d bool tensor,
    no synchronization): then products of two of them, and of two covariances they bound, stay normal numbers."""
    if not q.numel():
        return torch.ones((), dtype=torch.bool, device=q.device)
    info = torch.finfo(q.dtype)
    smallest = torch.where(q > 0, q, math.inf).amin()
    return (smallest >= 4 * math.sqrt(info.tiny)) & (q.amax() <= math.sqrt(info.max) / 4)


def variance_scale(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2^-k, 2^-k/2) for each variance, 2^k (k even) its binary order, so that q 2^-k lies in [1/4, 2) however far
    apart two variances are (where 2^-k is representable: k is clamped to the normal range) and rescaling is
    exact. Products of scaled variances then neither overflow nor underflow."""
    top = int(torch.frexp(torch.tensor(torch.finfo(q.dtype).max, dtype=q.dtype)).exponent) - 2   # 126 in float32
    exponent = torch.frexp(q.detach()).exponent                                # q = m 2^e, m in [1/2, 1)
    half = torch.div(exponent, 2, rounding_mode="floor").clamp(min=-top // 2, max=top // 2)
    root = torch.ldexp(torch.ones_like(q.detach()), -half)                     # 2^-k/2 with k = 2 half
    return root * root, root


class Nonlinearity:
    """A nonlinearity with its derivative and the two Gaussian expectations of the paper (its maps; the layer that
    applies it in an architecture is `ntkit.layers.Activation`).

    Subclasses implement `__call__`, `derivative`, `sigma` and `sigma_dot`; `sigma_both`,
    `sigma_diag` and `sigma_dot_diag` have generic defaults that subclasses may speed up.
    """

    name: str = "activation"
    #: True when the closed forms depend on (c, q1, q2) only through the angle and sqrt(q1 q2)
    #: scaling as for ReLU; used by property tests (scale behaviour).
    homogeneous: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """sigma'(x), elementwise."""
        raise NotImplementedError

    def sigma(self, c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
        """E[sigma(u) sigma(v)] for (u, v) ~ N(0, [[q1, c], [c, q2]])."""
        raise NotImplementedError

    def sigma_dot(self, c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
        """E[sigma'(u) sigma'(v)] for (u, v) ~ N(0, [[q1, c], [c, q2]])."""
        raise NotImplementedError

    def sigma_both(
        self, c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(Sigma map, SigmaDot map) together; closed forms share their intermediates."""
        return self.sigma(c, q1, q2), self.sigma_dot(c, q1, q2)

    #: True for the activations that implement `sigma_both_gap` (then `ntkit.coincident` recomputes the
    #: kernels of nearly coincident inputs without cancellation).
    carries_gap: bool = False

    def sigma_both_gap(
        self, c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, sine: torch.Tensor,
        delta: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(E[sigma(u) sigma(v)], E[sigma'(u) sigma'(v)], G) given sine = sin(theta) = sqrt(1 - c^2 / (q1 q2))
        accurately (not from c, q1, q2, which keep only sqrt(eps) of a small angle), where G is the same for the
        pair (sigma(u), sigma(v)): G = sqrt(1 - E^2 / (e1 e2)), e_i = `sigma_diag`(q_i), computed without
        cancellation (G = 1 where e1 e2 = 0). Both sines lie in [0, 1]. `delta` is q1 - q2 given accurately (None:
        q1 - q2 as rounded), which the maps that depend on the gap q1 + q2 - 2c rather than on the angle alone (sin,
        cos) need. Only activations with `carries_gap` implement it."""
        raise NotImplementedError

    def sigma_diag_difference(self, q1: torch.Tensor, q2: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """E[sigma(u)^2] - E[sigma(v)^2] for u ~ N(0, q1), v ~ N(0, q2) given delta = q1 - q2 accurately (not from
        the two values, which keep only eps q of a small difference); only activations with `carries_gap`
        implement it."""
        raise NotImplementedError

    def sigma_diag(self, q: torch.Tensor) -> torch.Tensor:
        """E[sigma(u)^2] for u ~ N(0, q)."""
        return self.sigma(q, q, q)

    def sigma_dot_diag(self, q: torch.Tensor) -> torch.Tensor:
        """E[sigma'(u)^2] for u ~ N(0, q)."""
        return self.sigma_dot(q, q, q)

    #: True where `tangent` and `tangent_diag` are closed forms (exactly symmetric in (1, 2) on a symmetric block);
    #: the defaults take the partials of the maps by autograd
    closed_form_tangents: bool = False

    def tangent(self, c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, dc: torch.Tensor, dq1: torch.Tensor,
                dq2: torch.Tensor, want_dot: bool, factor: float = 1.0) -> Tangents:
        """How the maps move when the covariance moves: factor (F, G, dF, dG) on a block, F and G the Sigma and
        SigmaDot maps (n, m) at c (n, m), q1 (n, 1), q2 (1, m), and dF = F_c dc + F_q1 dq1 + F_q2 dq2 (P, n, m) and
        dG likewise (None unless `want_dot`) for tangents dc (P, n, m), dq1 (P, n, 1), dq2 (P, 1, m), one per
        hyperparameter (`ntkit.sklearn.gradient`); `factor` is the next layer's W_std^2, folded in. dc may be
        overwritten (scratch). Default: the partials of the maps by reverse-mode autograd, element by element
        (each output depends on its own arguments only, so one backward pass with unit cotangents gives every
        partial of a block): as exact as the maps' autograd derivatives."""
        with torch.enable_grad():
            args = [t.detach().expand(c.shape).clone().requires_grad_() for t in (c, q1, q2)]
            F, G = self.sigma_both(*args)
            partials = [_partials(F, args, retain=want_dot)] + ([_partials(G, args)] if want_dot else [])

        def combine(p: list[torch.Tensor]) -> torch.Tensor:
            return (dc * p[0]).addcmul_(dq1, p[1]).addcmul_(dq2, p[2]).mul_(factor)

        dG = combine(partials[1]) if want_dot else None
        return F.detach().mul_(factor), G.detach().mul_(factor), combine(partials[0]), dG

    def tangent_diag(self, q: torch.Tensor, dq: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(F, G, dF, dG) on the diagonal c = q1 = q2 = q (N,), for tangents dq (P, N): the total derivatives of
        `sigma_diag` and `sigma_dot_diag` (default: by autograd)."""
        F, G = self.sigma_diag(q), self.sigma_dot_diag(q)
        with torch.enable_grad():
            x = q.detach().clone().requires_grad_()
            slopes = [_partials(f(x), [x])[0] for f in (self.sigma_diag, self.sigma_dot_diag)]
        return F, G, slopes[0] * dq, slopes[1] * dq

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


#: (F, G, dF, dG) of `Nonlinearity.tangent`
Tangents = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


def _partials(value: torch.Tensor, args: list[torch.Tensor], retain: bool = False) -> list[torch.Tensor]:
    """d value / d arg for each arg, element by element (value elementwise in the args); zeros for an arg it does
    not depend on (a constant map, as sign's SigmaDot)."""
    if not value.requires_grad:
        return [torch.zeros_like(arg) for arg in args]
    grads = torch.autograd.grad(value, args, torch.ones_like(value), retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(arg) if g is None else g.detach() for arg, g in zip(args, grads, strict=True)]


#: the former name of `Nonlinearity` (`ntkit.activations.Activation` warns that it is deprecated)
Activation = Nonlinearity
