"""The closed-form hyperparameter derivatives of the scikit-learn kernels of fully-connected chains
(`ntkit.sklearn.gradient`, `Nonlinearity.tangent`). References: central finite differences in float64, the
reverse-mode autograd path through the kernel maps, and the diagonal's derivatives by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.activations import get_activation
from ntkit.sklearn import NNGP, NTK
from ntkit.sklearn.gradient import fc_chain


def finite_differences(kernel, X: np.ndarray, index: int, eps: float = 1e-5) -> np.ndarray:
    """d K / d theta_index by central differences: error eps^2 K''' / 6 ~ 1e-11 relative plus rounding
    eps_64 / eps ~ 1e-11."""
    step = np.zeros_like(kernel.theta)
    step[index] = eps
    return (kernel.clone_with_theta(kernel.theta + step)(X) - kernel.clone_with_theta(kernel.theta - step)(X)) / (
        2 * eps)


def autograd_gradient(kernel, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same kernel and gradient by reverse-mode autograd through the kernel maps (any architecture's path)."""
    free = [h for h in kernel.hyperparameters if not h.fixed]
    return kernel._autograd_gradient(torch.from_numpy(X), kernel._values(), free, {h.name for h in free})


def chain(activations: list[str], W: list[float], b: list[float]) -> nk.Sequential:
    layers = [nk.Linear(W_std=W[0], b_std=b[0])]
    for act, w, c in zip(activations, W[1:], b[1:], strict=True):
        layers += [nk.Activation(act), nk.Linear(W_std=w, b_std=c)]
    return nk.Sequential(*layers)


KERNELS = {
    "relu depth 3": lambda cls: cls(depth=3, W_std=1.3, b_std=0.4),
    "erf depth 3": lambda cls: cls(depth=3, activation="erf", W_std=1.3, b_std=0.4),
    "abs depth 2": lambda cls: cls(depth=2, activation="abs", W_std=0.9, b_std=0.2),
    "leaky relu, erf per layer": lambda cls: cls(arch=chain(["leaky_relu", "erf"], [1, 1, 1], [0.1] * 3),
                                                 W_std=[1.2, 0.8, 1.5], b_std=[0.3, 0.05, 0.2],
                                                 scale=1.7, scale_bounds=(1e-2, 1e2)),
}


@pytest.mark.parametrize("kernel_class", [NTK, NNGP])
@pytest.mark.parametrize("case", list(KERNELS))
def test_closed_form_gradient_matches_finite_differences_and_autograd(rng, kernel_class, case) -> None:
    X = rng.standard_normal((8, 3)) + 0.3
    kernel = KERNELS[case](kernel_class)
    assert fc_chain(kernel._arch(3)) is not None            # the closed-form path, not autograd
    K, K_gradient = kernel(X, eval_gradient=True)
    np.testing.assert_allclose(K, kernel(X), rtol=1e-13, atol=0)
    K_auto, gradient_auto = autograd_gradient(kernel, X)
    assert K_gradient.shape == gradient_auto.shape == (8, 8, len(kernel.theta))
    top = np.abs(K).max()
    off = ~np.eye(8, dtype=bool)
    # off the diagonal both are exact formulas evaluated in float64 (angles away from 0: a few eps of K)
    np.testing.assert_allclose(K_gradient[off], gradient_auto[off], rtol=1e-11, atol=1e-13 * top)
    for index in range(len(kernel.theta)):
        finite = finite_differences(kernel, X, index)
        np.testing.assert_allclose(K_gradient[:, :, index], finite, rtol=1e-7, atol=1e-9 * top)


def test_the_diagonal_is_exact(rng) -> None:
    """ReLU, depth 2: Theta(x, x) = W^2 q + b^2 with q = Sigma^(1)(x, x) = W^2 |x|^2 / n0 + b^2 (SigmaDot = W^2 / 2,
    Sigma^(2) = W^2 q / 2 + b^2), so d/dlog W = 2 W^2 q + 2 W^4 |x|^2 / n0 and d/dlog b = 2 W^2 b^2 + 2 b^2."""
    X = rng.standard_normal((6, 4))
    W, b = 1.3, 0.4
    K, K_gradient = NTK(depth=2, W_std=W, b_std=b)(X, eval_gradient=True)
    a = W**2 * (X * X).sum(1) / 4
    q = a + b**2
    np.testing.assert_allclose(np.diag(K), W**2 * q + b**2, rtol=4e-16)
    np.testing.assert_allclose(K_gradient[:, :, 0].diagonal(), 2 * W**2 * q + 2 * W**2 * a, rtol=4e-16)
    np.testing.assert_allclose(K_gradient[:, :, 1].diagonal(), 2 * W**2 * b**2 + 2 * b**2, rtol=4e-16)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_gradient_is_exactly_symmetric_over_tiles_with_duplicates_and_near_pairs(rng, activation, monkeypatch) -> None:
    X = rng.standard_normal((11, 3))
    X[7] = X[2]                                      # a duplicate
    X[9] = X[4] * (1 + 1e-9) + 1e-9                  # a nearly coincident pair (correlation 1 - 1e-18)
    kernel = NTK(depth=3, activation=activation, W_std=1.1, b_std=0.3)
    K, K_gradient = kernel(X, eval_gradient=True)
    for G in (K, *np.moveaxis(K_gradient, -1, 0)):
        assert np.array_equal(G, G.T)
    np.testing.assert_array_equal(K[2, 7], K[2, 2])  # the duplicate takes the diagonal's values
    np.testing.assert_array_equal(K_gradient[2, 7], K_gradient[2, 2])
    np.testing.assert_allclose(K, kernel(X), rtol=1e-14)     # the near pair recomputed as kernel(X) does
    # the near pair's derivative: d SigmaDot = 0 below sin(theta) = 1e-7, an error of at most ~1e-8 of K
    for index in range(2):
        np.testing.assert_allclose(K_gradient[4, 9, index], finite_differences(kernel, X, index)[4, 9],
                                   rtol=1e-7)
    monkeypatch.setattr("ntkit.gram.default_tile", lambda device: 4)     # 3 x 3 tiles, mirrored
    K_tiled, gradient_tiled = kernel(X, eval_gradient=True)
    np.testing.assert_allclose(K_tiled, K, rtol=1e-14)
    np.testing.assert_allclose(gradient_tiled, K_gradient, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "abs", "erf"])
def test_layer_map_tangents_match_forward_mode_autograd_and_finite_differences(name) -> None:
    """dF, dG of each closed form against torch.func.jvp of the activation's own maps and central differences,
    on covariances with correlations from -0.95 to 0.95; the diagonal's against d/dq of sigma_diag, sigma_dot_diag."""
    act = get_activation(name)
    gen = torch.Generator().manual_seed(0)
    q1, q2 = 0.2 + torch.rand(5, 1, generator=gen, dtype=torch.float64), \
        0.2 + torch.rand(1, 4, generator=gen, dtype=torch.float64)
    c = (2 * torch.rand(5, 4, generator=gen, dtype=torch.float64) - 1) * 0.95 * (q1 * q2).sqrt()
    dc = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64)
    dq1, dq2 = torch.randn(2, 5, 1, generator=gen, dtype=torch.float64), \
        torch.randn(2, 1, 4, generator=gen, dtype=torch.float64)
    F, G, dF, dG = act.tangent(c, q1, q2, dc.clone(), dq1, dq2, True)
    for j in range(2):
        (F_ref, G_ref), (dF_ref, dG_ref) = torch.func.jvp(act.sigma_both, (c, q1, q2), (dc[j], dq1[j], dq2[j]))
        torch.testing.assert_close(F, F_ref, rtol=1e-14, atol=0)
        torch.testing.assert_close(G, G_ref, rtol=1e-14, atol=0)
        torch.testing.assert_close(dF[j], dF_ref, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(dG[j], dG_ref, rtol=1e-12, atol=1e-14)
        h = 1e-6
        plus = act.sigma_both(c + h * dc[j], q1 + h * dq1[j], q2 + h * dq2[j])
        minus = act.sigma_both(c - h * dc[j], q1 - h * dq1[j], q2 - h * dq2[j])
        torch.testing.assert_close(dF[j], (plus[0] - minus[0]) / (2 * h), rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(dG[j], (plus[1] - minus[1]) / (2 * h), rtol=1e-7, atol=1e-9)
    q = torch.linspace(0.1, 3.0, 7, dtype=torch.float64)
    dq = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    _, _, dF_diag, dG_diag = act.tangent_diag(q, dq)
    for j in range(2):
        _, dF_ref = torch.func.jvp(act.sigma_diag, (q,), (dq[j],))
        _, dG_ref = torch.func.jvp(act.sigma_dot_diag, (q,), (dq[j],))
        torch.testing.assert_close(dF_diag[j], dF_ref, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(dG_diag[j], dG_ref, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("activation", ["gelu", "sin", "sign", "rectified_monomial"])
def test_other_activations_carry_autograd_partials_of_their_maps(rng, activation) -> None:
    """Activations without closed-form derivatives here: their maps' partials by autograd element by element, the
    same derivatives as reverse mode over the Gram (to rounding) and as central differences, exactly symmetric."""
    X = rng.standard_normal((7, 3)) + 0.3
    kernel = NTK(depth=3, activation=activation, W_std=1.1, b_std=0.3)
    assert fc_chain(kernel._arch(3)) is not None
    K, K_gradient = kernel(X, eval_gradient=True)
    top = np.abs(K).max()
    _, gradient_auto = autograd_gradient(kernel, X)
    np.testing.assert_allclose(K_gradient, gradient_auto, rtol=1e-11, atol=1e-13 * top)
    assert np.array_equal(K_gradient, K_gradient.transpose(1, 0, 2))
    for index in range(2):
        np.testing.assert_allclose(K_gradient[:, :, index], finite_differences(kernel, X, index), rtol=1e-7,
                                   atol=2e-8 * top)


def test_other_architectures_take_the_autograd_path(rng) -> None:
    """tanh (by quadrature) and a convolution take reverse-mode autograd, which still matches central
    differences."""
    X = rng.standard_normal((5, 4)) + 0.5
    kernel = NTK(depth=2, activation="tanh", W_std=1.2, b_std=0.3)
    assert fc_chain(kernel._arch(4)) is None
    K, K_gradient = kernel(X, eval_gradient=True)
    for index in range(2):
        np.testing.assert_allclose(K_gradient[:, :, index], finite_differences(kernel, X, index), rtol=1e-6,
                                   atol=1e-8 * np.abs(K).max())
    conv = nk.Sequential(nk.Conv1d(2), nk.ReLU(), nk.Flatten(), nk.Linear())
    assert fc_chain(conv) is None
    assert fc_chain(nk.Sequential(nk.Linear(), nk.ReLU(), nk.Linear(parametrization="standard",
                                                                     in_channels=5))) is None


@pytest.mark.parametrize("kernel_class", [NTK, NNGP])
def test_zero_inputs_without_bias_have_finite_exact_gradients(rng, kernel_class) -> None:
    """x = 0 with b_std = 0: a zero variance at every layer (no angle); its kernel and derivatives are 0."""
    X = np.vstack([np.zeros(3), rng.standard_normal((2, 3)), np.zeros(3)])
    kernel = kernel_class(depth=3, W_std=1.3, b_std=0.0, b_std_bounds="fixed")
    K, K_gradient = kernel(X, eval_gradient=True)
    assert np.isfinite(K_gradient).all()
    np.testing.assert_array_equal(K_gradient[[0, 3]], 0.0)
    np.testing.assert_allclose(K, kernel(X), rtol=1e-14)
    np.testing.assert_allclose(K_gradient[:, :, 0], finite_differences(kernel, X, 0), rtol=1e-7,
                               atol=1e-9 * np.abs(K).max())
