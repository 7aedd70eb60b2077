"""The Gaussian of infinitely wide trained networks against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import ntkit as nk
from ntkit.dynamics import InfiniteWidthGP, train_network

ARCH = nk.MLP(4, "relu", beta=0.1)


def reference(K, Ks, Sigma, Sigma_cross, Sigma_test, y, t):
    """mean and cov of f_t = f0 + K(x,X) (1/N) int_0^t exp(-s K/N) ds (y - f0(X)) by Van Loan's block
    exponential (no eigendecomposition), f0 ~ N(0, Sigma)."""
    n = K.shape[0]
    block = np.zeros((2 * n, 2 * n))
    block[:n, :n], block[:n, n:] = -K / n, np.eye(n)
    A = Ks @ scipy.linalg.expm(block * t)[:n, n:] / n
    cov = Sigma_test - A @ Sigma_cross.T - Sigma_cross @ A.T + A @ Sigma @ A.T
    return A @ y, cov


@pytest.fixture
def data(rng):
    X, Xs = rng.standard_normal((10, 3)), rng.standard_normal((6, 3))
    return X, Xs, rng.standard_normal(10)


@pytest.mark.parametrize("trained", ["all", "last"])
def test_mean_and_covariance_at_finite_times(data, trained):
    X, Xs, y = data
    Sigma, Theta = ARCH.kernel(X, get=("nngp", "ntk"))
    Sc, Tc = ARCH.kernel(Xs, X, get=("nngp", "ntk"))
    St = ARCH.kernel(Xs, get="nngp")
    K, Ks = (Theta, Tc) if trained == "all" else (Sigma, Sc)
    gp = InfiniteWidthGP(ARCH, X, y, trained=trained)
    times = [0.0, 0.3, 5.0, 80.0]
    mean, cov = gp.predict(Xs, times, return_cov=True)
    mean_s, std = gp.predict(Xs, times, return_std=True)
    for i, t in enumerate(times):
        ref_mean, ref_cov = reference(K, Ks, Sigma, Sc, St, y, t)
        np.testing.assert_allclose(mean[i], ref_mean, atol=1e-10)
        np.testing.assert_allclose(cov[i], ref_cov, atol=1e-10)
    np.testing.assert_allclose(mean_s, mean, atol=1e-12)
    np.testing.assert_allclose(std, np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), atol=1e-8)
    np.testing.assert_allclose(cov[0], St, atol=1e-12)                # at t = 0: the NNGP prior
    # the same from precomputed Grams
    gp2 = InfiniteWidthGP.from_grams(Theta if trained == "all" else None, Sigma, y, trained=trained)
    m2, c2 = gp2.predict_from_grams(Tc, Sc, St, 5.0, return_cov=True)
    np.testing.assert_allclose(m2, mean[2], atol=1e-12)
    np.testing.assert_allclose(c2, cov[2], atol=1e-12)


def test_t_inf_formula_of_the_paper_and_zero_covariance_on_training_points(data):
    X, Xs, y = data
    Sigma, Theta = ARCH.kernel(X, get=("nngp", "ntk"))
    Sc, Tc = ARCH.kernel(Xs, X, get=("nngp", "ntk"))
    St = ARCH.kernel(Xs, get="nngp")
    gp = InfiniteWidthGP(ARCH, X, y)
    mean, cov = gp.predict(Xs, np.inf, return_cov=True)
    B = Tc @ np.linalg.inv(Theta)                                     # kappa_x^T Ktilde^-1
    np.testing.assert_allclose(mean, B @ y, atol=1e-9)                # kernel regression with Theta
    # NOTES.md: Var = Sigma(x,x) - 2 kappa^T K^-1 Sigma(X,x) + kappa^T K^-1 Sigma(X,X) K^-1 kappa
    np.testing.assert_allclose(cov, St - B @ Sc.T - Sc @ B.T + B @ Sigma @ B.T, atol=1e-9)
    _, train_cov = gp.predict(X, np.inf, return_cov=True)
    assert np.abs(train_cov).max() < 1e-9 * np.abs(Sigma).max()
    _, train_std = gp.predict(X, [10.0, np.inf], return_std=True)
    assert train_std[1].max() < 1e-5 and train_std[0].min() > 1e-3


def test_covariances_are_symmetric_psd(rng):
    X, Xs = rng.standard_normal((40, 5)), rng.standard_normal((30, 5))
    gp = InfiniteWidthGP(ARCH, X, rng.standard_normal((40, 2)))
    mean, cov = gp.predict(Xs, np.logspace(-1, 4, 6).tolist() + [np.inf], return_cov=True)
    assert mean.shape == (7, 30, 2) and cov.shape == (7, 30, 30)
    for c in cov:
        np.testing.assert_allclose(c, c.T, atol=1e-12)
        assert np.linalg.eigvalsh(c).min() > -1e-10 * np.abs(c).max()


def test_std_on_many_points_and_times_matches_the_covariance(rng):
    """Enough training points for several eigenvalue segments: the std path (low rank in time) against the
    diagonal of the covariance path (a Cholesky factor, time by time)."""
    X, Xs = rng.standard_normal((420, 6)), rng.standard_normal((25, 6))
    gp = InfiniteWidthGP(ARCH, X, rng.standard_normal(420))
    times = np.concatenate([[0.0], np.logspace(-1, 5, 40)])
    mean_s, std = gp.predict(Xs, times, return_std=True)
    mean, cov = gp.predict(Xs, times, return_cov=True)
    np.testing.assert_allclose(mean_s, mean, rtol=0, atol=1e-12)
    variance = np.diagonal(cov, axis1=1, axis2=2)
    np.testing.assert_allclose(std ** 2, variance, rtol=1e-9, atol=1e-12 * variance.max())


def test_direct_formula_when_sigma_is_singular(rng):
    """A duplicated training point makes Sigma(X, X) singular: the covariance takes the direct formula."""
    X, Xs, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)), rng.standard_normal(8)
    index = [0, 1, 2, 3, 4, 5, 6, 6]              # exact duplicate (Grams indexed, not recomputed)
    Sigma, Theta = (G[np.ix_(index, index)] for G in ARCH.kernel(X, get=("nngp", "ntk")))
    Sc, Tc = (G[:, index] for G in ARCH.kernel(Xs, X, get=("nngp", "ntk")))
    St = ARCH.kernel(Xs, get="nngp")
    gp = InfiniteWidthGP.from_grams(Theta, Sigma, y)
    assert gp._sigma_root() is None
    mean, cov = gp.predict_from_grams(Tc, Sc, St, [2.0, 40.0], return_cov=True)
    _, std = gp.predict_from_grams(Tc, Sc, np.diag(St), [2.0, 40.0], return_std=True)
    for i, t in enumerate([2.0, 40.0]):
        ref_mean, ref_cov = reference(Theta, Tc, Sigma, Sc, St, y, t)
        np.testing.assert_allclose(mean[i], ref_mean, atol=1e-9)
        np.testing.assert_allclose(cov[i], ref_cov, atol=1e-9)
        np.testing.assert_allclose(std[i], np.sqrt(np.diag(ref_cov)), atol=1e-7)
    with pytest.raises(ValueError, match="singular"):
        gp.predict_from_grams(Tc, Sc, None, np.inf)


def test_last_layer_at_inf_is_the_nngp_posterior(data):
    X, Xs, y = data
    Sigma = ARCH.kernel(X, get="nngp")
    Sc, St = ARCH.kernel(Xs, X, get="nngp"), ARCH.kernel(Xs, get="nngp")
    gp = InfiniteWidthGP(ARCH, X, y, trained="last")
    mean, cov = gp.predict(Xs, np.inf, return_cov=True)
    post_mean, post_cov = gp.posterior(Xs, return_cov=True)
    np.testing.assert_allclose(mean, post_mean, atol=1e-9)
    np.testing.assert_allclose(cov, post_cov, atol=1e-9)
    noise = 0.05                                                        # with observation noise: textbook GP
    A = np.linalg.solve(Sigma + noise * np.eye(10), np.column_stack([y, Sc.T]))
    m, s = gp.posterior(Xs, noise=noise, return_std=True)
    np.testing.assert_allclose(m, Sc @ A[:, 0], atol=1e-10)
    np.testing.assert_allclose(s, np.sqrt(np.diag(St - Sc @ A[:, 1:])), atol=1e-9)


def test_torch_in_torch_out(data):
    X, Xs, y = data
    gp = InfiniteWidthGP(ARCH, torch.from_numpy(X), torch.from_numpy(y))
    mean, std = gp.predict(torch.from_numpy(Xs), 1.0, return_std=True)
    assert isinstance(mean, torch.Tensor) and mean.shape == (6,) and std.shape == (6,)


def test_bad_inputs(data):
    X, Xs, y = data
    gp = InfiniteWidthGP(ARCH, X, y)
    with pytest.raises(ValueError, match=">= 0"):
        gp.predict(Xs, -1.0)
    with pytest.raises(ValueError, match="NaN"):
        gp.predict(Xs, [1.0, np.nan])
    with pytest.raises(ValueError, match="both"):
        gp.predict(Xs, 1.0, return_std=True, return_cov=True)
    with pytest.raises(ValueError, match="features"):
        gp.predict(Xs[:, :2], 1.0)
    with pytest.raises(ValueError, match="y_train"):
        InfiniteWidthGP(ARCH, X, y[:4])
    with pytest.raises(ValueError, match="trained"):
        InfiniteWidthGP(ARCH, X, y, trained="first")
    Sigma, Theta = ARCH.kernel(X, get=("nngp", "ntk"))
    with pytest.raises(ValueError, match="symmetric"):
        InfiniteWidthGP.from_grams(Theta + np.triu(np.ones_like(Theta)), Sigma, y)
    gp2 = InfiniteWidthGP.from_grams(Theta, Sigma, y)
    Sc, Tc = ARCH.kernel(Xs, X, get=("nngp", "ntk"))
    with pytest.raises(ValueError, match="Sigma_test"):
        gp2.predict_from_grams(Tc, Sc, None, 1.0, return_std=True)
    with pytest.raises(ValueError, match="Sigma_test"):
        gp2.predict_from_grams(Tc, Sc, np.ones(6), 1.0, return_cov=True)
    with pytest.raises(ValueError, match="Theta_test_train"):
        gp2.predict_from_grams(Tc[:, :3], Sc, None, 1.0)
    with pytest.raises(ValueError, match="predict_from_grams"):
        gp2.predict(Xs)
    index = list(range(10)) + [0]                                       # exactly duplicated point
    gp3 = InfiniteWidthGP.from_grams(None, Sigma[np.ix_(index, index)], y[index], trained="last")
    with pytest.raises(ValueError, match="noise"):
        gp3.posterior_from_grams(Sc[:, index])


def _wide_net_ensemble(arch, X, y, Xs, width, n_nets, lr, steps):
    outputs = []
    for seed in range(n_nets):
        net = arch.network(X.shape[1], width=width, seed=seed, dtype=torch.float64)
        history = train_network(net, X, y, lr=lr, steps=steps, probe=Xs, record_every=steps)
        outputs.append(history.probe_outputs[-1, :, 0].numpy())
    return np.array(outputs)


def _check_ensemble(outputs, mean, std, bias):
    n = outputs.shape[0]
    se_mean = std / np.sqrt(n)
    assert np.all(np.abs(outputs.mean(0) - mean) < 4 * se_mean + bias)
    # the sample std of n Gaussian draws has relative standard error about 1 / sqrt(2 (n - 1))
    rel = np.abs(outputs.std(0, ddof=1) / std - 1)
    assert np.all(rel < 4 / np.sqrt(2 * (n - 1)) + bias)


def test_wide_shallow_networks_follow_the_gaussian():
    """Many wide 2-layer nets trained by gradient descent: the spread over initializations matches
    the Gaussian of the infinite-width limit at the same time t = lr * steps."""
    arch = nk.MLP(2, "relu", beta=0.1)
    g = np.array([-2.194, -0.931, 0.963, 2.226])                        # the paper's Figure 2 points
    X, y = np.column_stack([np.cos(g), np.sin(g)]), np.array([-0.4, -0.2, 0.3, 0.3])
    Xs = np.column_stack([np.cos([0.0, 1.6, 3.0]), np.sin([0.0, 1.6, 3.0])])
    lr, steps = 1.0, 40
    mean, std = InfiniteWidthGP(arch, X, y).predict(Xs, lr * steps, return_std=True)
    outputs = _wide_net_ensemble(arch, X, y, Xs, width=2048, n_nets=30, lr=lr, steps=steps)
    _check_ensemble(outputs, mean, std, bias=0.05)


@pytest.mark.slow
def test_wide_deep_networks_follow_the_gaussian_at_the_end_of_training():
    """The paper's Figure 2 setting (L = 4, 1000 steps at lr 1; width 1024, 16 nets) against t = inf."""
    arch = nk.MLP(4, "relu", beta=0.1)
    g = np.array([-2.194, -0.931, 0.963, 2.226])
    X, y = np.column_stack([np.cos(g), np.sin(g)]), np.array([-0.4, -0.2, 0.3, 0.3])
    Xs = np.column_stack([np.cos([0.0, 1.6, 3.0]), np.sin([0.0, 1.6, 3.0])])
    gp = InfiniteWidthGP(arch, X, y)
    mean, std = gp.predict(Xs, 1000.0, return_std=True)
    outputs = _wide_net_ensemble(arch, X, y, Xs, width=1024, n_nets=16, lr=1.0, steps=1000)
    _check_ensemble(outputs, mean, std, bias=0.1)
