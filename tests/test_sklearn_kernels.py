"""ntkit.sklearn.NTK / NNGP as scikit-learn kernels: values, gradients, and use inside scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel
from sklearn.kernel_ridge import KernelRidge
from sklearn.svm import SVC, SVR

import ntkit as nk
from ntkit.sklearn import NNGP, NTK


def spread_points(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Random points with no two nearly parallel (where the arc-cosine formulas lose sqrt(eps))."""
    return rng.standard_normal((n, d)) + 0.5


def test_known_values_from_the_paper() -> None:
    # NOTES.md: beta = 0.1, L = 4, ReLU, x0 = (1, 0): Theta(x0, x0) = 0.2825, Theta(x0, -x0) = 0.0644,
    # Sigma(x0, x0) = 0.0813 (the paper's Figure 1).
    X = np.array([[1.0, 0.0], [-1.0, 0.0]])
    theta = NTK(depth=4, b_std=0.1)(X)
    sigma = NNGP(depth=4, b_std=0.1)(X)
    assert theta[0, 0] == pytest.approx(0.2825, abs=5e-4)
    assert theta[0, 1] == pytest.approx(0.0644, abs=5e-4)
    assert sigma[0, 0] == pytest.approx(0.0813, abs=5e-4)
    assert NTK(depth=4, b_std=0.1).diag(X) == pytest.approx(np.diag(theta), rel=1e-12)


@pytest.mark.parametrize("kernel_class", [NTK, NNGP])
@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_gradient_matches_finite_differences(rng, kernel_class, activation) -> None:
    X = spread_points(rng, 7, 3)
    kernel = kernel_class(depth=3, activation=activation, W_std=1.3, b_std=0.4)
    K, K_gradient = kernel(X, eval_gradient=True)
    assert K_gradient.shape == (7, 7, 2)
    np.testing.assert_allclose(K, kernel(X), rtol=1e-10, atol=1e-12)
    eps = 1e-5
    for index in range(2):
        step = np.zeros(2)
        step[index] = eps
        plus, minus = kernel.clone_with_theta(kernel.theta + step), kernel.clone_with_theta(kernel.theta - step)
        finite = (plus(X) - minus(X)) / (2 * eps)         # d K / d log(p), central differences
        np.testing.assert_allclose(K_gradient[:, :, index], finite, rtol=1e-6, atol=1e-8)


def test_gradient_of_a_fixed_hyperparameter_is_left_out(rng) -> None:
    X = spread_points(rng, 5, 2)
    kernel = NTK(depth=2, b_std_bounds="fixed")
    K, K_gradient = kernel(X, eval_gradient=True)
    assert kernel.theta.shape == (1,) and K_gradient.shape == (5, 5, 1)
    eps = 1e-5
    plus, minus = kernel.clone_with_theta(kernel.theta + eps), kernel.clone_with_theta(kernel.theta - eps)
    finite = (plus(X) - minus(X)) / (2 * eps)
    np.testing.assert_allclose(K_gradient[:, :, 0], finite, rtol=1e-6, atol=1e-8)
    both_fixed = NTK(depth=2, W_std_bounds="fixed", b_std_bounds="fixed")
    assert both_fixed(X, eval_gradient=True)[1].shape == (5, 5, 0)


def test_gradient_over_several_tiles_matches_the_values(rng, monkeypatch) -> None:
    # Tiles of 4 points: the gradient path assembles the Gram from symmetric tiles and exact diagonals.
    monkeypatch.setattr(nk.gram, "default_tile", lambda device: 4)
    X = spread_points(rng, 11, 3)
    kernel = NTK(depth=3)
    K, K_gradient = kernel(X, eval_gradient=True)
    np.testing.assert_allclose(K, kernel(X), rtol=1e-10)
    np.testing.assert_allclose(K_gradient, np.swapaxes(K_gradient, 0, 1), rtol=0, atol=0)
    eps = 1e-5
    finite = (kernel.clone_with_theta(kernel.theta + [0, eps])(X)
              - kernel.clone_with_theta(kernel.theta - [0, eps])(X)) / (2 * eps)
    np.testing.assert_allclose(K_gradient[:, :, 1], finite, rtol=1e-6, atol=1e-8)


def test_diag_clone_params_and_repr(rng) -> None:
    X = rng.standard_normal((6, 4))
    kernel = NNGP(depth=3, activation="tanh", W_std=1.5, b_std=0.2, W_std_bounds=(0.1, 10.0))
    np.testing.assert_allclose(kernel.diag(X), np.diag(kernel(X)), rtol=1e-12)
    copy = clone(kernel)
    assert copy == kernel and copy is not kernel
    assert copy.get_params() == kernel.get_params()
    assert not kernel.is_stationary()
    assert [h.name for h in kernel.hyperparameters] == ["W_std", "b_std", "scale"]   # scale fixed by default
    np.testing.assert_allclose(kernel.bounds, np.log([[0.1, 10.0], [1e-3, 1e2]]))
    assert repr(kernel) == "NNGP(depth=3, activation='tanh', W_std=1.5, b_std=0.2)"
    arch = nk.MLP(depth=3, activation="tanh", W_std=1.5, b_std=0.2)
    np.testing.assert_allclose(NNGP.from_mlp(arch)(X), arch.kernel(X, get="nngp"), rtol=1e-12)


