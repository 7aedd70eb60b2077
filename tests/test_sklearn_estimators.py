"""NTKRegressor and NTKClassifier: the trained infinitely wide network as scikit-learn estimators.

Reference numbers come from plain NumPy linear algebra on the analytic kernels (Section 5 of the
paper, NOTES.md): t = inf is kernel regression with Theta, t = 0 is the network at initialization
(mean 0, covariance Sigma), and a finite t uses exp(-t Theta / N) on the eigenbasis of Theta.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.utils.estimator_checks import parametrize_with_checks

import ntkit as nk
from ntkit.sklearn import NTKClassifier, NTKRegressor


def kernels(X: np.ndarray, Xs: np.ndarray, depth: int = 3) -> dict[str, np.ndarray]:
    arch = nk.MLP(depth, "relu", beta=0.1)
    S, K = arch.kernel(X, get=("nngp", "ntk"))
    Ss, Ks = arch.kernel(Xs, X, get=("nngp", "ntk"))
    return {"S": S, "K": K, "Ss": Ss, "Ks": Ks, "Sss": arch.kernel(Xs, get="nngp")}


def gradient_flow_map(k: dict[str, np.ndarray], t: float) -> np.ndarray:
    """A with f_t(x*) = A y + (f_0(x*) - A f_0(X)): A = Theta(x*, X) Theta^-1 (I - exp(-t Theta / N))."""
    n = k["K"].shape[0]
    lam, V = np.linalg.eigh(k["K"] / n)
    if np.isinf(t):
        decayed = 1.0 / lam
    else:   # (1 - exp(-lambda t)) / lambda, which is t at lambda = 0
        safe = np.where(lam > 0, lam, 1.0)
        decayed = np.where(lam > 0, -np.expm1(-t * safe) / safe, t)
    return (k["Ks"] / n) @ (V * decayed) @ V.T


@parametrize_with_checks([NTKRegressor(depth=2), NTKClassifier(depth=2)])
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    check(estimator)


def test_converged_regressor_is_kernel_regression_with_theta(rng) -> None:
    X, Xs = rng.standard_normal((30, 4)), rng.standard_normal((7, 4))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2]
    k = kernels(X, Xs)
    expected = k["Ks"] @ np.linalg.solve(k["K"], y)
    model = NTKRegressor(depth=3).fit(X, y)
    np.testing.assert_allclose(model.predict(Xs), expected, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.predict(X), y, rtol=1e-7, atol=1e-8)   # interpolates at t = inf
    assert model.score(X, y) == pytest.approx(1.0, abs=1e-10)
    # the variance over initializations (NOTES.md, Section 5), and zero on the training points
    A = gradient_flow_map(k, np.inf)
    cov = k["Sss"] - A @ k["Ss"].T - k["Ss"] @ A.T + A @ k["S"] @ A.T
    mean, std = model.predict(Xs, return_std=True)
    np.testing.assert_allclose(std, np.sqrt(np.diag(cov)), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(model.predict(Xs, return_cov=True)[1], cov, rtol=1e-6, atol=1e-8)
    assert np.all(model.predict(X, return_std=True)[1] < 1e-5)


def test_ridge_gives_kernel_ridge_regression_and_handles_duplicates(rng) -> None:
    X, Xs = rng.standard_normal((16, 3)), rng.standard_normal((5, 3))
    X[8:] = X[:8]                                  # every training point twice
    y = X[:, 0] ** 2
    k = kernels(X, Xs)
    expected = k["Ks"] @ np.linalg.solve(k["K"] + 0.01 * np.eye(16), y)
    np.testing.assert_allclose(NTKRegressor(depth=3, ridge=0.01).fit(X, y).predict(Xs), expected, rtol=1e-8)
    with pytest.raises(ValueError, match="singular"):   # plain least squares has no t = inf limit here
        NTKRegressor(depth=3).fit(X, y).predict(Xs)
    finite_time = NTKRegressor(depth=3, t=10.0).fit(X, y).predict(Xs)   # but any finite time is fine
    np.testing.assert_allclose(finite_time, gradient_flow_map(k, 10.0) @ y, rtol=1e-6, atol=1e-9)


def test_at_time_zero_the_network_is_its_initialization(rng) -> None:
    X, Xs = rng.standard_normal((12, 3)), rng.standard_normal((5, 3))
    y = X[:, 0]
    k = kernels(X, Xs)
    mean, cov = NTKRegressor(depth=3, t=0.0).fit(X, y).predict(Xs, return_cov=True)
    np.testing.assert_allclose(mean, 0.0, atol=1e-12)                   # f_0 ~ GP(0, Sigma)
    np.testing.assert_allclose(cov, k["Sss"], rtol=1e-8, atol=1e-12)


def test_early_stopping_follows_the_gradient_flow(rng) -> None:
    X, Xs = rng.standard_normal((20, 3)), rng.standard_normal((6, 3))
    y = np.cos(X[:, 0]) - X[:, 2]
    k = kernels(X, Xs)
    model = NTKRegressor(depth=3).fit(X, y)
    losses = []
    for t in (1.0, 10.0, 100.0):
        model.set_params(t=t)   # t is read at predict time: no refit needed
        np.testing.assert_allclose(model.predict(Xs), gradient_flow_map(k, t) @ y, rtol=1e-6, atol=1e-9)
        losses.append(np.mean((model.predict(X) - y) ** 2))
    assert losses[0] > losses[1] > losses[2]                          # the training cost decreases


def test_multi_output_targets_are_trained_independently(rng) -> None:
    X, Xs = rng.standard_normal((15, 3)), rng.standard_normal((4, 3))
    Y = np.stack([X[:, 0], X[:, 1] ** 2, np.sin(X[:, 2])], axis=1)
    model = NTKRegressor(depth=2, t=5.0).fit(X, Y)
    mean, std = model.predict(Xs, return_std=True)
    assert mean.shape == (4, 3) and std.shape == (4, 3)
    for column in range(3):
        single = NTKRegressor(depth=2, t=5.0).fit(X, Y[:, column])
        np.testing.assert_allclose(mean[:, column], single.predict(Xs), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(std[:, column], single.predict(Xs, return_std=True)[1], rtol=1e-10)
    assert model.predict(Xs, return_cov=True)[1].shape == (4, 4, 3)


def test_classifier_regresses_centred_one_hot_targets(rng) -> None:
    X, Xs = rng.standard_normal((24, 3)), rng.standard_normal((8, 3))
    labels = np.array(["a", "b", "c"])[np.argmax(X, axis=1)]
    clf = NTKClassifier(depth=3, t=50.0).fit(X, labels)
    assert list(clf.classes_) == ["a", "b", "c"]
    targets = (labels[:, None] == clf.classes_[None, :]) - 1.0 / 3
    expected = gradient_flow_map(kernels(X, Xs), 50.0) @ targets
    np.testing.assert_allclose(clf.decision_function(Xs), expected, rtol=1e-6, atol=1e-9)
    assert list(clf.predict(Xs)) == list(clf.classes_[np.argmax(expected, axis=1)])
    proba = clf.predict_proba(Xs)
    np.testing.assert_allclose(proba, np.exp(expected) / np.exp(expected).sum(1, keepdims=True), rtol=1e-10)
    # two classes: one decision value, positive for classes_[1]
    binary = NTKClassifier(depth=3).fit(X, X[:, 0] > 0)
    decision = binary.decision_function(Xs)
    assert decision.shape == (8,)
    np.testing.assert_array_equal(binary.predict(Xs), decision > 0)


def test_classifier_on_the_bundled_digits() -> None:
    digits = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(digits.data / 16.0, digits.target, train_size=500,
                                                        random_state=0, stratify=digits.target)
    accuracy = NTKClassifier(depth=3).fit(X_train, y_train).score(X_test, y_test)
    assert accuracy > 0.95    # an RBF SVC gets about 0.97 on this split


def test_bad_parameters_and_targets_are_rejected(rng) -> None:
    X, y = rng.standard_normal((6, 2)), rng.standard_normal(6)
    with pytest.raises(ValueError, match="t must be >= 0"):
        NTKRegressor(t=-1.0).fit(X, y)
    with pytest.raises(TypeError, match="t must be a number"):
        NTKRegressor(t="inf").fit(X, y)
    with pytest.raises(ValueError, match="t must be a single time"):
        NTKRegressor(t=[1.0, 2.0]).fit(X, y)
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        NTKRegressor(ridge=-0.1).fit(X, y)
    with pytest.raises(ValueError, match="depth"):
        NTKRegressor(depth=0).fit(X, y)
    with pytest.raises(ValueError, match="return_std or return_cov"):
        NTKRegressor().fit(X, y).predict(X, return_std=True, return_cov=True)
    with pytest.raises(ValueError, match="1d array"):
        NTKClassifier().fit(X, np.array([[0, 1], [1, 0], [1, 1], [0, 0], [1, 0], [0, 1]]))
    with pytest.raises(ValueError, match="Unknown label type"):
        NTKClassifier().fit(X, y)
