"""Kernel principal components of the data, as in Section 5 of the paper.

The operator Pi f(x) = (1/N) sum_i K(x, x_i) f(x_i) has eigenfunctions f^(i) with eigenvalues
lambda_i: the eigenvalues of K(X, X) / N (non-centered kernel PCA). On the data a component is an
eigenvector scaled to unit p_in norm, (1/N) sum_j f^(i)(x_j)^2 = 1; at a new point it extends by
applying Pi to it (Nystrom): f^(i)(x) = (1 / (N lambda_i)) K(x, X) f^(i)(X).

Under least-squares kernel gradient descent the error f_t - f* decays along f^(i) as
exp(-lambda_i t) (Section 5); `decompose` splits a trajectory into its part along one component
and the rest, the paper's Figure 3 (g_t and h_t).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._checks import as_tensor, check_positive_int, to_output
from .least_squares import check_cross_gram
from .spectrum import Spectrum, gram_spectrum

Array = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class KernelPCA:
    """The first k kernel principal components of a Gram K(X, X) of N points.

    Attributes:
        eigenvalues: (k,) lambda_i of K / N, descending.
        components: (N, k) values f^(i)(x_j) on the data, unit p_in norm, signed so that each sums to >= 0.
    """

    eigenvalues: Array
    components: Array

    def extend(self, K_new_train: Array) -> Array:
        """The components at new points x from their cross Gram K(x, X) (M, N): (M, k),
        f^(i)(x) = K(x, X) f^(i)(X) / (N lambda_i). On the training points it returns `components`."""
        lam, comps = as_tensor(self.eigenvalues, "eigenvalues")[0], as_tensor(self.components, "components")[0]
        n = comps.shape[0]
        Kt = check_cross_gram(K_new_train, n, "K_new_train", comps.dtype, comps.device)
        out = (Kt @ comps) / (n * lam)[None, :]
        return to_output(out, not isinstance(K_new_train, torch.Tensor))


def kernel_pca(K: Array | Spectrum, n_components: int | None = None) -> KernelPCA:
    """Kernel principal components (non-centered) of the Gram K (N, N) or of its `Spectrum`.

    n_components: how many (default: every component with a positive eigenvalue). Components with a
    zero eigenvalue cannot be extended to new points and are refused.
    Returns float64 results, NumPy for NumPy input.
    """
    spectrum = gram_spectrum(K, "K")
    lam, V = spectrum.eigenvalues, spectrum.eigenvectors
    eps = float(torch.finfo(lam.dtype).eps)
    positive = int((lam > spectrum.n * eps * float(lam[0])).sum()) if float(lam[0]) > 0 else 0
    k = positive if n_components is None else check_positive_int(n_components, "n_components")
    if k > positive:
        raise ValueError(f"n_components = {k} but K has only {positive} numerically positive eigenvalues "
                         f"(of {spectrum.n}): the others are not principal components of the data")
    comps = V[:, :k] * spectrum.n ** 0.5                                   # (1/N) sum f^2 = 1
    sums = comps.sum(0)
    first = comps[comps.abs().argmax(0), torch.arange(k)]                  # tie-break when a sum is ~0
    signs = torch.where(sums.abs() > 1e-8 * comps.abs().sum(0), sums.sign(), first.sign())
    comps = comps * signs[None, :]
    numpy_out = not isinstance(K, (torch.Tensor, Spectrum))
    return KernelPCA(to_output(lam[:k].clone(), numpy_out), to_output(comps, numpy_out))


def decompose(f_t: Array, f_star: Array, component: Array) -> tuple[Array, Array]:
    """Split the error f_t - f* along one principal component and the rest (Figure 3 of the paper).

    Args:
        f_t: (N,) or (T, N) outputs on the training points (one row per time).
        f_star: (N,) targets f*(X).
        component: (N,) a component's values f^(i)(X) (unit p_in norm, e.g. a column of `KernelPCA.components`).

    Returns (g_norm, h_norm), each a float or (T,): ||g_t||_{p_in} with g_t = <f_t - f*, f^(i)>_{p_in} f^(i),
    and ||h_t||_{p_in} with h_t = f_t - f* - g_t. For the kernel dynamics g_norm = `|g_0| exp(-lambda_i t)`.
    """
    F, numpy_in = as_tensor(f_t, "f_t", ndim=(1, 2))
    target = as_tensor(f_star, "f_star", ndim=1, dtype=torch.float64)[0]
    c = as_tensor(component, "component", ndim=1, dtype=torch.float64)[0]
    F = F.to(torch.float64)
    scalar = F.ndim == 1
    F = F.reshape(-1, F.shape[-1])
    n = F.shape[1]
    if target.shape[0] != n or c.shape[0] != n:
        raise ValueError(f"f_t, f_star and component must all have N = {n} values per time, got "
                         f"{tuple(F.shape)}, {tuple(target.shape)}, {tuple(c.shape)}")
    norm_c = float((c * c).mean())
    if not np.isclose(norm_c, 1.0, rtol=1e-6):
        raise ValueError(f"component must have unit p_in norm ((1/N) sum f^2 = 1), got {norm_c:.6g}")
    err = F - target[None, :]
    coef = (err @ c) / n                                                     # <f_t - f*, f^(i)>_{p_in}
    h = err - coef[:, None] * c[None, :]
    g_norm, h_norm = coef.abs(), (h * h).mean(1).sqrt()
    if scalar:
        return float(g_norm[0]), float(h_norm[0])
    return to_output(g_norm, numpy_in), to_output(h_norm, numpy_in)