def test_composition_with_sklearn_kernels(rng) -> None:
    X, Y = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    ntk, nngp = NTK(depth=2), NNGP(depth=2)
    combined = ConstantKernel(2.0) * ntk + nngp + WhiteKernel(0.5)
    expected = 2.0 * ntk(X) + nngp(X) + 0.5 * np.eye(5)
    np.testing.assert_allclose(combined(X), expected, rtol=1e-12)
    np.testing.assert_allclose(combined(X, Y), 2.0 * ntk(X, Y) + nngp(X, Y), rtol=1e-12)
    np.testing.assert_allclose(combined.diag(X), np.diag(expected), rtol=1e-12)
    K, K_gradient = combined(X, eval_gradient=True)
    assert K_gradient.shape == (5, 5, 1 + 2 + 2 + 1)


def test_gaussian_process_regressor_optimizes_the_hyperparameters(rng) -> None:
    X = spread_points(rng, 30, 2)
    y = np.sin(2 * X[:, 0]) * X[:, 1] + 0.05 * rng.standard_normal(30)
    kernel = ConstantKernel(1.0) * NTK(depth=3) + WhiteKernel(1e-2, noise_level_bounds=(1e-10, 1.0))
    gp = GaussianProcessRegressor(kernel, random_state=0).fit(X, y)
    start = gp.log_marginal_likelihood(kernel.theta)
    assert gp.log_marginal_likelihood_value_ > start + 1.0
    # the gradient of the log marginal likelihood (built from our K_gradient) vs finite differences
    theta = gp.kernel_.theta
    value, gradient = gp.log_marginal_likelihood(theta, eval_gradient=True)
    eps = 1e-5
    for index in range(len(theta)):
        step = np.zeros_like(theta)
        step[index] = eps
        lml = gp.log_marginal_likelihood
        finite = (lml(theta + step) - lml(theta - step)) / (2 * eps)
        assert gradient[index] == pytest.approx(finite, rel=1e-4, abs=1e-4)


def test_kernel_ridge_and_svm_use_the_kernel(rng) -> None:
    X, Xs = rng.standard_normal((25, 4)), rng.standard_normal((6, 4))
    y = X[:, 0] - X[:, 1] ** 2
    kernel = NTK(depth=3)
    arch = nk.MLP(depth=3, beta=0.1)
    K, Ks = arch.kernel(X), arch.kernel(Xs, X)
    # kernel ridge regression by hand: Ks (K + alpha I)^{-1} y
    ridge = KernelRidge(alpha=0.1, kernel=kernel).fit(X, y)
    np.testing.assert_allclose(ridge.predict(Xs), Ks @ np.linalg.solve(K + 0.1 * np.eye(25), y), rtol=1e-8)
    # SVMs with the kernel as a callable agree with the same SVMs on the precomputed Gram
    labels = (y > np.median(y)).astype(int)
    svc = SVC(kernel=kernel).fit(X, labels)
    svc_pre = SVC(kernel="precomputed").fit(K, labels)
    np.testing.assert_allclose(svc.decision_function(Xs), svc_pre.decision_function(Ks), rtol=1e-6, atol=1e-9)
    svr = SVR(kernel=kernel).fit(X, y)
    np.testing.assert_allclose(svr.predict(Xs), SVR(kernel="precomputed").fit(K, y).predict(Ks), rtol=1e-6)


def test_bad_input_is_rejected(rng) -> None:
    X = rng.standard_normal((4, 2))
    with pytest.raises(ValueError, match="Y is None"):
        NTK()(X, X.copy(), eval_gradient=True)
    with pytest.raises(ValueError, match="b_std must be > 0"):
        NTK(b_std=0.0)(X, eval_gradient=True)
    assert NTK(b_std=0.0, b_std_bounds="fixed")(X, eval_gradient=True)[1].shape == (4, 4, 1)
    with pytest.raises(ValueError, match="depth"):
        NTK(depth=0)(X)
    with pytest.raises(ValueError, match="X contains NaN"):
        NTK()(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="same number of features"):
        NTK()(X, np.ones((2, 3)))
    with pytest.raises(TypeError, match="ntkit.MLP"):
        NTK.from_mlp("relu")
    with pytest.raises(ValueError, match="standard"):
        NTK.from_mlp(nk.MLP(2, parametrization="standard"))
