"""Functions of a symmetric positive semi-definite operator applied to vectors, by the Lanczos process.

For A (N, N) given by its products and a block B (N, c), k Lanczos steps from each column b give an orthonormal
basis Q_k of the Krylov space span{b, A b, ..., A^(k-1) b} and the tridiagonal T_k = Q_k^T A Q_k; then

    f(A) b ~ ||b|| Q_k f(T_k) e_1 = ||b|| Q_k S f(theta) S^T e_1        (T_k = S diag(theta) S^T).

For an entire function such as (1 - exp(-x t)) / x (the integrated decay of the training dynamics) the error
falls faster than geometrically once k exceeds about sqrt(t ||A||). One basis serves many functions at once (every
time t), so the cost is one product with A per step, plus full re-orthogonalization (O(N k c) per step) for
accuracy. The iteration stops when every approximation changes by less than tol (relative) since the last check
(every step at first, then every ~10% of the steps taken).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..progress import meter
from .cg import ConvergenceWarning


def lanczos_apply(matvec: Callable[[torch.Tensor], torch.Tensor], B: torch.Tensor,
                  functions: Callable[[np.ndarray], np.ndarray], *, tol: float, max_iter: int,
                  show_progress: bool | None = None) -> tuple[torch.Tensor, int, float]:
    """f_i(A) B for the functions f_i of `functions` (Ritz values theta (r,) -> values (F, r)).

    Returns (F, N, c) results, the number of steps, and the last relative change (the accuracy estimate).
    """
    import warnings

    n, c = B.shape
    norms = B.norm(dim=0)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    Q = [B / safe]
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    previous, change, step = None, float("inf"), 0
    bar = meter(max_iter, "Lanczos", show_progress)
    scale = None
    for step in range(1, min(max_iter, n) + 1):  # noqa: B007 (read after the loop)
        w = matvec(Q[-1])
        alpha = (Q[-1] * w).sum(0)
        w = w - alpha * Q[-1] - (betas[-1] * Q[-2] if betas else 0.0)
        basis = torch.stack(Q)                                           # (j, N, c)
        for _ in range(2):                                               # full re-orthogonalization, twice
            w = w - torch.einsum("jnc,jc->nc", basis, torch.einsum("jnc,nc->jc", basis, w))
        beta = w.norm(dim=0)
        alphas.append(alpha)
        scale = alpha.abs().max() if scale is None else torch.maximum(scale, alpha.abs().max())
        broke_down = beta <= 10 * torch.finfo(B.dtype).eps * float(scale) * np.sqrt(n)
        last = step == min(max_iter, n) or bool(broke_down.all())
        if step % max(1, step // 10) == 0 or last:       # check every step at first, then every ~10% of steps
            coefficients = _coefficients(alphas, betas, functions, norms)   # (F, j, c)
            if previous is not None:
                padded = torch.nn.functional.pad(previous, (0, 0, 0, coefficients.shape[1] - previous.shape[1]))
                denominator = coefficients.norm(dim=1).clamp(min=torch.finfo(B.dtype).tiny)
                change = float(((coefficients - padded).norm(dim=1) / denominator).max())
            previous = coefficients
            bar.set_postfix_str(f"change {change:.1e}")
        bar.update(1)
        if last or (change <= tol and previous.shape[1] == step):
            break
        betas.append(torch.where(broke_down, torch.zeros_like(beta), beta))
        Q.append(torch.where(broke_down, torch.zeros_like(w), w / torch.where(broke_down, torch.ones_like(beta), beta)))
    bar.close()
    if change > tol and step < n:
        warnings.warn(f"Lanczos stopped after max_iter = {max_iter} steps with relative change {change:.3g} > tol = "
                      f"{tol:.3g}; raise max_iter", ConvergenceWarning, stacklevel=3)
    basis = torch.stack(Q[:previous.shape[1]])                           # (k, N, c)
    return torch.einsum("knc,fkc->fnc", basis, previous), step, change if np.isfinite(change) else 0.0


def _coefficients(alphas: list[torch.Tensor], betas: list[torch.Tensor],
                  functions: Callable[[np.ndarray], np.ndarray], norms: torch.Tensor) -> torch.Tensor:
    """||b|| S f(theta) S^T e_1 for each column's tridiagonal T_k: (F, k, c)."""
    k = len(alphas)
    a = torch.stack(alphas).T.cpu().double().numpy()                        # (c, k)
    b = torch.stack(betas[:k - 1]).T.cpu().double().numpy() if k > 1 else np.zeros((a.shape[0], 0))
    out = []
    for column in range(a.shape[0]):
        T = np.diag(a[column]) + np.diag(b[column], 1) + np.diag(b[column], -1)
        theta, S = np.linalg.eigh(T)
        values = functions(np.clip(theta, 0.0, None))                        # (F, k)
        out.append((values * S[0][None, :]) @ S.T)                           # (F, k)
    result = torch.as_tensor(np.stack(out, axis=-1), dtype=norms.dtype, device=norms.device)
    return result * norms
