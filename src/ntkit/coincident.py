"""Accurate kernels at coincident and nearly coincident pairs of inputs.

For a pair (x, y) the layer-l covariance [[q1, c], [c, q2]] of (f(x), f(y)) has determinant det = q1 q2 - c^2, which
for nearly coincident points is far smaller than q1 q2: forming it as q1 q2 - c^2 loses everything but sqrt(eps) of
the angle theta = atan2(sqrt(det), c), and the arc-cosine kernels have a cone there (1e-8 relative in float64,
3e-4 in float32). Here det is carried through the recursion without cancellation:

    layer 1:  det = a^2 |x|^2 |u_perp|^2 + a b^2 |u|^2,   u = y - x,  u_perp = u - x (x.u) / |x|^2,  a = W_std^2 / n0
              (the Lagrange identity |x|^2 |y|^2 - (x.y)^2 = |x|^2 |y_perp|^2, with y_perp = u_perp)
    layer l+1, with E = E[sigma(u) sigma(v)], e_i = E[sigma(u_i)^2] and D = e1 e2 - E^2 from the activation
              (`Activation.sigma_both_gap`):
              det' = W^4 D + W^2 b^2 (e1 + e2 - 2E),   e1 + e2 - 2E = (sqrt(e1) - sqrt(e2))^2 + 2 D / (sqrt(e1 e2) + E).

`kernel_block` computes every tile by the fast formulas, then recomputes here the pairs whose layer-1 correlation
is within `NEAR` of 1 (a few per tile: the duplicates, the training points among Nystrom centres), O(d + L) each.
"""

from __future__ import annotations

import torch

NEAR = {torch.float64: 1e-4, torch.float32: 1e-2}   # 1 - rho below which a pair is recomputed (error <= eps / NEAR^0.5)
CHUNK = 4096                                        # pairs per batch (CHUNK x n0 numbers in memory)


def supports(activation) -> bool:
    """Whether `activation` carries the determinant (only then are near pairs recomputed)."""
    return getattr(activation, "carries_gap", False)


def near_pairs(sigma1: torch.Tensor, rx: torch.Tensor, ry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the pairs whose Sigma^(1) correlation sigma1 rx ry exceeds 1 - NEAR (1-D int64
    tensors); rx, ry are 1 / sqrt(Sigma^(1)(x, x)) of the rows and columns."""
    tau = NEAR.get(sigma1.dtype, 1e-2)
    return torch.nonzero(torch.mul(sigma1, rx[:, None]).mul_(ry[None, :]) > 1 - tau, as_tuple=True)


def first_layer(x: torch.Tensor, y: torch.Tensor, w2: float, b2: float) -> tuple[torch.Tensor, ...]:
    """(c, q1, q2, det) of Sigma^(1) for paired rows x, y (P, n0), det by the Lagrange identity (module docstring)."""
    a = w2 / x.shape[1]
    u = y - x
    xx = (x * x).sum(1)
    u_perp = u - x * ((x * u).sum(1) / torch.where(xx > 0, xx, torch.ones_like(xx)))[:, None]
    det = a * a * xx * (u_perp * u_perp).sum(1) + a * b2 * (u * u).sum(1)
    return a * (x * y).sum(1) + b2, a * xx + b2, a * (y * y).sum(1) + b2, det


def recursion(x: torch.Tensor, y: torch.Tensor, rec, want_ntk: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Sigma^(L), Theta^(L)) for paired rows x, y (P, n0), with det carried exactly (module docstring)."""
    w2, b2 = float(rec.W_std) ** 2, float(rec.b_std) ** 2
    c, q1, q2, det = first_layer(x, y, w2, b2)
    theta = c.clone() if want_ntk else None
    for _ in range(rec.depth - 1):
        E, dot, D = rec.activation.sigma_both_gap(c, q1, q2, det)
        e1, e2 = rec.activation.sigma_diag(q1), rec.activation.sigma_diag(q2)
        root = torch.sqrt(e1 * e2)
        gap = torch.where(root + E > 0, (e1.sqrt() - e2.sqrt()) ** 2 + 2 * D / torch.where(root + E > 0, root + E, 1.0),
                          e1 + e2 - 2 * E)
        det = (w2 * w2 * D + w2 * b2 * gap).clamp_(min=0)
        c, q1, q2 = w2 * E + b2, w2 * e1 + b2, w2 * e2 + b2
        if want_ntk:
            theta = theta * (w2 * dot) + c
    return c, theta


@torch.no_grad()
def refine(X: torch.Tensor, Y: torch.Tensor, rec, rows: torch.Tensor, cols: torch.Tensor, sigma: torch.Tensor,
           theta: torch.Tensor | None) -> None:
    """Overwrite sigma[rows, cols] (and theta) with the accurate values of the pairs (X[rows], Y[cols])."""
    for start in range(0, len(rows), CHUNK):
        r, k = rows[start:start + CHUNK], cols[start:start + CHUNK]
        s, t = recursion(X[r], Y[k], rec, theta is not None)
        sigma[r, k] = s
        if theta is not None:
            theta[r, k] = t
