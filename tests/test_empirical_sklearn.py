"""scikit-learn estimators with the empirical NTK of a fitted torch model: predictions equal kernel regression
computed by hand from `empirical_ntk` (dense solve), by Cholesky and by matrix-free CG; classification."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntkit import empirical as E

pytest.importorskip("sklearn")
from ntkit.sklearn import EmpiricalNTKClassifier, EmpiricalNTKRegressor  # noqa: E402

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).to(DT)


def data(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 36))
    return X, np.sin(X[:, 0]) + X[:, 1] ** 2


def test_regressor_is_kernel_regression_with_the_empirical_ntk(tmp_path):
    model = cnn()
    X, y = data(25, 0)
    Xs, _ = data(7, 1)
    shaped = torch.from_numpy(X).reshape(-1, 1, 6, 6)
    K = E.empirical_ntk(model, shaped, mode="trace")
    Ks = E.empirical_ntk(model, torch.from_numpy(Xs).reshape(-1, 1, 6, 6), shaped, mode="trace")
    ridge = 1e-3 * float(K.diagonal().mean())
    expected = (Ks @ torch.linalg.solve(K + ridge * torch.eye(25, dtype=DT), torch.from_numpy(y))).numpy()
    dense = EmpiricalNTKRegressor(model, ridge=1e-3, in_shape=(1, 6, 6)).fit(X, y).predict(Xs)
    np.testing.assert_allclose(dense, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())
    stored = EmpiricalNTKRegressor(model, ridge=1e-3, in_shape=(1, 6, 6), out=str(tmp_path / "K.zarr"))
    pytest.importorskip("zarr")
    np.testing.assert_allclose(stored.fit(X, y).predict(Xs), dense, rtol=1e-12)
    iterative = EmpiricalNTKRegressor(model, ridge=1e-3, in_shape=(1, 6, 6), solver="cg").fit(X, y).predict(Xs)
    np.testing.assert_allclose(iterative, dense, rtol=1e-6, atol=1e-8 * np.abs(dense).max())


def test_classifier_and_bad_input():
    model = cnn()
    X, y = data(30, 2)
    labels = np.where(y > np.median(y), "high", "low")
    clf = EmpiricalNTKClassifier(model, ridge=1e-3, in_shape=(1, 6, 6)).fit(X, labels)
    assert set(clf.predict(X)) <= {"high", "low"}
    assert clf.score(X, labels) > 0.9  # interpolates its training set
    with pytest.raises(TypeError, match="model must be a fitted torch.nn.Module"):
        EmpiricalNTKRegressor().fit(X, y)
    with pytest.raises(ValueError, match="in_shape"):
        EmpiricalNTKRegressor(model, in_shape=(1, 5, 5)).fit(X, y)
