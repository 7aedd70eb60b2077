"""Closed-form least-squares kernel gradient descent against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.integrate import solve_ivp

import ntkit as nk
from ntkit.dynamics import IllConditionedWarning, LeastSquares, steps_from_time, time_from_steps, train_network
from ntkit.empirical import linearize

ARCH = nk.MLP(4, "relu", beta=0.1)


@pytest.fixture
def problem(rng):
    X, Xs = rng.standard_normal((12, 3)), rng.standard_normal((5, 3))
    y = rng.standard_normal((12, 2))
    return ARCH.kernel(X), ARCH.kernel(Xs, X), y, 0.3 * rng.standard_normal((12, 2)), 0.3 * rng.standard_normal((5, 2))


def ode_reference(K, Ks, y, f0, fs0, times):
    """Integrate d/dt f(X) = -(1/N) K (f(X) - y), d/dt f(X*) = -(1/N) K(X*, X) (f(X) - y) with SciPy."""
    n, k = y.shape

    def rhs(_, state):
        f = state[: n * k].reshape(n, k)
        return np.concatenate([(-(K @ (f - y)) / n).ravel(), (-(Ks @ (f - y)) / n).ravel()])

    sol = solve_ivp(rhs, (0, max(times)), np.concatenate([f0.ravel(), fs0.ravel()]), t_eval=times,
                    method="Radau", rtol=1e-11, atol=1e-12)
    states = sol.y.T
    return states[:, : n * k].reshape(-1, n, k), states[:, n * k:].reshape(-1, Ks.shape[0], k)


def test_closed_form_matches_ode_integration(problem):
    K, Ks, y, f0, fs0 = problem
    times = [0.0, 0.5, 3.0, 40.0, 500.0]
    ls = LeastSquares(K, y, f0_train=f0)
    train_ref, test_ref = ode_reference(K, Ks, y, f0, fs0, times)
    np.testing.assert_allclose(ls.train_outputs(times), train_ref, atol=1e-7)
    np.testing.assert_allclose(ls.predict(Ks, times, f0_test=fs0), test_ref, atol=1e-7)
    # a scalar time gives y's shape, and torch input gives torch output
    assert ls.train_outputs(3.0).shape == (12, 2)
    out = LeastSquares(torch.from_numpy(K), torch.from_numpy(y)).predict(torch.from_numpy(Ks), 3.0)
    assert isinstance(out, torch.Tensor) and out.shape == (5, 2)


def test_gradient_descent_steps_match_explicit_iteration(problem):
    K, Ks, y, f0, fs0 = problem
    n, lr = K.shape[0], 1.5
    f, fs, expected_train, expected_test = f0.copy(), fs0.copy(), [], []
    for step in range(41):
        if step in (0, 7, 40):
            expected_train.append(f.copy())
            expected_test.append(fs.copy())
        f, fs = f - lr / n * K @ (f - y), fs - lr / n * Ks @ (f - y)
    ls = LeastSquares(K, y, f0_train=f0)
    np.testing.assert_allclose(ls.train_outputs(steps=[0, 7, 40], lr=lr), expected_train, atol=1e-12)
    np.testing.assert_allclose(ls.predict(Ks, steps=[0, 7, 40], lr=lr, f0_test=fs0), expected_test, atol=1e-12)


def test_gradient_descent_on_linearized_network(rng):
    """A linearized net trained by gradient descent follows the closed form of its own (constant) NTK:
    exactly for the discrete schedule, and up to O(lr) for the continuous time t = lr * steps."""
    torch.manual_seed(0)
    net = nk.MLP(3, beta=0.1).network(3, width=48, seed=1, dtype=torch.float64)
    X = torch.from_numpy(rng.standard_normal((8, 3)))
    Xs = torch.from_numpy(rng.standard_normal((4, 3)))
    y = torch.from_numpy(rng.standard_normal((8, 1)))
    params = dict(net.named_parameters())

    def jac(inputs):   # explicit Jacobian of the outputs w.r.t. all parameters, (M, P)
        J = torch.func.jacrev(lambda p: torch.func.functional_call(net, p, (inputs,)))(params)
        return torch.cat([J[name].reshape(inputs.shape[0], -1) for name in params], 1).detach()

    J, Js = jac(X), jac(Xs)
    K, Ks = (J @ J.T).numpy(), (Js @ J.T).numpy()
    with torch.no_grad():
        f0, fs0 = net(X).numpy(), net(Xs).numpy()
    lin = linearize(net)
    lr, steps = 0.2, 40
    history = train_network(lin, X, y, lr=lr, steps=steps, probe=Xs, record_every=20)
    ls = LeastSquares(K, y.numpy(), f0_train=f0)
    np.testing.assert_allclose(history.train_outputs.detach().numpy(),
                               ls.train_outputs(steps=history.steps, lr=lr), atol=1e-9)
    np.testing.assert_allclose(history.probe_outputs.detach().numpy(),
                               ls.predict(Ks, steps=history.steps, lr=lr, f0_test=fs0), atol=1e-9)
    continuous = ls.predict(Ks, history.times, f0_test=fs0)
    gap = np.abs(history.probe_outputs.detach().numpy() - continuous).max()
    lam_max = np.linalg.eigvalsh(K / 8).max()
    assert gap < lr * lam_max * np.abs(continuous - fs0).max()        # the O(lr) gap of Euler steps


def test_t_inf_is_kernel_regression_and_ridge_is_kernel_ridge_regression(problem):
    K, Ks, y, f0, fs0 = problem
    ls = LeastSquares(K, y, f0_train=f0)
    np.testing.assert_allclose(ls.predict(Ks, np.inf, f0_test=fs0), fs0 + Ks @ np.linalg.solve(K, y - f0), atol=1e-9)
    np.testing.assert_allclose(ls.train_outputs(np.inf), y, atol=1e-10)
    ridge = 0.3
    lr_ = LeastSquares(K, y, f0_train=f0, ridge=ridge)
    krr = np.linalg.solve(K + ridge * np.eye(12), y - f0)
    np.testing.assert_allclose(lr_.predict(Ks, np.inf, f0_test=fs0), fs0 + Ks @ krr, atol=1e-10)
    np.testing.assert_allclose(lr_.train_outputs(np.inf), f0 + K @ krr, atol=1e-10)
    # with ridge the training outputs are the predictions at the training points, at every time
    for t in (0.7, 30.0):
        np.testing.assert_allclose(lr_.train_outputs(t), lr_.predict(K, t, f0_test=f0), atol=1e-11)
    # t = inf alone takes a Cholesky factor, with a finite time the eigendecomposition: the same limit
    assert ls._spectrum is None
    both = ls.predict(Ks, [5.0, np.inf], f0_test=fs0)
    assert ls._spectrum is not None
    np.testing.assert_allclose(both[1], ls.predict(Ks, np.inf, f0_test=fs0), atol=1e-10)


def test_ridge_dynamics_match_ode(problem):
    """ridge = weight decay towards the initialization: d/dt f(x) = -(1/N)[K(x,X)(f(X)-y) + ridge (f(x)-f0(x))]."""
    K, Ks, y, f0, fs0 = problem
    n, ridge = 12, 0.5

    def rhs(_, state):
        f, fs = state[:24].reshape(12, 2), state[24:].reshape(5, 2)
        return np.concatenate([(-(K @ (f - y) + ridge * (f - f0)) / n).ravel(),
                               (-(Ks @ (f - y) + ridge * (fs - fs0)) / n).ravel()])

    sol = solve_ivp(rhs, (0, 20), np.concatenate([f0.ravel(), fs0.ravel()]), t_eval=[20.0], rtol=1e-11, atol=1e-12)
    ls = LeastSquares(K, y, f0_train=f0, ridge=ridge)
    np.testing.assert_allclose(ls.train_outputs(20.0), sol.y[:24, 0].reshape(12, 2), atol=1e-8)
    np.testing.assert_allclose(ls.predict(Ks, 20.0, f0_test=fs0), sol.y[24:, 0].reshape(5, 2), atol=1e-8)


def test_zero_eigenvalue_is_finite_at_finite_time_and_refused_at_inf(rng):
    X, Z = rng.standard_normal((5, 3)), rng.standard_normal((3, 3))
    index = [0, 1, 2, 3, 4, 4]                     # a duplicated point: K is exactly singular
    K, Ks = ARCH.kernel(X)[np.ix_(index, index)], ARCH.kernel(Z, X)[:, index]
    y = rng.standard_normal(6)
    ls = LeastSquares(K, y)
    # reference: f_t(x) = K(x, X) (1/N) int_0^t exp(-s K/N) ds y, by Van Loan's block exponential
    n, t = 6, 50.0
    block = np.zeros((2 * n, 2 * n))
    block[:n, :n], block[:n, n:] = -K / n, np.eye(n)
    integral = scipy.linalg.expm(block * t)[:n, n:]
    np.testing.assert_allclose(ls.predict(Ks, t), Ks @ integral @ y / n, atol=1e-9)
    assert np.isfinite(ls.train_outputs(1e8)).all()
    with pytest.raises(ValueError, match="singular"):
        ls.predict(Ks, np.inf)
    with pytest.raises(ValueError, match="singular"):
        ls.train_outputs([1.0, np.inf])
    np.testing.assert_allclose(LeastSquares(K, y, ridge=1e-3).predict(Ks, np.inf),
                               Ks @ np.linalg.solve(K + 1e-3 * np.eye(n), y), atol=1e-9)


def test_ill_conditioned_gram_warns(rng):
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    K = Q @ np.diag([1.0, 0.5, 0.1, 1e-3, 1e-11]) @ Q.T
    with pytest.warns(IllConditionedWarning, match="ridge"):
        LeastSquares(K, np.ones(5)).train_outputs(np.inf)


def test_time_conversion():
    assert time_from_steps(200, 0.5) == 100.0
    np.testing.assert_array_equal(time_from_steps([0, 10], 2.0), [0.0, 20.0])
    assert steps_from_time(100.0, 0.5) == 200
    np.testing.assert_array_equal(steps_from_time(time_from_steps(np.arange(5), 0.1), 0.1), np.arange(5))


@pytest.mark.parametrize("t, message", [(-1.0, ">= 0"), (np.nan, "NaN"), ([1.0, -2.0], ">= 0"),
                                        ([[1.0]], "1-D"), ("soon", "number")])
def test_bad_times(problem, t, message):
    K, _, y, _, _ = problem
    with pytest.raises((ValueError, TypeError), match=message):
        LeastSquares(K, y).train_outputs(t)


def test_bad_inputs(problem):
    K, Ks, y, f0, _ = problem
    with pytest.raises(ValueError, match="symmetric"):
        LeastSquares(K + np.triu(np.ones_like(K)) * 1e-3, y)
    with pytest.raises(ValueError, match="square"):
        LeastSquares(K[:, :5], y)
    with pytest.raises(ValueError, match="y_train"):
        LeastSquares(K, y[:5])
    with pytest.raises(ValueError, match="f0_train"):
        LeastSquares(K, y, f0_train=f0[:, :1])
    with pytest.raises(ValueError, match="K_test_train"):
        LeastSquares(K, y).predict(Ks[:, :5], 1.0)
    with pytest.raises(ValueError, match="NaN"):
        LeastSquares(np.where(np.eye(12) > 0, np.nan, K), y)
    indefinite = LeastSquares(K - 2 * np.abs(np.linalg.eigvalsh(K)).max() * np.eye(12) / 3, y)
    for t in (1.0, np.inf):                        # rejected by the first use, at any time
        with pytest.raises(ValueError, match="positive semi-definite"):
            indefinite.train_outputs(t)
    with pytest.raises(ValueError, match="lr"):
        LeastSquares(K, y).train_outputs(steps=3, lr=1e6)
    with pytest.raises(ValueError, match="either"):
        LeastSquares(K, y).train_outputs(1.0, steps=3, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        LeastSquares(K, y).train_outputs(steps=3)
    with pytest.raises(ValueError, match="ridge"):
        LeastSquares(K, y, ridge=-1.0)


def test_numpy_in_gives_numpy_out_also_with_kernel_tiles():
    """LeastSquares over matrix-free tiles, NumPy targets and a NumPy cross Gram: NumPy predictions, equal to the
    exact solver's."""
    X = np.random.default_rng(0).normal(size=(30, 3))
    y = np.sin(X[:, 0])
    arch = nk.MLP(2)
    iterative = nk.LeastSquares(arch.kernel_tiles(torch.from_numpy(X)), y, solver="cg")
    exact = nk.LeastSquares(arch.kernel(X), y)
    K = arch.kernel(X[:5], X)
    for t in (5.0, np.inf):
        out = iterative.predict(K, t=t)
        assert isinstance(out, np.ndarray) and out.shape == (5,)
        np.testing.assert_allclose(out, exact.predict(K, t=t), rtol=1e-7, atol=1e-9)
    assert isinstance(iterative.predict(torch.from_numpy(K), t=5.0), np.ndarray)  # the targets were NumPy
