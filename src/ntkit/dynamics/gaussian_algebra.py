"""The exact algebra of `InfiniteWidthGP` (`gaussian.py`) on Grams in memory: the spread of f_t, the covariances
at finite times in the eigenbasis, and the Bayesian NNGP posterior.

With the decays d(t) (the diagonal of A_t in the eigenbasis of K / N = V diag(lambda) V^T), P = K(X*, X) V,
Q = Sigma(X*, X) V and S = V^T Sigma(X, X) V:

    std_t(x)^2 = Sigma(x, x) - 2 sum_i d_i(t) P_xi Q_xi + sum_ij d_i(t) P_xi S_ij P_xj d_j(t),
    cov_t      = [Sigma(X*, X*) - Qr Qr^T] + U_t U_t^T,    U_t = P D_t R - Qr,    D_t = diag(d(t)),

with S = R R^T (R lower triangular) and Qr = Q R^-T; the bracket (the NNGP posterior covariance) does not depend
on t. If Sigma(X, X) is singular the covariance takes the direct formula of `spread` (twice the work per time).
"""

from __future__ import annotations

import torch

from ..progress import progress as progress_bar
from ._blocked import add_gram, default_block, scaled_upper_product
from ._cholesky import cholesky, cholesky_solve


def spread(G: torch.Tensor, Q: torch.Tensor, S: torch.Tensor, Sigma_test: torch.Tensor,
           return_std: bool) -> torch.Tensor:
    """The covariance Sigma** - G Q^T - Q G^T + G S G^T of f_0(X*) - G f_0(X), f_0 ~ GP(0, Sigma) (`gaussian.py`'s
    formula with G = k_x^T A_t), for the gain G (M, N), Q = Sigma(X*, X) (M, N) and S = Sigma(X, X)
    (N, N), the last two in the basis of G's columns: its diagonal (M,) (return_std; Sigma_test may be the
    diagonal) or the symmetric (M, M) matrix."""
    if return_std:
        diag = Sigma_test.diagonal() if Sigma_test.ndim == 2 else Sigma_test
        return diag - 2 * (G * Q).sum(1) + ((G @ S) * G).sum(1)
    H = torch.addmm(Q, G, S, beta=-1.0, alpha=0.5)                            # G S / 2 - Q
    X = H @ G.T                                                                # G S G^T / 2 - Q G^T
    return (Sigma_test + X).add_(X.T)


def std(var: torch.Tensor, scalar: bool) -> torch.Tensor:
    """sqrt of variances (T, M), clipping roundoff negatives at 0; (M,) for one time (`scalar`)."""
    root = var.clamp_min(0.0).sqrt()
    return root[0] if scalar else root


def last_layer_spread(P: torch.Tensor, D: torch.Tensor, lam: torch.Tensor, Sigma_test: torch.Tensor | None,
                      diag: torch.Tensor | None, return_std: bool, scalar: bool, show: bool | None) -> torch.Tensor:
    """The std (T, M) or covariance (T, M, M) of f_t for trained="last", where Sigma(X, X) = V diag(N lambda) V^T:
    cov_t = Sigma** - P diag(2 d - N lambda d^2) P^T, d = diag(A_t) (rows of D, (T, N)), P = Sigma(X*, X) V."""
    n, n_t, m = P.shape[1], D.shape[0], P.shape[0]
    W = 2 * D - n * lam[None, :] * D * D                                     # (T, N)
    if return_std:
        return std(diag - ((P * P) @ W.T).T, scalar)                            # (T, M)
    cov = torch.empty(n_t, m, m, dtype=P.dtype, device=P.device)
    for i in progress_bar(range(n_t), total=n_t, desc="covariance", enabled=show):
        X = (P * (W[i] / 2)) @ P.T
        torch.sub(Sigma_test, X, out=cov[i]).sub_(X.T)
    return cov[0] if scalar else cov


def covariances(P: torch.Tensor, Q: torch.Tensor, D: torch.Tensor, Sigma_test: torch.Tensor,
                root: torch.Tensor | None, S: torch.Tensor, show: bool | None) -> torch.Tensor:
    """cov_t (T, M, M) for trained="all", from P = K(X*, X) V, Q = Sigma(X*, X) V, the decays D (T, N), the
    Cholesky factor `root` of S = V^T Sigma(X, X) V (None: S is numerically singular, the direct formula)."""
    n_t, m, n = D.shape[0], P.shape[0], P.shape[1]
    steps = progress_bar(range(n_t), total=n_t, desc="covariance", enabled=show)
    cov = torch.empty(n_t, m, m, dtype=P.dtype, device=P.device)
    if root is None:                    # Sigma(X, X) numerically singular: the direct formula
        for i in steps:
            cov[i] = spread(P * D[i], Q, S, Sigma_test, False)
        return cov
    # Sigma(X, X) = V R R^T V^T (R lower triangular): cov_t = Sigma** - Qr Qr^T + U_t U_t^T with
    # Qr = Q R^-T and U_t = P D_t R - Qr; the first two terms are the NNGP posterior (t-independent).
    Rt = root.T                                                            # upper triangular
    Qr_t = torch.linalg.solve_triangular(root, Q.T, upper=False)           # Qr^T = R^-1 Q^T, (N, M)
    Pt = P.T.contiguous()
    block = default_block(n)
    posterior = add_gram(Sigma_test.clone(), Qr_t.T.contiguous(), default_block(m), alpha=-1.0)
    for i in steps:
        U_t = scaled_upper_product(Rt, D[i], Pt, block).sub_(Qr_t)             # U_t^T, (N, M)
        add_gram(cov[i].copy_(posterior), U_t.T.contiguous(), default_block(m))
    return cov


def nngp_posterior(Sigma_train: torch.Tensor, Sigma_cross: torch.Tensor, Sigma_test: torch.Tensor | None,
                   y: torch.Tensor, noise: float, return_std: bool, return_cov: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Bayesian posterior of f ~ GP(0, Sigma) given y = f(X) + N(0, noise) by a Cholesky factorization: the
    mean (M, k) Sigma(X*, X) (Sigma(X, X) + noise I)^-1 y, and the covariance (M, M) (return_cov) or the
    variances' square roots (M,) (return_std), else None."""
    n = Sigma_train.shape[0]
    L = cholesky(Sigma_train + noise * torch.eye(n, dtype=Sigma_train.dtype, device=Sigma_train.device))
    if L is None:
        raise ValueError("Sigma_train + noise I is not positive definite (singular NNGP Gram, e.g. duplicated "
                         "points): pass noise > 0")
    Z = torch.linalg.solve_triangular(L, Sigma_cross.T, upper=False)     # L^-1 Sigma(X, X*), (N, M)
    mean = Sigma_cross @ cholesky_solve(L, y)                            # (Sigma + noise I)^-1 y
    if return_cov:
        cov = Sigma_test - Z.T @ Z
        return mean, (cov + cov.T) / 2
    if return_std:
        diag = Sigma_test.diagonal() if Sigma_test.ndim == 2 else Sigma_test
        return mean, (diag - (Z * Z).sum(0)).clamp_min(0.0).sqrt()
    return mean, None
