"""The eigendecomposition K(X, X) / N = V diag(lambda) V^T that every closed form reuses.

Section 5 of the paper: the operator Pi f(x) = (1/N) sum_i K(x, x_i) f(x_i) restricted to the
training points is the matrix K / N; its eigenvalues lambda_i (descending) are the rates at which
least-squares kernel gradient descent converges along its eigenvectors (the kernel principal
components). `gram_spectrum` validates the Gram, computes the decomposition once (float64 by
default) and the other modules of `ntkit.dynamics` reuse it across times and test sets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._checks import as_tensor, check_real

ILL_CONDITIONED = 1e10   # cond(K + ridge I) above which t = inf results lose more than ~10 of 16 digits


class IllConditionedWarning(UserWarning):
    """K(X, X) + ridge I is invertible but ill-conditioned: t = inf results lose accuracy."""


@dataclass(frozen=True)
class Spectrum:
    """K / N = V diag(lambda) V^T for a training Gram K of N points.

    Attributes:
        eigenvalues: (N,) lambda_i of K / N, descending; roundoff negatives clipped to 0.
        eigenvectors: (N, N) orthonormal columns v_i (unit Euclidean norm).
        n: the number of training points N.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.eigenvalues.shape[0])

    def rates(self, ridge: float = 0.0) -> torch.Tensor:
        """Convergence rates lambda_i + ridge / N of the (ridge-regularized) dynamics, (N,)."""
        return self.eigenvalues + float(ridge) / self.n

    def check_invertible(self, ridge: float, name: str = "K_train") -> None:
        """t = inf needs K + ridge I invertible: a clear error if singular, a warning if ill-conditioned."""
        rates = self.rates(ridge)
        top, bottom = float(rates.max()), float(rates.min())
        eps = float(torch.finfo(rates.dtype).eps)
        if top <= 0 or bottom <= self.n * eps * top:
            raise ValueError(
                f"{name} (+ ridge) is singular (smallest eigenvalue of K/N {bottom:.3g}, largest {top:.3g}), so "
                "the t = inf limit (kernel regression) is not defined. Pass ridge > 0 (e.g. 1e-6 * the mean of "
                "the diagonal), use a finite time t, or remove duplicated training points")
        if top / bottom > ILL_CONDITIONED:
            warnings.warn(
                f"{name} (+ ridge) has condition number {top / bottom:.3g}: t = inf results lose about "
                f"{np.log10(top / bottom):.0f} of 16 digits. Remedy: a small ridge (e.g. 1e-8 * the mean of the "
                "diagonal) or a finite time t", IllConditionedWarning, stacklevel=3)


def check_gram(K: Any, name: str, *, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, bool]:
    """A finite, square, symmetric Gram in `dtype` (symmetrized); also whether the input was NumPy."""
    Kt, numpy_in = as_tensor(K, name, ndim=2)
    if Kt.shape[0] != Kt.shape[1] or Kt.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square (N, N) Gram matrix, got shape {tuple(Kt.shape)}")
    tol = float(torch.finfo(Kt.dtype).eps) ** 0.5 * float(Kt.abs().max().clamp_min(1e-300))
    asym = float((Kt - Kt.T).abs().max())
    if asym > tol:
        raise ValueError(f"{name} must be symmetric: max |K - K^T| = {asym:.3g} (tolerance {tol:.3g})")
    Kt = Kt.detach().to(dtype)
    return (Kt + Kt.T) / 2, numpy_in


def _eigh_descending(A: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition of the symmetric scale * A (scale > 0), eigenvalues descending: that of -scale * A,
    whose ascending order is the descending one (no reordering copy). On CPU SciPy's LAPACK divide and conquer
    (driver evd) works in place on that one copy: on a 2-core machine it was 1.2-1.4 times faster than
    torch.linalg.eigh and than driver evr for N = 1000 to 3000, with eigenvectors orthonormal to 5e-15 (evr:
    3e-12). The eigenvectors may be returned in column-major layout."""
    negated = A * -scale
    if A.device.type == "cpu":
        import scipy.linalg

        # negated.T is the same symmetric matrix in LAPACK's column-major layout: no conversion copy
        try:
            values, vectors = scipy.linalg.eigh(negated.numpy().T, driver="evd", check_finite=False, overwrite_a=True)
        except np.linalg.LinAlgError:   # divide and conquer did not converge (rare: Grams spanning many decades)
            values, vectors = scipy.linalg.eigh((A * -scale).numpy(), driver="ev", check_finite=False)
        return -torch.from_numpy(values), torch.from_numpy(vectors)
    values, vectors = torch.linalg.eigh(negated)
    return -values, vectors


def gram_spectrum(K: Any, name: str = "K_train", *, dtype: torch.dtype = torch.float64,
                  checked: bool = False) -> Spectrum:
    """Validate the training Gram K (N, N) and decompose K / N once (in `dtype`, float64 by default).

    Raises ValueError for a non-square, non-finite or non-symmetric K, or one with clearly negative
    eigenvalues (a Gram of a kernel is positive semi-definite; kernel gradient descent diverges along
    a negative direction). Negative eigenvalues at roundoff level are set to 0. `checked=True` skips the
    first checks for a tensor already known to be finite and symmetric.
    """
    if isinstance(K, Spectrum):
        return K
    Kt = K.to(dtype) if checked else check_gram(K, name, dtype=dtype)[0]     # checked: a symmetric tensor
    n = Kt.shape[0]
    values, vectors = _eigh_descending(Kt, 1.0 / n)                    # descending, as in the paper
    top = float(values.abs().max())
    bottom = float(values.min())
    if bottom < -(float(torch.finfo(dtype).eps) ** 0.5) * max(top, 1e-300):
        raise ValueError(f"{name} is not positive semi-definite: K/N has eigenvalue {bottom:.3g} (largest {top:.3g}); "
                         "kernel gradient descent diverges along it. Check the kernel, or compute the Gram in float64")
    return Spectrum(values.clamp_min(0.0), vectors)


def check_ridge(ridge: Any) -> float:
    """A ridge >= 0 (see `LeastSquares`)."""
    return float(check_real(ridge, "ridge", minimum=0.0))
