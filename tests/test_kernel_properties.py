"""Hypothesis-based properties of the analytic kernels: shapes, symmetry, permutation
equivariance, and the positive homogeneity of ReLU kernels without bias.

Tolerance: arc-cosine kernels have a cone at collinear points (theta ~ sqrt(1 - rho)), so a rounding
error eps in rho becomes sqrt(eps) ~ 1e-8 in float64 there; equalities that reorder the arithmetic
hold to about 1e-7 relative, not to machine precision."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ntkit as nk

finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)
RTOL = 1e-7
ACTIVATIONS = ["relu", "erf", "abs", "gelu", "sin", "identity", "leaky_relu"]


def magnitude(X: np.ndarray, Y: np.ndarray) -> float:
    """The scale of the kernels' entries: the largest input product (W_std <= 1.5 adds at most 2.25)."""
    return 2.25 * max(1.0, float(np.abs(X).max() * np.abs(Y).max() * X.shape[1]))


@st.composite
def problems(draw):
    d = draw(st.integers(1, 4))
    n, m = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    X = draw(arrays(np.float64, (n, d), elements=finite))
    Y = draw(arrays(np.float64, (m, d), elements=finite))
    arch = nk.MLP(depth=draw(st.integers(1, 4)), activation=draw(st.sampled_from(ACTIVATIONS)),
                  beta=draw(st.floats(0, 1)), W_std=draw(st.floats(0.5, 1.5)))
    return arch, X, Y


@settings(max_examples=60, deadline=None, derandomize=True)
@given(problems())
def test_shapes_symmetry_and_finiteness(problem):
    arch, X, Y = problem
    S, T = arch.kernel(X, Y, get=("nngp", "ntk"))
    assert S.shape == T.shape == (len(X), len(Y))
    assert np.isfinite(S).all() and np.isfinite(T).all()
    # entries that vanish (antipodal points with beta = 0) carry the sqrt(eps) error of the cone on the
    # scale of the inputs' products, so the absolute tolerance is relative to that scale
    atol = RTOL * magnitude(X, Y)
    np.testing.assert_allclose(arch.kernel(Y, X), T.T, rtol=RTOL, atol=atol)
    KX = arch.kernel(X)
    np.testing.assert_allclose(KX, KX.T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.diag(KX), arch.kernel_diag(X), rtol=RTOL, atol=atol)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(problems(), st.randoms(use_true_random=False))
def test_permutation_equivariance(problem, random):
    arch, X, Y = problem
    p, q = random.sample(range(len(X)), len(X)), random.sample(range(len(Y)), len(Y))
    np.testing.assert_allclose(arch.kernel(X[p], Y[q]), arch.kernel(X, Y)[np.ix_(p, q)], rtol=1e-12, atol=1e-14)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(problems(), st.floats(0.1, 10))
def test_relu_kernels_without_bias_are_positively_homogeneous(problem, scale):
    """With beta = 0: Sigma^(l)(c x, y) = c Sigma^(l)(x, y), SigmaDot depends on angles only,
    so Theta^(L)(c x, y) = c Theta^(L)(x, y) for c > 0."""
    arch, X, Y = problem
    relu = nk.MLP(depth=arch.depth, activation="relu", beta=0.0)
    S, T = relu.kernel(X, Y, get=("nngp", "ntk"))
    S_c, T_c = relu.kernel(scale * X, Y, get=("nngp", "ntk"))
    atol = RTOL * scale * magnitude(X, Y)  # see test_shapes_symmetry_and_finiteness
    np.testing.assert_allclose(S_c, scale * S, rtol=RTOL, atol=atol)
    np.testing.assert_allclose(T_c, scale * T, rtol=RTOL, atol=atol)
