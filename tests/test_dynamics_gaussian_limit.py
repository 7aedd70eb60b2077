"""InfiniteWidthGP at t = inf from one Cholesky factorization, against NumPy solves and the spectrum path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.dynamics import IllConditionedWarning, InfiniteWidthGP
from ntkit.dynamics._cholesky import cholesky, condition_lower_bound

ARCH = nk.MLP(3, "relu", beta=0.1)


@pytest.fixture
def grams(rng):
    X, Xs = rng.standard_normal((25, 4)), rng.standard_normal((8, 4))
    Sigma, Theta = ARCH.kernel(X, get=("nngp", "ntk"))
    Sc, Tc = ARCH.kernel(Xs, X, get=("nngp", "ntk"))
    return X, Xs, Sigma, Theta, Sc, Tc, ARCH.kernel(Xs, get="nngp"), rng.standard_normal((25, 2))


def paper_limit(K, Kc, Sigma, Sc, St, y, ridge):
    """NOTES.md, Section 5: mean k^T K^-1 y, Var = Sigma(x,x) - 2 k^T K^-1 Sigma(X,x) + k^T K^-1 Sigma K^-1 k,
    with K + ridge I for K, by NumPy's LU solve."""
    B = np.linalg.solve(K + ridge * np.eye(len(K)), Kc.T).T
    return B @ y, St - B @ Sc.T - Sc @ B.T + B @ Sigma @ B.T


@pytest.mark.parametrize("trained", ["all", "last"])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_limit_matches_numpy_solve_and_the_spectrum(grams, trained, ridge):
    X, Xs, Sigma, Theta, Sc, Tc, St, y = grams
    K, Kc = (Theta, Tc) if trained == "all" else (Sigma, Sc)
    gp = InfiniteWidthGP(ARCH, X, y, trained=trained, ridge=ridge)
    mean, cov = gp.predict(Xs, return_cov=True)
    mean_s, std = gp.predict(Xs, return_std=True)
    assert gp._spectrum is None                                   # t = inf did not decompose
    ref_mean, ref_cov = paper_limit(K, Kc, Sigma, Sc, St, y, ridge)
    scale = np.abs(St).max()
    np.testing.assert_allclose(mean, ref_mean, atol=1e-9)
    np.testing.assert_allclose(mean_s, mean, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-9 * scale)
    np.testing.assert_allclose(std, np.sqrt(np.clip(np.diag(ref_cov), 0, None)), atol=1e-6 * np.sqrt(scale))
    # the eigendecomposition's t = inf (a mixed time array takes that path) agrees
    mean_e, cov_e = gp.predict(Xs, [1.0, np.inf], return_cov=True)
    _, std_e = gp.predict(Xs, [1.0, np.inf], return_std=True)
    assert gp._spectrum is not None
    np.testing.assert_allclose(mean_e[1], mean, atol=1e-9)
    np.testing.assert_allclose(cov_e[1], cov, atol=1e-9 * scale)
    np.testing.assert_allclose(std_e[1], std, atol=1e-6 * np.sqrt(scale))
    # and so does a time long past the slowest rate lambda_min + ridge / N
    t_end = 60.0 / float(gp.spectrum.rates(ridge).min())
    np.testing.assert_allclose(gp.predict(Xs, t_end), mean, atol=1e-7)


def test_arrays_of_infinite_times_and_grams(grams):
    X, Xs, Sigma, Theta, Sc, Tc, St, y = grams
    gp = InfiniteWidthGP.from_grams(torch.from_numpy(Theta), torch.from_numpy(Sigma), torch.from_numpy(y[:, 0]))
    mean, std = gp.predict_from_grams(torch.from_numpy(Tc), torch.from_numpy(Sc), torch.from_numpy(np.diag(St).copy()),
                                      [np.inf, np.inf], return_std=True)
    assert isinstance(mean, torch.Tensor) and mean.shape == (2, 8) and std.shape == (2, 8)
    ref_mean, ref_cov = paper_limit(Theta, Tc, Sigma, Sc, St, y[:, 0], 0.0)
    np.testing.assert_allclose(mean.numpy(), np.stack([ref_mean] * 2), atol=1e-9)
    np.testing.assert_allclose(std.numpy()[1], np.sqrt(np.clip(np.diag(ref_cov), 0, None)), atol=1e-6)
    _, cov = gp.predict_from_grams(Tc, Sc, St, [np.inf] * 3, return_cov=True)
    assert cov.shape == (3, 8, 8)
    np.testing.assert_allclose(cov[2], ref_cov, atol=1e-9 * np.abs(St).max())
    np.testing.assert_allclose(gp.predict_from_grams(Theta, Sigma, None), y[:, 0], atol=1e-8)   # interpolates


def test_singular_and_invalid_grams_keep_their_errors(rng):
    X, Xs = rng.standard_normal((6, 3)), rng.standard_normal((4, 3))
    index = [0, 1, 2, 3, 4, 5, 5]                                  # a duplicated point: Theta(X, X) singular
    Sigma, Theta = (G[np.ix_(index, index)] for G in ARCH.kernel(X, get=("nngp", "ntk")))
    Sc, Tc = (G[:, index] for G in ARCH.kernel(Xs, X, get=("nngp", "ntk")))
    y = rng.standard_normal(7)
    gp = InfiniteWidthGP.from_grams(Theta, Sigma, y)
    with pytest.raises(ValueError, match="singular"):
        gp.predict_from_grams(Tc, Sc, None)
    assert np.isfinite(gp.predict_from_grams(Tc, Sc, None, 5.0)).all()   # finite times are defined
    ridged = InfiniteWidthGP.from_grams(Theta, Sigma, y, ridge=1e-2)
    np.testing.assert_allclose(ridged.predict_from_grams(Tc, Sc, None), Tc @ np.linalg.solve(
        Theta + 1e-2 * np.eye(7), y), atol=1e-9)
    indefinite = InfiniteWidthGP.from_grams(Theta - 0.5 * np.linalg.eigvalsh(Theta).max() * np.eye(7), Sigma, y)
    for t in (np.inf, 1.0):                                        # rejected by the first prediction, at any time
        with pytest.raises(ValueError, match="positive semi-definite"):
            indefinite.predict_from_grams(Tc, Sc, None, t)


def test_ill_conditioned_gram_warns_at_t_inf(rng):
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    Theta = Q @ np.diag([1.0, 0.5, 0.1, 1e-2, 1e-3, 1e-11]) @ Q.T   # positive definite, cond 1e11
    Sigma = Theta + 0.1 * np.eye(6)
    gp = InfiniteWidthGP.from_grams(Theta, Sigma, rng.standard_normal(6))
    with pytest.warns(IllConditionedWarning, match="ridge"):
        gp.predict_from_grams(Theta[:2], Sigma[:2], None)


@pytest.mark.parametrize("spectrum", [[1.0, 0.5, 0.1, 1e-3, 1e-11], [3.0, 2.9, 2.8, 2.7, 2.6],
                                      [1e4, 1.0, 1.0, 1.0, 1e-4]])
def test_condition_lower_bound(rng, spectrum):
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    A = torch.from_numpy(Q @ np.diag(spectrum) @ Q.T)
    bound = condition_lower_bound(A, cholesky(A))
    true = max(spectrum) / min(spectrum)
    assert true / 2 < bound <= true * (1 + 1e-6)
