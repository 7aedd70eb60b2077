"""The infinite-width kernels of a fully-connected network: the paper's recursion.

For depth L (weight layers), weight scale W_std and bias scale b_std (the paper: W_std = 1,
b_std = beta), on a block of inputs X (N, n0) and Y (M, n0):

    Sigma^(1)(x, y)      = W_std^2 x.y / n0 + b_std^2                          (Proposition 1)
    Sigma^(l+1)(x, y)    = W_std^2 E_{f ~ N(0, Sigma^(l))}[sigma(f(x)) sigma(f(y))] + b_std^2
    SigmaDot^(l+1)(x, y) = W_std^2 E_{f ~ N(0, Sigma^(l))}[sigma'(f(x)) sigma'(f(y))]
    Theta^(1)            = Sigma^(1)                                           (Theorem 1)
    Theta^(l+1)          = Theta^(l) SigmaDot^(l+1) + Sigma^(l+1)

These functions work on one block of an already validated problem; `gram.py` tiles large
problems and `mlp.py` is the public entry point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .activations import Activation, PiecewiseLinear


@dataclass(frozen=True)
class Recursion:
    """The numbers that fix the infinite-width kernels of a fully-connected network."""

    activation: Activation
    depth: int
    W_std: float | torch.Tensor = 1.0
    b_std: float | torch.Tensor = 0.1


def sigma1(X: torch.Tensor, Y: torch.Tensor, rec: Recursion) -> torch.Tensor:
    """Sigma^(1)(x, y) = W_std^2 x.y / n0 + b_std^2 for every pair: (N, M)."""
    return (rec.W_std**2 / X.shape[1]) * (X @ Y.T) + rec.b_std**2


def sigma_diagonals(X: torch.Tensor, rec: Recursion) -> list[torch.Tensor]:
    """[Sigma^(1)(x, x), ..., Sigma^(L)(x, x)] for each row x of X: L vectors of shape (N,)."""
    q = (rec.W_std**2 / X.shape[1]) * (X * X).sum(1) + rec.b_std**2
    diagonals = [q]
    for _ in range(rec.depth - 1):
        q = rec.W_std**2 * rec.activation.sigma_diag(q) + rec.b_std**2
        diagonals.append(q)
    return diagonals


def kernel_diag(X: torch.Tensor, rec: Recursion, want_ntk: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Sigma^(L)(x, x), Theta^(L)(x, x)) for each row of X, in O(N) memory."""
    diagonals = sigma_diagonals(X, rec)
    theta = diagonals[0] if want_ntk else None
    for q_prev, q in zip(diagonals[:-1], diagonals[1:], strict=True):
        if want_ntk:
            theta = theta * (rec.W_std**2 * rec.activation.sigma_dot_diag(q_prev)) + q
    return diagonals[-1], theta


def kernel_block(
    X: torch.Tensor,
    Y: torch.Tensor,
    rec: Recursion,
    want_ntk: bool,
    qx: list[torch.Tensor] | None = None,
    qy: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Sigma^(L)(X, Y), Theta^(L)(X, Y)) on one block, shapes (N, M); Theta is None unless wanted.

    `qx`, `qy` are the per-layer diagonals of `sigma_diagonals`, passed in when the caller
    tiles a large problem and has them already.
    """
    qx = sigma_diagonals(X, rec) if qx is None else qx
    qy = sigma_diagonals(Y, rec) if qy is None else qy
    if _fast_path_applies(rec, X, Y):
        return _piecewise_linear_block(X, Y, rec, want_ntk, qx, qy)
    sigma = sigma1(X, Y, rec)
    theta = sigma if want_ntk else None
    for layer in range(1, rec.depth):
        q1, q2 = qx[layer - 1][:, None], qy[layer - 1][None, :]
        if want_ntk:
            e_phi, e_dphi = rec.activation.sigma_both(sigma, q1, q2)
            sigma = rec.W_std**2 * e_phi + rec.b_std**2
            theta = theta * (rec.W_std**2 * e_dphi) + sigma
        else:
            sigma = rec.W_std**2 * rec.activation.sigma(sigma, q1, q2) + rec.b_std**2
    return sigma, theta


def _fast_path_applies(rec: Recursion, X: torch.Tensor, Y: torch.Tensor) -> bool:
    """The fused in-place path: ReLU-family activation, plain float parameters, no autograd."""
    if not isinstance(rec.activation, PiecewiseLinear):
        return False
    if isinstance(rec.W_std, torch.Tensor) or isinstance(rec.b_std, torch.Tensor):
        return False
    return not (torch.is_grad_enabled() and (X.requires_grad or Y.requires_grad))


@torch.no_grad()
def _piecewise_linear_block(X, Y, rec: Recursion, want_ntk: bool, qx, qy):
    """The same recursion as `kernel_block` for relu / leaky_relu / abs, with in-place updates
    on one working buffer (a few passes over memory per layer instead of a dozen temporaries).

    In correlation form: rho = Sigma / sqrt(q1 q2), theta = arccos(rho), and
        E[sigma(u) sigma(v)]   = sqrt(q1 q2) ((1 - a)^2 sin(theta) + k(theta) rho) ,
        E[sigma'(u) sigma'(v)] = k(theta) = ((1 + a^2)(pi - theta) + 2 a theta) / (2 pi).
    """
    import math

    a = rec.activation.a
    w2, b2 = float(rec.W_std) ** 2, float(rec.b_std) ** 2
    sigma = sigma1(X, Y, rec)                       # the working buffer, Sigma^(l) on entry of each layer
    theta = sigma.clone() if want_ntk else None
    work = torch.empty_like(sigma)
    for layer in range(1, rec.depth):
        rx = torch.rsqrt(torch.clamp(qx[layer - 1], min=1e-300 if sigma.dtype == torch.float64 else 1e-30))
        ry = torch.rsqrt(torch.clamp(qy[layer - 1], min=1e-300 if sigma.dtype == torch.float64 else 1e-30))
        nx, ny = qx[layer - 1] * rx, qy[layer - 1] * ry          # sqrt(q), zero where q = 0
        rho = sigma.mul_(rx[:, None]).mul_(ry[None, :]).clamp_(-1.0, 1.0)
        ang = torch.acos(rho, out=work)                           # theta in [0, pi]
        sin_part = torch.sin(ang)                                 # sqrt(1 - rho^2), one temporary
        # k(theta) = c0 + c1 theta, with c0 = (1 + a^2)/2, c1 = (2a - 1 - a^2) / (2 pi)
        k = ang.mul_((2 * a - 1 - a * a) / (2 * math.pi)).add_(0.5 * (1 + a * a))
        if want_ntk:
            theta.mul_(k).mul_(w2)                                 # Theta^(l) SigmaDot^(l+1)
        e_phi = sin_part.mul_((1 - a) ** 2 / (2 * math.pi)).addcmul_(k, rho)
        sigma = e_phi.mul_(nx[:, None]).mul_(ny[None, :]).mul_(w2).add_(b2)   # Sigma^(l+1)
        work = rho                                                # reuse the old buffer next layer
        if want_ntk:
            theta.add_(sigma)                                      # + Sigma^(l+1)
    return sigma, theta
