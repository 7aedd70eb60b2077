"""Kernels at coincident, nearly coincident and nearly opposite inputs (`ntkit.coincident`) against 340-digit
arithmetic (mpmath): the paper's recursion with the closed-form maps written from the angle theta = arccos(rho).

The plain formulas keep only sqrt(eps) of a small angle (and sign and step only eps^(2^-(L-1)): their cone feeds
on itself); with the sine of the angle carried through the layers the kernels are accurate to rounding, at any
variance the dtype holds (past sqrt(finfo.max), where q1 q2 overflows: 1e19 in float32, 1e154 in float64).
Errors are measured in units of sqrt(K(x, x) K(y, y)) (the Cauchy-Schwarz scale of each entry).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import ntkit as nk
from ntkit import coincident
from ntkit._range import KernelRangeError, KernelUnderflowWarning

mpmath = pytest.importorskip("mpmath")

CARRIERS = ["relu", "leaky_relu", "abs", "sign", "step"]
SLOPES = {"relu": 0.0, "leaky_relu": 0.01, "abs": -1.0}   # the binary values the package holds
DIGITS = 340   # q1 q2 - c^2 cancels to (|x| / b_std)^2 relative: 1e-300 at the smallest rows drawn

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ the reference
def mp_maps(name: str, theta, c, r):
    """(E[sigma(u) sigma(v)], E[sigma'(u) sigma'(v)], E[sigma(u)^2] / q) at angle theta, covariance c and
    r = sqrt(q1 q2): the arc-cosine kernels of Cho and Saul (2009), written independently of the package."""
    pi = mpmath.pi
    if name in SLOPES:
        a = mpmath.mpf(SLOPES[name])
        dot = ((1 + a * a) * (pi - theta) + 2 * a * theta) / (2 * pi)
        return ((1 - a) ** 2 * r * mpmath.sin(theta) + dot * 2 * pi * c) / (2 * pi), dot, (1 + a * a) / 2
    if name == "sign":
        return 1 - 2 * theta / pi, 0, None
    return (pi - theta) / (2 * pi), 0, None


TRIG = ["sin", "cos", "erf"]   # their maps depend on the variances and the gap q1 + q2 - 2c, not on the angle alone


def mp_trig_maps(name: str, c, q1, q2):
    """(E[sigma(u) sigma(v)], E[sigma'(u) sigma'(v)], E[sigma(u)^2], E[sigma(v)^2]) for sin, cos and erf:
    E[sin u sin v] = e^{-(q1+q2)/2} sinh(c), E[cos u cos v] = e^{-(q1+q2)/2} cosh(c), E[erf u erf v] =
    (2/pi) asin(2c / sqrt((1 + 2 q1)(1 + 2 q2))), E[erf' u erf' v] = (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 c^2)
    (Williams 1997; written independently)."""
    if name == "erf":
        def arcsine(c, a, b):
            return 2 / mpmath.pi * mpmath.asin(2 * c / mpmath.sqrt((1 + 2 * a) * (1 + 2 * b)))
        dot = 4 / mpmath.pi / mpmath.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * c * c)
        return arcsine(c, q1, q2), dot, arcsine(q1, q1, q1), arcsine(q2, q2, q2)
    outer = mpmath.exp(-(q1 + q2) / 2)
    sinh, cosh = outer * mpmath.sinh(c), outer * mpmath.cosh(c)
    if name == "sin":
        return sinh, cosh, (1 - mpmath.exp(-2 * q1)) / 2, (1 - mpmath.exp(-2 * q2)) / 2
    return cosh, sinh, (1 + mpmath.exp(-2 * q1)) / 2, (1 + mpmath.exp(-2 * q2)) / 2


def mp_kernels(X: np.ndarray, name: str, depth: int, w_std: float,
               b_std: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Sigma^(L), Theta^(L), the Sigma^(1) correlation) of every pair of rows of X (the exact binary values of its
    entries), in mpmath."""
    with mpmath.workdps(DIGITS):
        rows = [[mpmath.mpf(float(v)) for v in row] for row in X]
        w2, b2, n0 = mpmath.mpf(w_std) ** 2, mpmath.mpf(b_std) ** 2, X.shape[1]
        S, T, R = (np.zeros((len(X), len(X))) for _ in range(3))
        for i, x in enumerate(rows):
            for j, y in enumerate(rows):
                c = w2 * mpmath.fsum(p * q for p, q in zip(x, y, strict=True)) / n0 + b2
                q1 = w2 * mpmath.fsum(p * p for p in x) / n0 + b2
                q2 = w2 * mpmath.fsum(q * q for q in y) / n0 + b2
                R[i, j] = float(c / mpmath.sqrt(q1 * q2)) if q1 * q2 > 0 else 0.0
                t = c
                for _ in range(depth - 1):          # Proposition 1 and Theorem 1
                    if name in TRIG:
                        E, dot, e1, e2 = mp_trig_maps(name, c, q1, q2)
                        c, q1, q2 = w2 * E + b2, w2 * e1 + b2, w2 * e2 + b2
                        t = t * w2 * dot + c
                        continue
                    r = mpmath.sqrt(q1 * q2)
                    theta = mpmath.atan2(mpmath.sqrt(max(q1 * q2 - c * c, 0)), c)
                    E, dot, m = mp_maps(name, theta, c, r)
                    e1 = m * q1 if m is not None else (1 if name == "sign" else mpmath.mpf(1) / 2)
                    e2 = m * q2 if m is not None else e1
                    c, q1, q2 = w2 * E + b2, w2 * e1 + b2, w2 * e2 + b2
                    t = t * w2 * dot + c
                S[i, j], T[i, j] = float(c), float(t)
    return S, T, R


