"""Kernel principal components, the Figure 3 decomposition, general losses and early stopping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.dynamics import (
    LeastSquares,
    converged_fraction,
    decompose,
    early_stopping_time,
    gradient_flow,
    kernel_pca,
)

ARCH = nk.MLP(4, "relu", beta=0.1)


def test_principal_components_of_the_linear_kernel(rng):
    """For K(x, x') = x.x' the components are linear functions x -> u_i.x / sqrt(lambda_i), with u_i,
    lambda_i the eigenpairs of the second-moment matrix X^T X / N: an independent closed form."""
    X, Xnew = rng.standard_normal((30, 3)) * [3.0, 1.0, 0.3], rng.standard_normal((7, 3))
    pca = kernel_pca(X @ X.T, 3)
    lam, U = np.linalg.eigh(X.T @ X / 30)
    lam, U = lam[::-1], U[:, ::-1]
    np.testing.assert_allclose(pca.eigenvalues, lam, rtol=1e-12)
    for i in range(3):
        expected = Xnew @ U[:, i] / np.sqrt(lam[i])
        got = pca.extend(Xnew @ X.T)[:, i]
        sign = np.sign(got @ expected)
        np.testing.assert_allclose(sign * got, expected, atol=1e-10)
    assert (pca.components.sum(0) >= 0).all()


def test_components_have_unit_p_in_norm_and_extend_consistently(rng):
    X = rng.standard_normal((25, 4))
    K = ARCH.kernel(X)
    pca = kernel_pca(K)
    assert pca.components.shape == (25, 25)
    np.testing.assert_allclose(pca.components.T @ pca.components / 25, np.eye(25), atol=1e-9)
    np.testing.assert_allclose(pca.eigenvalues, np.sort(np.linalg.eigvalsh(K / 25))[::-1], atol=1e-13)
    np.testing.assert_allclose(pca.extend(K), pca.components, atol=1e-8)
    # K has positive entries, so its first eigenvector is positive (Perron-Frobenius): non-centered PCA
    assert (pca.components[:, 0] > 0).all()


def test_error_decays_along_a_component_and_the_rest_stays_zero(rng):
    """Figure 3 in the limit: f* = f_0 + 0.5 f^(2) gives ||g_t|| = 0.5 exp(-lambda_2 t), h_t = 0.
    Checked on the ODE integration of `gradient_flow` (not the closed form it is meant to match)."""
    X = rng.standard_normal((20, 3))
    K = ARCH.kernel(X)
    pca = kernel_pca(K, 3)
    f0 = 0.3 * rng.standard_normal(20)
    target = f0 + 0.5 * pca.components[:, 1]
    times = np.array([0.0, 1.0, 10.0, 50.0])
    flow = gradient_flow(K, target, times, loss="mse", f0_train=f0, rtol=1e-10, atol=1e-12)
    g_norm, h_norm = decompose(flow.train[:, :, 0], target, pca.components[:, 1])
    np.testing.assert_allclose(g_norm, 0.5 * np.exp(-pca.eigenvalues[1] * times), rtol=1e-6)
    assert h_norm.max() < 1e-7
    closed = LeastSquares(K, target, f0_train=f0).train_outputs(times)
    g2, h2 = decompose(closed, target, pca.components[:, 1])
    np.testing.assert_allclose(g2, g_norm, rtol=1e-6)
    assert h2.max() < 1e-10


def test_mse_flow_matches_closed_form_on_new_points(rng):
    X, Xs = rng.standard_normal((10, 3)), rng.standard_normal((4, 3))
    K, Ks, y = ARCH.kernel(X), ARCH.kernel(Xs, X), rng.standard_normal((10, 2))
    flow = gradient_flow(K, y, [5.0, 0.5], loss="mse", K_test_train=Ks)
    ls = LeastSquares(K, y)
    np.testing.assert_allclose(flow.train, ls.train_outputs([5.0, 0.5]), atol=1e-7)
    np.testing.assert_allclose(flow.test, ls.predict(Ks, [5.0, 0.5]), atol=1e-7)
    custom = gradient_flow(K, y, [5.0, 0.5], loss=lambda f, t: 0.5 * ((f - t) ** 2).sum(1), K_test_train=Ks)
    np.testing.assert_allclose(custom.test, flow.test, atol=1e-9)
    np.testing.assert_allclose(flow.loss, 0.5 * ((flow.train - y) ** 2).sum((1, 2)) / 10, rtol=1e-12)


def test_cross_entropy_flow_matches_gradient_descent_on_random_features(rng):
    """Section 3.1: gradient descent on theta of f = f0 + Phi theta / sqrt(P) is kernel gradient descent with
    K = Phi Phi^T / P. Train it explicitly with softmax cross-entropy at a small step."""
    n, m, P, k = 12, 5, 40, 3
    Phi_all = rng.standard_normal((n + m, P))
    Phi, Phi_s = Phi_all[:n], Phi_all[n:]
    K, Ks = Phi @ Phi.T / P, Phi_s @ Phi.T / P
    labels = rng.integers(0, k, n)
    f0, fs0 = 0.2 * rng.standard_normal((n, k)), 0.2 * rng.standard_normal((m, k))
    theta = torch.zeros(P, k, dtype=torch.float64, requires_grad=True)
    Phi_t, lr, t_end = torch.from_numpy(Phi), 0.01, 3.0
    for _ in range(int(round(t_end / lr))):
        f = torch.from_numpy(f0) + Phi_t @ theta / np.sqrt(P)
        cost = torch.nn.functional.cross_entropy(f, torch.from_numpy(labels))   # (1/N) sum of l_i
        (grad,) = torch.autograd.grad(cost, theta)
        with torch.no_grad():
            theta -= lr * grad
    theta_np = theta.detach().numpy()
    flow = gradient_flow(K, labels, t_end, f0_train=f0, K_test_train=Ks, f0_test=fs0)
    np.testing.assert_allclose(flow.train[0], f0 + Phi @ theta_np / np.sqrt(P), atol=2e-4)
    np.testing.assert_allclose(flow.test[0], fs0 + Phi_s @ theta_np / np.sqrt(P), atol=2e-4)
    assert flow.loss[0] < np.log(k)


def test_logistic_flow_reduces_the_loss(rng):
    X = rng.standard_normal((10, 3))
    K, y = ARCH.kernel(X), (rng.standard_normal(10) > 0).astype(float)
    flow = gradient_flow(K, y, [0.0, 10.0, 100.0], loss="logistic")
    assert flow.loss[0] == pytest.approx(np.log(2)) and flow.loss[2] < flow.loss[1] < flow.loss[0]


def test_early_stopping_picks_the_best_validation_time(rng):
    X, Xv = rng.standard_normal((15, 2)), rng.standard_normal((30, 2))
    truth = lambda Z: np.sin(2 * Z[:, 0])                              # noqa: E731
    y = truth(X) + 0.5 * rng.standard_normal(15)
    K, Kv = ARCH.kernel(X), ARCH.kernel(Xv, X)
    ls = LeastSquares(K, y)
    times = np.logspace(-1, 5, 61)
    result = early_stopping_time(ls, Kv, truth(Xv), times=times)
    brute = [0.5 * np.mean((ls.predict(Kv, t) - truth(Xv)) ** 2) for t in times]
    assert result.time == times[int(np.argmin(brute))]
    np.testing.assert_allclose(result.losses, brute, rtol=1e-12)
    default = early_stopping_time(ls, Kv, truth(Xv))
    assert default.times[0] == 0 and default.loss <= result.loss * 1.05


def test_converged_fraction_counts_components_past_the_tolerance(rng):
    X = rng.standard_normal((12, 3))
    K = ARCH.kernel(X)
    pca = kernel_pca(K, 3)
    target = 2.0 * pca.components[:, 0] + 1.0 * pca.components[:, 2]  # energies 4 and 1
    lam1, lam3 = pca.eigenvalues[0], pca.eigenvalues[2]
    t1, t3 = np.log(100) / lam1, np.log(100) / lam3                    # exp(-lambda t) = 0.01
    fractions = converged_fraction(K, target, [0.0, 0.99 * t1, 1.01 * t1, 1.01 * t3])
    np.testing.assert_allclose(fractions, [0.0, 0.0, 0.8, 1.0], atol=1e-9)
    assert converged_fraction(K, target, 1.01 * t1, tolerance=0.001) == pytest.approx(0.0)


def test_bad_inputs(rng):
    X = rng.standard_normal((6, 2))
    K = ARCH.kernel(X)
    pca = kernel_pca(K, 2)
    with pytest.raises(ValueError, match="unit p_in norm"):
        decompose(np.zeros(6), np.ones(6), 2 * pca.components[:, 0])
    with pytest.raises(ValueError, match="N = 6"):
        decompose(np.zeros((3, 6)), np.ones(5), pca.components[:, 0])
    with pytest.raises(ValueError, match="n_components"):
        kernel_pca(np.ones((6, 6)), 2)
    with pytest.raises(ValueError, match="finite"):
        gradient_flow(K, np.ones(6), np.inf)
    with pytest.raises(ValueError, match="loss"):
        gradient_flow(K, np.ones(6), 1.0, loss="hinge")
    with pytest.raises(ValueError, match="labels"):
        gradient_flow(K, np.full(6, 0.5), 1.0, loss="cross_entropy")
    with pytest.raises(ValueError, match="tolerance"):
        converged_fraction(K, np.ones(6), 1.0, tolerance=1.5)
    with pytest.raises(ValueError, match="K_new_train"):
        pca.extend(np.ones((3, 4)))
