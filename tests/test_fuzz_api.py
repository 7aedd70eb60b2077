"""Fuzz suite (hypothesis) over the public API above the analytic kernels: the empirical NTK methods, the
least-squares dynamics and the Gaussian of trained infinite nets at t in {0, small, large, inf}, the
scikit-learn kernels and estimators. Every example returns finite values that agree with an independent
reference, or raises a ValueError (or gives a documented warning) naming the cause and the fix.

References and tolerances:
- empirical NTK: the three methods against each other, and float32 against the same net in float64:
  1e-9 relative to the largest entry in float64, 1e-3 in float32;
- `LeastSquares`: the outputs of d/dt g = -(1/N) ((K + ridge I) g - K r0) (its linearized dynamics, the
  module docstring) by SciPy's matrix exponential and a direct solve: 1e-6 of the scale of the targets
  (1e-6 times the condition number at t = inf);
- `InfiniteWidthGP`: at t = 0 the prior (mean 0, std sqrt(Sigma(x, x))), at every t the mean of `LeastSquares`
  on the same Grams (1e-6 of the targets' scale), std finite and >= 0;
- scikit-learn kernels against `MLP.kernel` in float64 (1e-12) and their gradients against central
  differences in log-space (1e-4); estimators against `InfiniteWidthGP` on the same data (1e-9).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import ntkit as nk
from ntkit._range import KernelRangeError

pytestmark = pytest.mark.usefixtures("one_thread")

log_scale = st.floats(-3, 3).map(lambda e: 10.0**e)
b_stds = st.one_of(st.just(0.0), log_scale)
TIMES = st.sampled_from([0.0, 1e-3, 1.0, 1e6, np.inf])
RIDGES = st.one_of(st.just(0.0), st.floats(-8, 6).map(lambda e: 10.0**e))


@st.composite
def data(draw, min_rows: int = 1, max_rows: int = 6, max_features: int = 3, norms: tuple[float, float] = (-3, 3)):
    """Inputs (with duplicated, collinear, antipodal and zero rows) and targets."""
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(1, max_features))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.standard_normal((n, d)) * 10.0 ** draw(st.floats(*norms))
    for i in range(1, n):
        kind = draw(st.sampled_from(["plain", "plain", "plain", "zero", "duplicate", "collinear", "antipodal"]))
        j = draw(st.integers(0, i - 1))
        X[i] = {"plain": X[i], "zero": 0.0 * X[i], "duplicate": X[j], "collinear": 2.5 * X[j],
                "antipodal": -X[j]}[kind]
    y = rng.standard_normal(n) * 10.0 ** draw(st.floats(-3, 3))
    return X, y


def archs() -> st.SearchStrategy[nk.MLP]:
    return st.builds(lambda depth, activation, W_std, b_std: nk.MLP(depth=depth, activation=activation,
                                                                    W_std=W_std, b_std=b_std),
                     st.integers(1, 6), st.sampled_from(["relu", "erf", "tanh", "gelu", "abs", "sin"]),
                     log_scale, b_stds)


# ------------------------------------------------------------------------------------------------ references
def ls_reference(K: np.ndarray, r0: np.ndarray, t: float, ridge: float, K_cross: np.ndarray | None = None):
    """Training outputs g_t of d/dt g = -(1/N) ((K + ridge I) g - K r0), g_0 = 0, and the test outputs
    K_cross (K + ridge I)^-1 (I - exp(-t (K + ridge I) / N)) r0, in float64 through the eigenvalues a of
    K + ridge I (K's negatives, roundoff, set to 0): (1 - exp(-t a / N)) / a, which is t / N at a = 0 (finite t),
    1 / a at t = inf."""
    n = len(K)
    lam, V = np.linalg.eigh(K)
    a = np.clip(lam, 0.0, None) + ridge      # K's roundoff negatives set to 0, as `gram_spectrum` does
    if np.isinf(t):
        phi = 1.0 / a
    else:
        safe = np.where(a > 0, a, 1.0)
        phi = np.where(a > 0, -np.expm1(-t * a / n) / safe, t / n)
    weights = V @ (phi * (V.T @ r0))
    train = V @ (np.clip(lam, 0.0, None) * (V.T @ weights))    # K (clipped) times the weights
    return train, (None if K_cross is None else K_cross @ weights)


def refused(error: Exception) -> bool:
    """The kernels' own clear refusals: a range error, or a quadrature that cannot resolve the variances."""
    return isinstance(error, KernelRangeError) or (isinstance(error, ValueError) and "does not resolve" in str(error))


def quiet(fn):
    """Call fn; an IllConditionedWarning is allowed (and reported), any other warning is an error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    others = [w for w in caught if not issubclass(w.category, nk.IllConditionedWarning)]
    assert not others, [str(w.message) for w in others]
    return result, bool(caught)


# ------------------------------------------------------------------------------------------------ empirical NTK
@given(arch=archs(), X=data(max_rows=4).map(lambda d: d[0]), width=st.integers(1, 6), out=st.integers(1, 3),
       seed=st.integers(0, 100), mode=st.sampled_from(["full", "trace", "diagonal"]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
@example(arch=nk.MLP(depth=3, activation="sin", W_std=100.0, b_std=0.0), X=np.array([[1.25730221]]), width=1,
         out=1, seed=0, mode="full", dtype=torch.float32)   # ill-conditioned in float32: finiteness only
@example(arch=nk.MLP(depth=3, activation="gelu", W_std=1.0, b_std=0.0), X=np.array([[3.45584192]]), width=1,
         out=1, seed=0, mode="full", dtype=torch.float32)   # an NTK of 7e-56: 0 in float32
@example(arch=nk.MLP(depth=3, activation="gelu", W_std=3.0, b_std=0.0), X=np.array([[12.57302211]]), width=1,
         out=1, seed=0, mode="full", dtype=torch.float32)   # pre-activations of 40: finiteness only in float32
def test_empirical_ntk_methods_agree(arch, X, width, out, seed, mode, dtype) -> None:
    net = arch.network(in_features=X.shape[1], width=width, out_features=out, seed=seed, dtype=torch.float64)
    reference = nk.empirical_ntk(net, X, mode=mode, method="jacobian")
    scale = np.abs(reference).max() + 1e-300
    net = net.to(dtype)
    Xt = torch.as_tensor(X, dtype=dtype)
    tol = 1e-3 if dtype == torch.float32 else 1e-9
    # float32 against float64 only where the net is well conditioned: with pre-activations past about 10 (W_std
    # times the inputs' size) sin, erf, tanh, gelu amplify float32's rounding of them (then finiteness is checked)
    compare = dtype == torch.float64 or float(arch.W_std) * max(float(np.abs(X).max(initial=0.0)), 1.0) <= 10
    for method in ("structured", "jacobian", "ntk_vp"):
        try:
            E = nk.empirical_ntk(net, Xt, mode=mode, method=method).double().numpy()
        except ValueError as error:
            assert dtype == torch.float32 and "float32" in str(error) and "float64" in str(error), str(error)
            assert scale > torch.finfo(torch.float32).max / 1e3, str(error)
            continue
        assert E.shape == reference.shape and np.isfinite(E).all()
        slack = torch.finfo(dtype).tiny * 2.0**24       # values below the dtype's normal range come back as 0
        assert not compare or np.abs(E - reference).max() <= tol * scale + slack, (
            method, np.abs(E - reference).max() / scale)


def test_empirical_ntk_of_no_rows_is_empty() -> None:
    net = nk.MLP(depth=2).network(in_features=3, width=4, seed=0)
    assert nk.empirical_ntk(net, torch.zeros(0, 3), mode="trace").shape == (0, 0)
    assert nk.empirical_ntk(net, torch.zeros(0, 3), torch.ones(2, 3), mode="full").shape == (0, 2, 1, 1)


# ------------------------------------------------------------------------------------------------ dynamics
def train_and_cross_grams(arch: nk.MLP, X: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """K(X, X) and K(Xs, X) for two test points Xs near the first rows; None where the kernel refuses X (the
    refusal must name its cause: `refused`)."""
    try:
        K = arch.kernel(X)
    except ValueError as error:
        assert refused(error), str(error)
        return None
    return K, arch.kernel(X[:2] * 0.5 + 0.1, X)


@given(arch=archs(), train=data(), t=TIMES, ridge=RIDGES, numpy_in=st.booleans())
@example(arch=nk.MLP(depth=2), train=(np.ones((3, 2)), np.arange(3.0)), t=np.inf, ridge=0.0, numpy_in=True)
@example(arch=nk.MLP(depth=3, activation="sin", W_std=1e-3, b_std=0.0), train=(np.array([[1.25730221], [-1.32104863]]),
         np.array([0.64042265, 0.10490012])), t=0.0, ridge=0.0, numpy_in=False)   # sinh(c) cancelled at small c
@example(arch=nk.MLP(depth=3, activation="abs", W_std=10.0, b_std=0.0), train=(np.array([[0.12573022],
         [-0.13210486], [0.64042265]]), np.array([0.10490012, -0.53566937, 0.36159505])), t=1.0, ridge=1.0,
         numpy_in=False)   # a rank-1 K with a roundoff eigenvalue -2.5e-5, set to 0 by the spectrum
@example(arch=nk.MLP(depth=2, activation="tanh", W_std=1.0, b_std=10.0), train=(np.array([[0.01257302],
         [-0.01321049], [0.06404227]]), np.array([0.10490012, -0.53566937, 0.36159505])), t=0.0, ridge=0.0,
         numpy_in=False)   # variance 100: tanh's quadrature off by 1e-3, the Gram indefinite by 4e-6: refused
def test_least_squares_matches_the_ode_solution(arch, train, t, ridge, numpy_in) -> None:
    X, y = train
    grams = train_and_cross_grams(arch, X)
    if grams is None:
        return
    K, K_cross = grams
    inputs = (K, y, K_cross) if numpy_in else tuple(torch.as_tensor(a) for a in (K, y, K_cross))
    try:
        (train_out, test_out), warned = quiet(lambda: (
            (ls := nk.LeastSquares(inputs[0], inputs[1], ridge=ridge)).train_outputs(t), ls.predict(inputs[2], t)))
    except ValueError as error:
        if "positive semi-definite" in str(error):   # a Gram whose rounding errors (quadrature, cone) make it
            lam = np.linalg.eigvalsh(K)              # indefinite beyond sqrt(eps): refused, and rightly so
            assert lam.min() < -(np.finfo(float).eps ** 0.5) * lam.max() * len(K) ** 0, str(error)
            return
        assert "singular" in str(error) and "ridge" in str(error), str(error)
        assert np.isinf(t), "only t = inf needs an invertible K + ridge I"
        eig = np.linalg.eigvalsh(K + ridge * np.eye(len(K)))
        assert eig.min() <= 1e-10 * max(eig.max(), 1e-300), f"refused a well-conditioned K: {eig}"
        return
    train_out, test_out = np.asarray(train_out), np.asarray(test_out)
    assert np.isfinite(train_out).all() and np.isfinite(test_out).all()
    eig = np.linalg.eigvalsh(K + ridge * np.eye(len(K)))
    if eig.min() <= 1e-12 * eig.max():   # too ill-conditioned for the dense reference to mean anything
        return
    ref_train, ref_test = ls_reference(K, y, t, ridge, K_cross)
    cond = eig.max() / eig.min() if np.isinf(t) else 1.0
    # K's negative eigenvalues are its rounding errors: the exact solver sets them to 0 (finite t) or keeps them
    # (t = inf, Cholesky), so the two references may differ by about |negative| / smallest rate
    negative = max(0.0, -float(np.linalg.eigvalsh(K).min()))
    tol = (1e-6 * max(1.0, cond * 1e-6) + negative / eig.min()) * (np.abs(y).max() + 1e-300)
    assert np.abs(train_out - ref_train).max() <= tol, np.abs(train_out - ref_train).max()
    assert np.abs(test_out - ref_test).max() <= tol * max(1.0, np.abs(K_cross).max() / max(eig.min(), 1e-300)
                                                           if np.isinf(t) else 1.0)


@given(arch=archs(), train=data(), t=TIMES, ridge=RIDGES)
@example(arch=nk.MLP(depth=1, b_std=0.0), train=(np.array([[0.71200979], [2.32280433]]),
         np.array([-1.65977556, -0.08729922])), t=0.0, ridge=0.0)   # singular K at finite t
@example(arch=nk.MLP(depth=2, activation="tanh", b_std=0.0), train=(np.array([[125.73022109]]),
         np.array([-0.13210486])), t=0.0, ridge=0.0)   # variance 1.6e4: tanh's SigmaDot unresolved, refused
def test_infinite_width_gp_prior_and_mean(arch, train, t, ridge) -> None:
    X, y = train
    Xs = np.vstack([X[:1], X[:1] * 0.5 + 0.1])
    try:
        gp = nk.InfiniteWidthGP(arch, X, y, ridge=ridge)
        (mean, std), _ = quiet(lambda: gp.predict(Xs, t=t, return_std=True))
    except ValueError as error:   # roundoff negatives of Theta past sqrt(eps) at duplicated rows are refused too
        assert refused(error) or (np.isinf(t) and "singular" in str(error)) or "positive semi-definite" in str(error), \
            str(error)
        return
    assert np.isfinite(mean).all() and np.isfinite(std).all() and (std >= 0).all()
    sigma_test = arch.kernel_diag(Xs, get="nngp")
    if t == 0:
        assert np.all(mean == 0)
        np.testing.assert_allclose(std, np.sqrt(sigma_test), rtol=1e-6, atol=1e-300)
    assert np.all(std <= np.sqrt(sigma_test) * (1 + 1e-6) + 1e-12 * np.sqrt(sigma_test.max())
                  ) or t != 0
    K = arch.kernel(X)
    eig = np.linalg.eigvalsh(K + ridge * np.eye(len(K)))
    if eig.min() <= 1e-8 * eig.max() and np.isinf(t):
        return
    _, ref = ls_reference(K, y, t, ridge, arch.kernel(Xs, X))
    # the error grows with K's condition number at t = inf; at finite t the weights (1 - exp(-t a / N)) / a have
    # a relative sensitivity of at most t a_max / N to a change of K (so a singular K is no excuse there)
    condition = eig.max() / eig.min() if eig.min() > eig.max() * 1e-300 else np.inf
    amplification = condition if np.isinf(t) else min(condition, 1 + t * eig.max() / len(K))
    tol = 1e-6 * (np.abs(y).max() + 1e-300) * (amplification * 1e-6 + 1)
    assert np.isfinite(tol)
    assert np.abs(mean - ref).max() <= tol, np.abs(mean - ref).max()


def test_dynamics_refuse_no_training_points() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        nk.LeastSquares(np.zeros((0, 0)), np.zeros(0))
    with pytest.raises(ValueError):
        nk.InfiniteWidthGP(nk.MLP(depth=2), np.zeros((0, 3)), np.zeros(0))


# ------------------------------------------------------------------------------------------------ scikit-learn
sklearn = pytest.importorskip("sklearn")


@given(arch=archs(), train=data(norms=(-2, 2)), get=st.sampled_from(["NTK", "NNGP"]))
@example(arch=nk.MLP(depth=2, activation="relu", W_std=1000.0, b_std=1.0),
         train=(np.array([[0.12573022], [-0.13210486]]), np.array([0.64042265, 0.10490012])), get="NNGP")
@example(arch=nk.MLP(depth=3, activation="gelu", W_std=1000.0, b_std=1.0),
         train=(np.array([[204.09191214]]), np.array([-2.55566503])), get="NTK")   # was inf / NaN (gelu's q1 q2 p1 p2)
@example(arch=nk.MLP(depth=4, activation="erf", W_std=100.0, b_std=0.01),
         train=(np.array([[0.12573022]]), np.array([-0.13210486])), get="NTK")   # central differences: 3e-4
@example(arch=nk.MLP(depth=2, activation="relu", W_std=10.0, b_std=0.001),
         train=(np.array([[12.57302211], [-13.21048632]]), np.array([0.0, 1.0])), get="NTK")   # the cone
@example(arch=nk.MLP(depth=2, activation="erf", W_std=1.0, b_std=0.001),
         train=(np.array([[34.55841921]]), np.array([0.0])), get="NTK")   # d/dlog b_std of 1e-6 of K
@example(arch=nk.MLP(depth=6, activation="gelu", W_std=100.0, b_std=1.0),
         train=(np.array([[0.12573022]]), np.array([0.0])), get="NTK")   # asin(r) with r rounded to 1: NaN gradient
@example(arch=nk.MLP(depth=4, activation="gelu", W_std=100.0, b_std=0.1),
         train=(np.array([[1.25730221]]), np.array([0.0])), get="NTK")   # ... or a 15% wrong one
def test_sklearn_kernels_match_mlp_and_their_gradients(arch, train, get) -> None:
    from ntkit.sklearn import NNGP, NTK

    X, _ = train
    kernel = {"NTK": NTK, "NNGP": NNGP}[get].from_mlp(arch, b_std_bounds=(1e-5, 1e5))
    try:
        K = arch.kernel(X, get=get.lower())
    except ValueError as error:
        assert refused(error), str(error)
        with pytest.raises(ValueError):
            kernel(X)
        return
    np.testing.assert_allclose(kernel(X), K, rtol=1e-12, atol=0)
    np.testing.assert_allclose(kernel.diag(X), np.diag(K), rtol=1e-12, atol=0)
    if float(arch.b_std) == 0 or arch.depth == 1 or not 1e-2 <= float(arch.W_std) <= 1e2:
        return   # log-space gradients need b_std > 0; depth 1: see test_sklearn_kernel_gradient_at_depth_1;
        #          W_std within the default bounds the optimizer explores
    smooth = arch.activation.name in ("erf", "tanh", "gelu", "sin")   # arc-cosine kernels have a cone at
    #          collinear pairs, where central differences say nothing: only finiteness is asked of them
    K2, gradient = kernel(X, eval_gradient=True)
    assert np.isfinite(gradient).all()
    # the gradient path uses the activation's closed forms (autograd), `kernel` the fused path: both in float64,
    # with the cone's sqrt(eps) at nearly collinear pairs
    np.testing.assert_allclose(K2, K, rtol=1e-7, atol=1e-7 * np.abs(K).max())
    step = 1e-5
    for index in range(len(kernel.theta) if smooth else 0):
        plus, minus = kernel.clone_with_theta(kernel.theta), kernel.clone_with_theta(kernel.theta)
        theta_plus, theta_minus = kernel.theta.copy(), kernel.theta.copy()
        theta_plus[index] += step
        theta_minus[index] -= step
        plus.theta, minus.theta = theta_plus, theta_minus
        try:
            numeric = (plus(X) - minus(X)) / (2 * step)
        except KernelRangeError:
            continue
        # central differences, step 1e-5; derivatives below 1e-5 of the kernel's size (a b_std of 1e-3 barely
        # matters) are compared on that scale
        scale = np.abs(numeric).max() + np.abs(K).max() * 1e-5 + 1e-300
        assert np.abs(gradient[:, :, index] - numeric).max() <= 1e-3 * scale


def test_sklearn_kernel_gradient_at_depth_1() -> None:
    from ntkit.sklearn import NTK

    X = np.array([[0.12573022], [-0.13210486]])
    K, gradient = NTK(depth=1, b_std=1.0)(X, eval_gradient=True)
    assert np.isfinite(gradient).all()


@given(train=data(min_rows=2, max_rows=8), depth=st.integers(1, 4), t=TIMES, ridge=RIDGES)
def test_sklearn_estimators_are_the_infinite_width_gp(train, depth, t, ridge) -> None:
    from ntkit.sklearn import NTKClassifier, NTKRegressor

    X, y = train
    labels = (y > np.median(y)).astype(int)
    regressor = NTKRegressor(depth=depth, t=t, ridge=ridge)
    try:
        (mean, _), _ = quiet(lambda: (regressor.fit(X, y).predict(X[:3]), None))
    except ValueError as error:
        assert np.isinf(t) and "singular" in str(error), str(error)
        return
    assert np.isfinite(mean).all()
    gp = nk.InfiniteWidthGP(nk.MLP(depth), X, y, ridge=ridge)
    reference, _ = quiet(lambda: gp.predict(X[:3], t=t))
    np.testing.assert_allclose(mean, reference, rtol=1e-9, atol=1e-9 * (np.abs(reference).max() + 1e-300))
    if len(np.unique(labels)) < 2:
        with pytest.raises(ValueError, match="classes"):
            NTKClassifier(depth=depth, t=t, ridge=ridge).fit(X, labels)
        return
    classifier, _ = quiet(lambda: NTKClassifier(depth=depth, t=t, ridge=ridge).fit(X, labels))
    proba, _ = quiet(lambda: classifier.predict_proba(X))
    assert np.isfinite(proba).all() and np.allclose(proba.sum(1), 1)


def test_classifier_refuses_a_single_class() -> None:
    """One class is an error, as in scikit-learn's classifiers."""
    from ntkit.sklearn import NTKClassifier

    X = np.random.default_rng(0).standard_normal((20, 5))
    with pytest.raises(ValueError, match="greater than one; got 1 class"):
        NTKClassifier(depth=2).fit(X, np.zeros(20))
    with pytest.raises(ValueError, match="at least two classes"):
        NTKClassifier(depth=2).fit(X, ["a"] * 20)


def test_estimators_refuse_no_rows() -> None:
    from ntkit.sklearn import NTKClassifier, NTKRegressor

    for estimator in (NTKRegressor(), NTKClassifier()):
        with pytest.raises(ValueError, match="0 sample"):
            estimator.fit(np.zeros((0, 3)), np.zeros(0))


# ------------------------------------------------------------------------------------------------ large-N solvers
def solver_call(fn):
    """Call fn; a ConvergenceWarning or IllConditionedWarning is allowed and reported, any other is an error."""
    from ntkit.solvers import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    allowed = (ConvergenceWarning, nk.IllConditionedWarning)
    others = [w for w in caught if not issubclass(w.category, allowed)]
    assert not others, [str(w.message) for w in others]
    return result, [w.category for w in caught]


@given(arch=archs(), train=data(), t=TIMES, ridge=RIDGES, matrix_free=st.booleans())
def test_least_squares_cg_matches_the_ode_solution(arch, train, t, ridge, matrix_free) -> None:
    """solver="cg" (CG at t = inf, Lanczos at finite t), on the Gram or matrix-free on its tiles: the same reference
    as the exact solver, within its tolerance (1e-10 relative residual) times the condition number."""
    X, y = train
    grams = train_and_cross_grams(arch, X)
    if grams is None:
        return
    K, K_cross = grams
    source = arch.kernel_tiles(torch.as_tensor(X)) if matrix_free else torch.as_tensor(K)
    try:
        (train_out, test_out), caught = solver_call(lambda: (
            (ls := nk.LeastSquares(source, torch.as_tensor(y), ridge=ridge, solver="cg")).train_outputs(t),
            ls.predict(torch.as_tensor(K_cross), t)))
    except ValueError as error:
        assert "ridge" in str(error), str(error)
        eig = np.linalg.eigvalsh(K + ridge * np.eye(len(K)))
        if "not positive definite" in str(error) and eig.min() > 1e-8 * eig.max():
            pytest.fail(f"CG refused a positive definite K + ridge I: {error}")
        assert np.isinf(t) and eig.min() <= 1e-8 * max(eig.max(), 1e-300), f"refused a well-posed problem: {error}"
        return
    train_out, test_out = train_out.numpy(), test_out.numpy()
    assert np.isfinite(train_out).all() and np.isfinite(test_out).all()
    eig = np.linalg.eigvalsh(K + ridge * np.eye(len(K)))
    if eig.min() <= 1e-8 * eig.max() or caught:   # ill-posed for an iterative solver: finite is all it promises
        return
    ref_train, ref_test = ls_reference(K, y, t, ridge, K_cross)
    cond = eig.max() / eig.min()
    scale = np.abs(y).max() * (1 + np.abs(K_cross).max() / eig.min() if np.isinf(t) else 1)
    tol = 1e-8 * cond * scale + 1e-300
    assert np.abs(train_out - ref_train).max() <= tol, np.abs(train_out - ref_train).max() / scale
    assert np.abs(test_out - ref_test).max() <= tol, np.abs(test_out - ref_test).max() / scale


@given(arch=archs(), train=data(min_rows=2), t=TIMES, ridge=st.floats(-6, 6).map(lambda e: 10.0**e),
       solver=st.sampled_from(["cg", "nystrom", "auto"]))
@example(arch=nk.MLP(depth=4, activation="sin", W_std=1000.0, b_std=0.0),
         train=(np.array([[0.12573022], [0.12573022]]), np.array([0.64042265, 0.10490012])), t=0.0, ridge=1.0,
         solver="cg")   # K + I singular to working precision (K about 1e17)
@example(arch=nk.MLP(depth=4, activation="gelu", W_std=100.0, b_std=0.0),
         train=(np.array([[1.25444825, 0.77690202], [0.96488113, -1.08217839], [0.86701736, -0.16816076],
                          [-0.18966098, 1.12056646], [0.96488113, -1.08217839]]), np.arange(5.0)), t=0.0,
         ridge=1.0, solver="cg")   # a duplicated row: Theta's roundoff eigenvalue -3.6e-8 of the largest, refused
def test_infinite_width_gp_solvers_agree_with_cholesky(arch, train, t, ridge, solver) -> None:
    """The iterative solvers against the exact one (Nystrom with every point a centre is exact; t = inf only)."""
    X, y = train
    Xs = X[:2] * 0.5 + 0.1
    try:
        exact, _ = solver_call(lambda: nk.InfiniteWidthGP(arch, X, y, ridge=ridge).predict(Xs, t=t))
    except ValueError as error:   # the kernels' refusals, or a Gram the exact solver rejects with a clear message
        assert refused(error) or "positive semi-definite" in str(error) or "singular" in str(error), str(error)
        return
    kwargs = {"n_centers": len(X)} if solver == "nystrom" else {}
    try:
        mean, caught = solver_call(lambda: nk.InfiniteWidthGP(arch, X, y, ridge=ridge, solver=solver, **kwargs)
                                   .predict(Xs, t=t))
    except ValueError as error:
        if "not positive definite" in str(error):     # ridge > 0 here: K + ridge I is positive definite
            K = arch.kernel(X)
            eig = np.linalg.eigvalsh(K + ridge * np.eye(len(K)))
            if eig.min() <= 1e-12 * eig.max():
                return    # K + ridge I singular to working precision: a refusal (its message asks for a ridge)
            pytest.fail(f"CG refused a positive definite K + ridge I: {error}")
        assert solver == "nystrom" and not np.isinf(t) and "t = inf" in str(error).replace("inf only", "t = inf"), \
            str(error)
        return
    assert np.isfinite(mean).all()
    K = arch.kernel(X)
    eig = np.linalg.eigvalsh(K + ridge * np.eye(len(K)))
    if caught or eig.min() <= 1e-12 * eig.max():   # warned, or too ill-conditioned for any comparison
        return
    cond = eig.max() / eig.min()
    scale = np.abs(y).max() * (1 + np.abs(arch.kernel(Xs, X)).max() / eig.min())
    assert np.abs(mean - exact).max() <= 1e-8 * cond * scale + 1e-300, np.abs(mean - exact).max() / scale


def test_nystrom_with_a_singular_centres_gram() -> None:
    """Six 1-D inputs without bias: the ReLU kernel has rank 2, so the centres' Gram (all six points) is singular;
    with ridge = 1 the regression itself is well posed and Nystrom with every point a centre is exact."""
    X = np.array([[0.12573022], [-0.13210486], [0.64042265], [0.10490012], [-0.53566937], [0.36159505]])
    y = np.arange(6.0)
    arch = nk.MLP(depth=2, b_std=0.0)
    exact = nk.InfiniteWidthGP(arch, X, y, ridge=1.0).predict(X)
    mean = nk.InfiniteWidthGP(arch, X, y, ridge=1.0, solver="nystrom", n_centers=6).predict(X)
    np.testing.assert_allclose(mean, exact, rtol=1e-6)
