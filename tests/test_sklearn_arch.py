"""ntkit.sklearn with any architecture: convolutional and residual kernels as scikit-learn kernels and estimators,
per-layer scales, the output scale, Nystrom centres. References: the architecture's own kernel on the reshaped
inputs, kernel regression by hand, central finite differences for the gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

import ntkit as nk
from ntkit.sklearn import NNGP, NTK, NTKClassifier, NTKRegressor

SHAPE = (1, 5, 5)


def cnn() -> nk.Sequential:
    return nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.AvgPool2d(2), nk.Conv2d(2), nk.ReLU(), nk.GlobalAvgPool(),
                         nk.Linear())


def images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, 25)) + 0.3


def finite_differences(kernel, X: np.ndarray, index: int, eps: float = 1e-5) -> np.ndarray:
    """d K / d theta_index by central differences (theta: the log-hyperparameters)."""
    step = np.zeros_like(kernel.theta)
    step[index] = eps
    return (kernel.clone_with_theta(kernel.theta + step)(X) - kernel.clone_with_theta(kernel.theta - step)(X)) / (
        2 * eps)


def assert_gradient(gradient: np.ndarray, finite: np.ndarray, K: np.ndarray) -> None:
    """Central differences: error eps^2 K''' ~ 1e-10 relative, plus rounding 1e-16 / eps ~ 1e-11; the gradient's
    diagonal is that of the exact diagonal (`kernel_diag` differentiated), as accurate as the rest."""
    np.testing.assert_allclose(gradient, finite, rtol=1e-6, atol=1e-8 * np.abs(K).max())


@pytest.mark.parametrize("kernel_class", [NTK, NNGP])
def test_a_cnn_kernel_on_flat_rows_is_the_architectures_kernel(rng, kernel_class) -> None:
    X, Y = images(rng, 6), images(rng, 4)
    kernel = kernel_class(arch=cnn(), in_shape=SHAPE)
    get = "ntk" if kernel_class is NTK else "nngp"
    exact = cnn().kernel(X.reshape(-1, *SHAPE), Y.reshape(-1, *SHAPE), get=get)
    np.testing.assert_allclose(kernel(X, Y), exact, rtol=1e-12)
    np.testing.assert_allclose(kernel.diag(X), np.diag(kernel(X)), rtol=1e-10)
    assert kernel.get_params()["W_std"] is None and np.allclose(kernel.theta, np.log([1.0, 0.1]))
    copy = clone(kernel)
    np.testing.assert_allclose(copy(X, Y), kernel(X, Y), rtol=0)


def test_cnn_gradient_matches_finite_differences(rng) -> None:
    X = images(rng, 5)
    kernel = NTK(arch=cnn(), in_shape=SHAPE, W_std=1.2, b_std=0.3)
    K, K_gradient = kernel(X, eval_gradient=True)
    # one autograd block against the tiled path: the angle between two points is rounded differently (sqrt(eps))
    np.testing.assert_allclose(K, kernel(X), rtol=1e-8)
    assert K_gradient.shape == (5, 5, 2)
    for index in range(2):
        assert_gradient(K_gradient[:, :, index], finite_differences(kernel, X, index), K)


def test_per_layer_scales(rng) -> None:
    X = images(rng, 4)
    shared = NTK(arch=cnn(), in_shape=SHAPE, W_std=1.3, b_std=0.2)
    per_layer = NTK(arch=cnn(), in_shape=SHAPE, W_std=[1.3] * 3, b_std=[0.2, 0.2, 0.2])
    np.testing.assert_allclose(per_layer(X), shared(X), rtol=1e-12)
    kernel = NTK(arch=cnn(), in_shape=SHAPE, W_std=[1.0, 1.5, 0.8], b_std=[0.1, 0.3, 0.2])
    assert kernel.theta.shape == (6,) and kernel.bounds.shape == (6, 2)
    layered = nk.Sequential(nk.Conv2d(3, W_std=1.0, b_std=0.1), nk.ReLU(), nk.AvgPool2d(2),
                            nk.Conv2d(2, W_std=1.5, b_std=0.3), nk.ReLU(), nk.GlobalAvgPool(),
                            nk.Linear(W_std=0.8, b_std=0.2))
    np.testing.assert_allclose(kernel(X), layered.kernel(X.reshape(-1, *SHAPE)), rtol=1e-12)
    # W_std=None takes the architecture's own scales: one per layer when they differ
    own = NTK(arch=layered, in_shape=SHAPE)
    np.testing.assert_allclose(np.exp(own.theta), [1.0, 1.5, 0.8, 0.1, 0.3, 0.2])
    K, K_gradient = kernel(X, eval_gradient=True)
    for index in (1, 3, 5):
        assert_gradient(K_gradient[:, :, index], finite_differences(kernel, X, index), K)


def test_scale_is_the_constant_kernels_factor(rng) -> None:
    X = rng.standard_normal((6, 3))
    scaled = NTK(depth=3, scale=2.5, scale_bounds=(1e-3, 1e3), W_std_bounds="fixed")
    np.testing.assert_allclose(scaled(X), (ConstantKernel(2.5) * NTK(depth=3))(X), rtol=1e-12)
    K, K_gradient = scaled(X, eval_gradient=True)
    assert K_gradient.shape == (6, 6, 2)     # b_std, scale
    np.testing.assert_allclose(K_gradient[:, :, 1], K, rtol=1e-12)   # d K / d log(scale) = K
    np.testing.assert_allclose(K_gradient[:, :, 0], finite_differences(scaled, X, 0), rtol=1e-6, atol=1e-8)


def test_gaussian_process_and_svc_with_a_cnn_kernel(rng) -> None:
    sequences = nk.Sequential(nk.Conv1d(3), nk.ReLU(), nk.GlobalAvgPool(), nk.Linear())   # rows as (1, 8)
    Z = rng.standard_normal((16, 8))
    target = np.tanh(Z[:, 3] + Z[:, 4]) + 0.05 * rng.standard_normal(16)
    kernel = NTK(arch=sequences, in_shape=(1, 8), W_std_bounds="fixed", scale_bounds=(1e-3, 1e3)) + WhiteKernel(1e-2)
    gp = GaussianProcessRegressor(kernel, random_state=0).fit(Z, target)
    assert gp.log_marginal_likelihood_value_ > gp.log_marginal_likelihood(kernel.theta) + 1.0
    X, Xs = images(rng, 24), images(rng, 5)
    y = np.tanh(X[:, 12]) + 0.05 * rng.standard_normal(24)
    labels = (y > np.median(y)).astype(int)
    ntk = NTK(arch=cnn(), in_shape=SHAPE)
    K, Ks = ntk(X), ntk(Xs, X)
    svc = SVC(kernel=ntk).fit(X, labels)
    np.testing.assert_allclose(svc.decision_function(Xs),
                               SVC(kernel="precomputed").fit(K, labels).decision_function(Ks), rtol=1e-6, atol=1e-9)


def test_regressor_with_a_cnn_is_kernel_regression(rng) -> None:
    X, Xs = images(rng, 20), images(rng, 4)
    y = X[:, 3] - X[:, 20]
    arch = cnn()
    K, Ks = arch.kernel(X.reshape(-1, *SHAPE)), arch.kernel(Xs.reshape(-1, *SHAPE), X.reshape(-1, *SHAPE))
    reg = NTKRegressor(arch=arch, in_shape=SHAPE, ridge=1e-3).fit(X, y)
    np.testing.assert_allclose(reg.predict(Xs), Ks @ np.linalg.solve(K + 1e-3 * np.eye(20), y), rtol=1e-8)
    clf = NTKClassifier(arch=nk.infinite(nn.Sequential(nn.Linear(25, 8), nn.ReLU(), nn.Linear(8, 1))))
    assert clf.fit(X, y > 0).score(X, y > 0) == 1.0     # interpolates its training set


@pytest.mark.parametrize("centers", ["uniform", "rpcholesky"])
def test_nystrom_centres_on_every_point_are_exact(rng, centers) -> None:
    X, Xs = rng.standard_normal((30, 3)), rng.standard_normal((5, 3))
    y = np.sin(X[:, 0])
    arch = nk.MLP(3, beta=0.1)
    K, Ks = arch.kernel(X), arch.kernel(Xs, X)
    reg = NTKRegressor(depth=3, solver="nystrom", n_centers=30, centers=centers, ridge=1e-2).fit(X, y)
    # Nystrom on all N centres is kernel ridge regression (the CG's tolerance 1e-10)
    np.testing.assert_allclose(reg.predict(Xs), Ks @ np.linalg.solve(K + 1e-2 * np.eye(30), y), rtol=1e-6,
                               atol=1e-8)


@parametrize_with_checks([NTKRegressor(arch=nk.Sequential(nk.Linear(), nk.ReLU(), nk.Linear(), nk.ReLU(), nk.Linear())),
                          NTKClassifier(arch=nk.MLP(2), centers="rpcholesky")])
@pytest.mark.slow
def test_scikit_learn_estimator_checks_with_arch(estimator, check) -> None:
    check(estimator)


def test_bad_architectures_and_shapes_are_rejected(rng) -> None:
    X = rng.standard_normal((4, 25))
    with pytest.raises(TypeError, match="nk.infinite"):
        NTK(arch=nn.Linear(2, 1))(X)
    with pytest.raises(TypeError, match="ntkit architecture"):
        NTK(arch="cnn")(X)
    with pytest.raises(ValueError, match="MLP shorthand"):
        NTK(arch=cnn(), depth=3, in_shape=SHAPE)(X)
    with pytest.raises(ValueError, match="in_shape"):
        NTK(arch=cnn(), in_shape=(1, 4, 4))(X)
    with pytest.raises(ValueError, match="one per weight layer"):
        NTK(arch=cnn(), in_shape=SHAPE, W_std=[1.0, 2.0])(X)
    with pytest.raises(ValueError, match="MLP shorthand"):
        NTKRegressor(arch=cnn(), in_shape=SHAPE, beta=0.3).fit(X, X[:, 0])
    with pytest.raises(ValueError, match="centers"):
        NTKRegressor(solver="nystrom", centers="best").fit(X, X[:, 0])
    with pytest.raises(ValueError, match="b_std must be > 0"):
        NTK(arch=nk.Sequential(nk.Linear(b_std=0.0)))(X, eval_gradient=True)


def test_an_attention_architecture_keeps_its_own_scales_in_the_sklearn_kernel() -> None:
    """SelfAttention derives its W_std from its own settings: the per-layer scales skip it (they set those of the
    token-wise and dense layers), and the kernel with the architecture's own values is the architecture's."""
    from ntkit.sklearn._arch import weight_layers, with_scales

    arch = nk.Sequential(nk.TokenLinear(), nk.Residual(nk.SelfAttention(linear_scaling=True)), nk.LayerNorm(),
                         nk.Residual(nk.TokenLinear(), nk.ReLU(), nk.TokenLinear()), nk.GlobalAvgPool(), nk.Linear())
    assert [type(layer).__name__ for layer in weight_layers(arch)] == ["TokenLinear"] * 3 + ["Linear"]
    rescaled = with_scales(arch, 1.5, 0.2)
    assert "W_std=1.5" in rescaled.describe() and rescaled.describe().count("SelfAttention") == 1
    X = np.random.default_rng(0).normal(size=(6, 15))
    K = NTK(arch=arch, in_shape=(3, 5))(X)
    np.testing.assert_allclose(K, arch.kernel(torch.from_numpy(X).reshape(6, 3, 5)).numpy(), rtol=1e-12)


def branched(combine: str, W: list[float], b: list[float]) -> nk.Sequential:
    """A Linear, then a Parallel of two branches with weight layers of their own, then a Linear: scales W, b."""
    one = (nk.Linear(W_std=W[1], b_std=b[1]),)
    two = (nk.Residual(nk.ReLU(), nk.Linear(W_std=W[2], b_std=b[2])), nk.ReLU(), nk.Linear(W_std=W[3], b_std=b[3]))
    return nk.Sequential(nk.Linear(W_std=W[0], b_std=b[0]), nk.Parallel(one, two, combine=combine),
                         nk.Linear(W_std=W[4], b_std=b[4]))


@pytest.mark.parametrize("combine", ["sum", "concat", "product"])
def test_per_layer_scales_reach_every_parallel_branch(rng, combine) -> None:
    X = rng.standard_normal((5, 3)) + 0.4
    W, b = [1.1, 0.7, 1.4, 0.9, 1.2], [0.2, 0.5, 0.1, 0.3, 0.25]
    kernel = NTK(arch=branched(combine, [1.0] * 5, [0.1] * 5), W_std=W, b_std=b)
    assert kernel.theta.shape == (10,)
    # the reference: the architecture written with those scales by hand
    np.testing.assert_allclose(kernel(X), branched(combine, W, b).kernel(X), rtol=1e-12)
    copy = clone(kernel)
    assert copy.get_params()["W_std"] == W and np.allclose(np.exp(copy.theta), W + b)
    np.testing.assert_allclose(copy(X), kernel(X), rtol=0)
    own = NTK(arch=branched(combine, W, b))     # W_std=None: the scales of every branch, in order
    np.testing.assert_allclose(np.exp(own.theta), W + b, rtol=1e-15)
    K, K_gradient = kernel(X, eval_gradient=True)
    for index in (1, 2, 3, 6, 8):      # W_std and b_std of the branches' layers
        assert np.abs(K_gradient[:, :, index]).max() > 1e-3   # each branch's scales move the kernel
        assert_gradient(K_gradient[:, :, index], finite_differences(kernel, X, index), K)