def tolerance(dtype: torch.dtype, depth: int, rho: np.ndarray | float = 1.0) -> np.ndarray | float:
    """A few roundings per layer where the recomputation covers the pair (layer-1 correlation rho within
    `coincident.NEAR` of +-1; measured: up to 20 eps at depth 6); elsewhere the
    fast formulas' eps / sqrt(1 - |rho|) <= eps / sqrt(NEAR) per layer on top."""
    eps = torch.finfo(dtype).eps
    covered = np.abs(rho) > 1 - coincident.NEAR[dtype]
    return (8 + 4 * depth) * eps + np.where(covered, 0.0, depth * eps / coincident.NEAR[dtype] ** 0.5)


def errors(K: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """|K - reference| in units of sqrt(reference(x, x) reference(y, y))."""
    root = np.sqrt(np.abs(np.diag(reference)))
    return np.abs(K - reference) / (root[:, None] * root[None, :])


# ------------------------------------------------------------------------------------------------ the maps
ANGLES = [0.0, 1e-30, 1e-12, 3e-6, 1e-3, 0.3, 0.4999, 0.5001, 1.5, 3.0, np.pi - 1e-3, np.pi - 1e-9, np.pi]


@pytest.mark.parametrize("name", CARRIERS + TRIG)
@pytest.mark.parametrize("dtype, variances", [(torch.float32, (0.7, 2.0)), (torch.float32, (3e30, 1e29)),
                                              (torch.float64, (0.7, 2.0)), (torch.float64, (3e200, 1e190))])
def test_sigma_both_gap_is_accurate_at_every_angle(name, dtype, variances) -> None:
    """E, E', and the sine G = sqrt(1 - E^2 / (e1 e2)) of the next angle, from the sine of this one, against mpmath
    (at variances whose product overflows too): E and E' to a few eps, G to a few eps relative at every angle,
    also where it vanishes (theta = 0; theta = pi for sign and abs)."""
    act = nk.get_activation(name)
    assert coincident.supports(act)
    q1 = torch.full((len(ANGLES),), variances[0], dtype=dtype)
    q2 = torch.full((len(ANGLES),), variances[1], dtype=dtype)
    r = q1.sqrt() * q2.sqrt()
    angles = torch.tensor(ANGLES, dtype=dtype)
    c, sine = r * torch.cos(angles), torch.sin(angles).abs()
    E, dot, G = act.sigma_both_gap(c, q1, q2, sine)
    e1, e2 = act.sigma_diag(q1), act.sigma_diag(q2)
    eps = torch.finfo(dtype).eps
    with mpmath.workdps(DIGITS):
        for k in range(len(ANGLES)):
            mq1, mq2, mc = (mpmath.mpf(float(v[k])) for v in (q1, q2, c))
            mr = mpmath.sqrt(mq1 * mq2)
            theta = mpmath.atan2(mpmath.mpf(float(sine[k])), mc / mr)   # the angle the arguments describe
            if name in TRIG:
                mE, mdot, me1, me2 = mp_trig_maps(name, mpmath.cos(theta) * mr, mq1, mq2)
                me = mpmath.sqrt(me1 * me2)
            else:
                mE, mdot, m = mp_maps(name, theta, mpmath.cos(theta) * mr, mr)
                me = m * mr if m is not None else mpmath.sqrt(mpmath.mpf(float(e1[k])) * float(e2[k]))
            mG = mpmath.sqrt(max(1 - (mE / me) ** 2, 0))
            where = (name, float(angles[k]))
            assert abs(float(E[k]) / float(me) - float(mE / me)) <= 8 * eps, where
            assert abs(float(dot[k]) - float(mdot)) <= 8 * eps, where
            assert abs(float(G[k]) - float(mG)) <= 16 * eps * float(mG) + 1e-50, (where, float(G[k]), float(mG))


# ------------------------------------------------------------------------------------------------ the kernels
@st.composite
def near_rows(draw, dtype: torch.dtype) -> np.ndarray:
    """Three rows: x; x times a factor (1, or 1e-3 to 1e3: collinear), perturbed by delta relative (0, or 1e-12 to
    1e-3), possibly negated; and x again. Norms 1e-15 to 1e18 in float32 and 1e-150 to 1e150 in float64
    (variances up to 1e36 and 1e300)."""
    d = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(d)
    top = 18 if dtype == torch.float32 else 150
    x *= 10.0 ** draw(st.floats(-top + 3, top)) / np.linalg.norm(x)
    delta = draw(st.one_of(st.just(0.0), st.floats(-12, -3).map(lambda e: 10.0**e)))
    factor = draw(st.one_of(st.just(1.0), st.floats(-3, 3).map(lambda e: 10.0**e)))
    y = x * factor * (1 + delta * rng.standard_normal(d)) * draw(st.sampled_from([1.0, -1.0]))
    return torch.as_tensor(np.stack([x, y, x]), dtype=dtype).double().numpy()   # the values the dtype holds


def check_against_reference(X: np.ndarray, name: str, depth: int, W_std: float, b_std: float,
                            dtype: torch.dtype) -> None:
    arch = nk.MLP(depth=depth, activation=name, W_std=W_std, b_std=b_std)
    Xt = torch.as_tensor(X, dtype=dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", KernelUnderflowWarning)
            nngp = arch.kernel(Xt, get="nngp").double().numpy()
            ntk = arch.kernel(Xt, get="ntk").double().numpy()
    except (KernelRangeError, KernelUnderflowWarning):
        return   # the kernel leaves the dtype's range (tests/test_fuzz_kernels.py checks that this is right)
    S, T, R = mp_kernels(X, name, depth, W_std, b_std)
    tol = tolerance(dtype, depth, R)
    assert np.all(errors(nngp, S) <= tol), (errors(nngp, S), tol)
    assert np.all(errors(ntk, T) <= tol), (errors(ntk, T), tol)


X0 = np.array([[0.3, -0.7, 0.5]])
NEAR5 = np.concatenate([X0, X0 * (1 + 1e-5 * np.array([[1.0, -2.0, 0.5]])), X0])   # rows 1e-5 apart, relative
DUPLICATE = np.concatenate([X0, X0, -X0])
OPPOSITE = np.concatenate([X0, -X0 + 1e-7 * np.array([[1.0, -2.0, 0.5]])])


@given(data=st.data(), name=st.sampled_from(CARRIERS), depth=st.integers(2, 10),
       W_std=st.sampled_from([1.0, 2.0**0.5, 10.0]), b_std=st.sampled_from([0.0, 0.1, 1.0]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
@example(data=NEAR5 * 1e15, name="relu", depth=4, W_std=1.0, b_std=0.0, dtype=torch.float32)   # variance 1e29
@example(data=NEAR5 * 1e15, name="abs", depth=8, W_std=1.0, b_std=0.1, dtype=torch.float32)
@example(data=NEAR5 * 1e15, name="leaky_relu", depth=8, W_std=1.0, b_std=0.0, dtype=torch.float32)
@example(data=NEAR5 * 1e80, name="relu", depth=2, W_std=1.0, b_std=0.1, dtype=torch.float64)   # variance 1e159
@example(data=NEAR5 * 1e120, name="abs", depth=8, W_std=1.0, b_std=0.0, dtype=torch.float64)   # variance 1e239
@example(data=np.array([[1.0, 0.0], [1.0, 1e-2]]), name="relu", depth=5, W_std=1000.0, b_std=0.0,
         dtype=torch.float32)   # variances grow to 1e29
@example(data=NEAR5, name="sign", depth=10, W_std=1.0, b_std=0.0, dtype=torch.float32)   # the cone feeds on itself
@example(data=NEAR5, name="step", depth=10, W_std=1.0, b_std=0.1, dtype=torch.float32)
@example(data=NEAR5, name="sign", depth=6, W_std=1.0, b_std=0.1, dtype=torch.float64)
@example(data=NEAR5 * 1e10, name="step", depth=4, W_std=1.0, b_std=0.0, dtype=torch.float64)
@example(data=DUPLICATE, name="sign", depth=2, W_std=1.0, b_std=0.1, dtype=torch.float32)
@example(data=DUPLICATE, name="step", depth=10, W_std=1.0, b_std=1.0, dtype=torch.float64)
@example(data=OPPOSITE, name="sign", depth=5, W_std=1.0, b_std=0.0, dtype=torch.float32)   # the cone at -1
@example(data=OPPOSITE, name="sign", depth=10, W_std=1.0, b_std=0.0, dtype=torch.float64)
@example(data=OPPOSITE, name="abs", depth=10, W_std=1.0, b_std=0.0, dtype=torch.float64)   # abs maps -1 to 1
@example(data=OPPOSITE, name="relu", depth=2, W_std=1.0, b_std=0.0, dtype=torch.float64)   # SigmaDot's cone at -1
@example(data=np.array([[1e-25], [0.0]]), name="sign", depth=7, W_std=1.0, b_std=0.1,
         dtype=torch.float32)   # x.x underflows, but the angle (1e-24) must not: 0.14 apart at layer 7
@example(data=np.array([[0.6894138, -0.72436774], [6.89413798, -7.24367735]]), name="sign", depth=4, W_std=1.0,
         b_std=0.0, dtype=torch.float32)   # collinear but for rounding: an angle of 1e-8 that projecting loses
@example(data=np.array([[0.6894138, -0.72436774], [6.89413798, -7.24367735]]), name="sign", depth=6, W_std=1.0,
         b_std=0.0, dtype=torch.float64)   # ... and 1e-16 in float64
def test_kernels_at_near_pairs_match_high_precision(data, name, depth, W_std, b_std, dtype) -> None:
    """NNGP and NTK Grams of rows that coincide, nearly coincide or are nearly opposite, against mpmath, to a few
    roundings per layer; examples at variances past sqrt(finfo.max) (1e19 in float32, 1e154 in float64)."""
    X = data if isinstance(data, np.ndarray) else data.draw(near_rows(dtype), label="X")
    X = torch.as_tensor(X, dtype=dtype).double().numpy()
    check_against_reference(X, name, depth, W_std, b_std, dtype)


def test_near_pairs_are_recomputed_for_every_activation_that_carries_the_sine() -> None:
    """The recomputation reaches sign and step (on the generic path) as well as the fused ReLU-family path, and
    leaves autograd's path alone (it writes outside the graph): there the plain formulas stand."""
    X = torch.as_tensor(NEAR5, dtype=torch.float32)
    for name in CARRIERS:
        S, _, _ = mp_kernels(NEAR5.astype(np.float32).astype(np.float64), name, 6, 1.0, 0.0)
        K = nk.MLP(depth=6, activation=name, b_std=0.0).kernel(X, get="nngp").double().numpy()
        assert np.all(errors(K, S) <= tolerance(torch.float32, 6)), name
    S, _, _ = mp_kernels(NEAR5.astype(np.float32).astype(np.float64), "sign", 6, 1.0, 0.0)
    sign = nk.MLP(depth=6, activation="sign", b_std=0.0)
    plain = sign.kernel(X.clone().requires_grad_(True), get="nngp").detach().double().numpy()
    assert errors(plain, S).max() > 1e-3   # theta -> sqrt(theta) per layer: the rounding of rho grows to 1e-2


# ------------------------------------------------------------------------------------------------ sin and cos
TINY = np.array([[1e-4], [0.0]])                          # far at layer 1 (q2 = 0), 7.5e-11 apart after a cos layer
COLLINEAR = np.concatenate([X0, X0 * (1 + 1e-6)])         # norms 1e-6 apart: delta = q1 - q2 carried


@pytest.mark.parametrize("name", TRIG)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sin_cos_erf_kernels_at_near_pairs_match_high_precision(name, dtype) -> None:
    """sin, cos and erf depend on the gap q1 + q2 - 2c, which the plain formulas get only to eps q (at variance 1e7 an
    error of 1 in the exponent in float32) and the chaotic growth of cos and sin at W_std = 10 (W^2 E[sigma'^2]
    about 50 per layer) carries to the output: with the sine and q1 - q2 carried, a few roundings per layer
    against mpmath where the pair is near at layer 1; the pairs the recomputation leaves (correlation past NEAR
    at every layer) keep the plain formulas' eps q per layer at the largest variance q."""
    eps = torch.finfo(dtype).eps
    for base, scale in [(NEAR5, 1.0), (NEAR5, 100.0), (DUPLICATE, 1e4), (OPPOSITE, 100.0), (TINY, 1.0),
                        (COLLINEAR, 100.0)]:
        X = torch.as_tensor(base * scale, dtype=dtype).double().numpy()
        for W_std, b_std, depth in [(10.0, 0.0, 8), (10.0, 1.0, 5), (1.0, 0.1, 3)]:
            arch = nk.MLP(depth=depth, activation=name, W_std=W_std, b_std=b_std)
            nngp = arch.kernel(torch.as_tensor(X, dtype=dtype), get="nngp").double().numpy()
            ntk = arch.kernel(torch.as_tensor(X, dtype=dtype), get="ntk").double().numpy()
            S, T, R = mp_kernels(X, name, depth, W_std, b_std)
            q_max = max(float(W_std**2 * np.max(np.sum(X * X, 1)) / X.shape[1] + b_std**2), W_std**2 + b_std**2)
            covered = np.abs(R) > 1 - coincident.NEAR[dtype]
            tol = (8 + 4 * depth) * eps + np.where(covered, 0.0, depth * eps * q_max)
            where = (name, base.tolist(), scale, W_std, b_std, depth)
            for K, reference in ((nngp, S), (ntk, T)):
                with np.errstate(invalid="ignore"):   # sin: a zero row's kernel is 0 (0 / 0 where equal)
                    error = np.where(K == reference, 0.0, errors(K, reference))
                assert np.all(error <= tol), (where, error / tol)


def test_later_layer_pairs_are_recomputed_only_where_a_map_grows_gaps(monkeypatch) -> None:
    """cos at W_std = 1 is ordered (W^2 E[sin^2 u] < 1): every pair comes within NEAR with depth, and its gap error
    stays eps q, so only the layer-1 near pairs are recomputed (here only the diagonal, which a symmetric Gram takes
    exactly from the diagonals instead: no pair), not all N^2; at W_std = 10 (chaos) the zero row and the small one,
    7.5e-11 apart after a layer, are recomputed (the pairs (0, 1) and (1, 0))."""
    counted = []
    refine = coincident.refine
    monkeypatch.setattr(coincident, "refine", lambda X, Y, rec, rows, *rest: (counted.append(len(rows)),
                                                                              refine(X, Y, rec, rows, *rest)))
    X = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    S = nk.MLP(depth=10, activation="cos", W_std=1.0).kernel(X, get="nngp")
    rho = S / torch.sqrt(S.diagonal()[:, None] * S.diagonal()[None, :])
    assert float(rho.min()) > 1 - coincident.NEAR[torch.float32] and counted == []
    counted.clear()
    nk.MLP(depth=10, activation="cos", W_std=10.0, b_std=0.0).kernel(torch.tensor([[1e-4], [0.0]]), get="nngp")
    assert counted == [2]
