"""Each nonlinearity's Gaussian maps against independent integrals.

References: scipy's adaptive 2-D integration of the bivariate normal density (`dblquad`) for
every activation, and high-degree Gauss-Hermite quadrature for the smooth closed forms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

import ntkit.activations as A

CLOSED = ["relu", "leaky_relu", "abs", "identity", "erf", "sign", "step", "sin", "cos", "gelu"]
SMOOTH_CLOSED = ["identity", "erf", "sin", "cos", "gelu"]
QUAD = ["tanh", "sigmoid", "softplus", "silu", "elu", "selu", "softsign"]

# (c, q1, q2): generic, negative correlation, near-collinear, unequal variances
CASES = [(0.3, 0.5, 1.2), (-0.2, 1.0, 0.3), (0.7999, 0.8, 0.8), (0.0, 2.0, 0.1), (1.1, 1.5, 0.9)]


def gaussian_expectation(g, c: float, q1: float, q2: float) -> float:
    """E[g(u, v)] for (u, v) ~ N(0, [[q1, c], [c, q2]]) by nested adaptive integration (scipy),
    split at the kinks u = 0 and v = 0 so that piecewise functions are integrated exactly."""
    # u = sqrt(q1) z1, v = a z1 + b z2 with a = c / sqrt(q1), b = sqrt(q2 - c^2 / q1)
    a, b = c / math.sqrt(q1), math.sqrt(max(q2 - c * c / q1, 0.0))
    density = 1 / math.sqrt(2 * math.pi)

    def inner(z1):
        u = math.sqrt(q1) * z1
        kink = [-a * z1 / b] if b > 0 and abs(a * z1 / b) < 10 else None
        value, _ = integrate.quad(lambda z2: g(u, a * z1 + b * z2) * math.exp(-z2 * z2 / 2) * density,
                                  -10, 10, points=kink, limit=200, epsabs=1e-13, epsrel=1e-12)
        return value * math.exp(-z1 * z1 / 2) * density

    value, _ = integrate.quad(inner, -10, 10, points=[0.0], limit=200, epsabs=1e-12, epsrel=1e-11)
    return value


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _step(x: float) -> float:
    return 1.0 if x > 0 else 0.0


SELU_SCALE, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


# Each nonlinearity and its derivative written independently of the package, in plain Python.
REFERENCE = {
    "relu": (lambda x: max(x, 0.0), _step),
    "leaky_relu": (lambda x: x if x > 0 else 0.01 * x, lambda x: 1.0 if x > 0 else 0.01),
    "abs": (abs, lambda x: 1.0 if x > 0 else -1.0),
    "identity": (lambda x: x, lambda x: 1.0),
    "erf": (math.erf, lambda x: 2 / math.sqrt(math.pi) * math.exp(-x * x)),
    "sign": (lambda x: float(np.sign(x)), lambda x: 0.0),
    "step": (_step, lambda x: 0.0),
    "sin": (math.sin, math.cos),
    "cos": (math.cos, lambda x: -math.sin(x)),
    "gelu": (lambda x: x * 0.5 * (1 + math.erf(x / math.sqrt(2))),
             lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2))) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    "tanh": (math.tanh, lambda x: 1 - math.tanh(x) ** 2),
    "sigmoid": (_sigmoid, lambda x: _sigmoid(x) * (1 - _sigmoid(x))),
    "softplus": (lambda x: math.log1p(math.exp(x)) if x < 30 else x, _sigmoid),
    "silu": (lambda x: x * _sigmoid(x), lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))),
    "elu": (lambda x: x if x > 0 else math.expm1(x), lambda x: 1.0 if x > 0 else math.exp(x)),
    "selu": (lambda x: SELU_SCALE * (x if x > 0 else SELU_ALPHA * math.expm1(x)),
             lambda x: SELU_SCALE * (1.0 if x > 0 else SELU_ALPHA * math.exp(x))),
    "softsign": (lambda x: x / (1 + abs(x)), lambda x: 1 / (1 + abs(x)) ** 2),
}
# Quadrature at degree 32 against the adaptive integrals: the accuracy table of quadrature.py.
TOLERANCE = {"tanh": 1e-11, "softsign": 1e-11}
LARGE_VARIANCE = [(3.0, 5.0, 4.0), (-4.9, 5.0, 5.0), (15.0, 20.0, 20.0)]


@pytest.mark.parametrize("name", CLOSED + QUAD)
@pytest.mark.parametrize("case", CASES[:3])
def test_sigma_maps_match_adaptive_integration(name, case):
    act = A.get_activation(name, degree=32)
    f, df = REFERENCE[name]
    c, q1, q2 = (torch.tensor(v, dtype=torch.float64) for v in case)
    want_sigma = gaussian_expectation(lambda u, v: f(u) * f(v), *case)
    want_dot = gaussian_expectation(lambda u, v: df(u) * df(v), *case)
    tol = TOLERANCE.get(name, 1e-10)
    assert float(act.sigma(c, q1, q2)) == pytest.approx(want_sigma, abs=tol, rel=0)
    assert float(act.sigma_dot(c, q1, q2)) == pytest.approx(want_dot, abs=tol, rel=0)


@pytest.mark.parametrize("name", QUAD)
def test_default_degree_accuracy(name):
    """The default degree (20) on all the cases: within the table's 1e-8 for these variances (q <= 2)."""
    act = A.get_activation(name)
    f, df = REFERENCE[name]
    for case in CASES:
        c, q1, q2 = (torch.tensor(v, dtype=torch.float64) for v in case)
        assert float(act.sigma(c, q1, q2)) == pytest.approx(gaussian_expectation(lambda u, v: f(u) * f(v), *case),
                                                             abs=1e-8, rel=0)
        assert float(act.sigma_dot(c, q1, q2)) == pytest.approx(
            gaussian_expectation(lambda u, v: df(u) * df(v), *case), abs=1e-8, rel=0)


@pytest.mark.parametrize("name", ["erf", "elu", "selu"])
@pytest.mark.parametrize("case", LARGE_VARIANCE)
def test_quadrature_at_large_variance(name, case):
    """Steep (erf at variance 20) and kinked (the jump of selu' at 0) integrands: degree 64 to 1e-12."""
    fn = {"erf": torch.erf, "elu": torch.nn.functional.elu, "selu": torch.nn.functional.selu}[name]
    act = A.Quadrature(fn, degree=64)
    f, df = REFERENCE[name]
    c, q1, q2 = (torch.tensor(v, dtype=torch.float64) for v in case)
    assert float(act.sigma(c, q1, q2)) == pytest.approx(gaussian_expectation(lambda u, v: f(u) * f(v), *case),
                                                         abs=1e-12 * q1.item(), rel=0)
    assert float(act.sigma_dot(c, q1, q2)) == pytest.approx(gaussian_expectation(lambda u, v: df(u) * df(v), *case),
                                                             abs=1e-12, rel=0)


def test_radial_rule_integrates_moments():
    """The Gauss rule of r exp(-r^2/2) on [0, inf): exact for r^k, k < 2 degree (int = 2^(k/2) Gamma(k/2 + 1))."""
    for degree in (8, 32, 64):
        r, w = A.radial_rule(degree, torch.float64, torch.device("cpu"))
        for k in range(2 * degree):
            exact = 2 ** (k / 2) * math.gamma(k / 2 + 1)
            assert float((w * r**k).sum()) == pytest.approx(exact, rel=1e-12), (degree, k)


@pytest.mark.parametrize("name", SMOOTH_CLOSED)
def test_closed_forms_match_quadrature(name):
    closed = A.get_activation(name)
    quad = A.Quadrature(closed.__call__, degree=80)
    c, q1, q2 = (torch.tensor([case[i] for case in CASES], dtype=torch.float64) for i in range(3))
    torch.testing.assert_close(closed.sigma(c, q1, q2), quad.sigma(c, q1, q2), atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(closed.sigma_dot(c, q1, q2), quad.sigma_dot(c, q1, q2), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "abs", "sign", "step"])
def test_kinked_closed_forms_reproduced_by_quadrature(name):
    """Kinks and jumps at 0 fall on the sector boundaries of the quadrature: piecewise linear or constant
    integrands in r on each sector (exact in r) and trigonometric in the angle (spectral in t)."""
    closed = A.get_activation(name)
    quad = A.Quadrature(closed.__call__, degree=32)
    c, q1, q2 = (torch.tensor([case[i] for case in CASES], dtype=torch.float64) for i in range(3))
    torch.testing.assert_close(quad.sigma(c, q1, q2), closed.sigma(c, q1, q2), atol=1e-13, rtol=1e-13)
    torch.testing.assert_close(quad.sigma_dot(c, q1, q2), closed.sigma_dot(c, q1, q2), atol=1e-13, rtol=1e-13)


@pytest.mark.parametrize("name", CLOSED + QUAD)
def test_diagonal_maps_equal_general_maps_at_c_equal_q(name):
    act = A.get_activation(name)
    q = torch.tensor([0.0, 0.1, 1.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(act.sigma_diag(q), act.sigma(q, q, q), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(act.sigma_dot_diag(q), act.sigma_dot(q, q, q), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", CLOSED + QUAD)
def test_derivative_matches_autograd(name):
    act = A.get_activation(name)
    x = torch.linspace(-3, 3, 61, dtype=torch.float64) + 0.013  # avoid the kinks at 0
    xg = x.clone().requires_grad_(True)
    y = act(xg)
    auto = torch.autograd.grad(y.sum(), xg)[0] if y.requires_grad else torch.zeros_like(x)
    torch.testing.assert_close(act.derivative(x), auto)


def test_leaky_relu_slope_and_special_cases():
    """leaky_relu(a) reduces to identity at a = 1 and to abs at a = -1."""
    c, q1, q2 = (torch.tensor([case[i] for case in CASES], dtype=torch.float64) for i in range(3))
    ident, absolute = A.leaky_relu(1.0), A.leaky_relu(-1.0)
    torch.testing.assert_close(ident.sigma(c, q1, q2), c)
    torch.testing.assert_close(ident.sigma_dot(c, q1, q2), torch.ones_like(c))
    torch.testing.assert_close(absolute.sigma(c, q1, q2), A.get_activation("abs").sigma(c, q1, q2))


def test_no_nan_at_identical_zero_and_collinear_points():
    for name in CLOSED + ["tanh"]:
        act = A.get_activation(name)
        q = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float32)
        c = torch.tensor([0.0, 1.0, 1.0 - 1e-7], dtype=torch.float32)
        for value in (act.sigma(c, q, q), act.sigma_dot(c, q, q)):
            assert torch.isfinite(value).all(), name


def test_callable_activation_and_errors():
    act = A.get_activation(torch.tanh)
    assert isinstance(act, A.Quadrature)
    np.testing.assert_allclose(float(act(torch.tensor(0.5))), math.tanh(0.5))
    with pytest.raises(ValueError, match="activation"):
        A.get_activation("no-such-function")
    with pytest.raises(TypeError, match="activation"):
        A.get_activation(3)
    with pytest.raises(ValueError, match="degree"):
        A.Quadrature(torch.tanh, degree=1)


# ------------------------------------------------------------------------------------------- the registry
def test_every_registered_name_gives_its_maps_and_its_function():
    """Each name (and alias) builds a Nonlinearity whose function is the torch one at a few points."""
    x = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64)
    assert set(CLOSED + QUAD) <= set(A.names())
    for name in A.names():
        act = A.get_activation(name)
        assert isinstance(act, A.Nonlinearity)
        assert act(x).shape == x.shape and torch.isfinite(act(x)).all()
        assert (A.registry.lookup(name).closed_form) == (not isinstance(act, A.Quadrature))
    torch.testing.assert_close(A.get_activation("swish")(x), torch.nn.functional.silu(x))
    torch.testing.assert_close(A.get_activation("linear")(x), x)


def test_layer_short_forms_and_torch_translation_come_from_the_registry():
    import ntkit as nk
    from ntkit.layers.activation import SHORT_FORMS

    for entry in A.registry.REGISTRY.values():
        if entry.layer is None:
            continue
        layer = getattr(nk.layers, entry.layer)()
        assert layer.describe() == nk.Activation(entry.build(A.DEFAULT_DEGREE, **dict(entry.params))).describe()
        assert SHORT_FORMS[entry.layer] is type(layer)
        if entry.torch_module is not None:
            arch = nk.infinite(torch.nn.Sequential(torch.nn.Linear(3, 4), entry.torch_module(), torch.nn.Linear(4, 1)))
            assert arch[1].describe() == layer.describe()
    assert nk.LeakyReLU(0.2).describe() == nk.Activation(A.leaky_relu(0.2)).describe()
    with pytest.raises(TypeError, match="unknown setting"):
        nk.LeakyReLU(slope=0.2)
    # settings that are not the registered map's: the module itself, by quadrature
    arch = nk.infinite(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(alpha=2.0), torch.nn.Linear(4, 1)))
    assert isinstance(arch[1].activation, A.Quadrature)


def test_a_registered_activation_is_accepted_by_name():
    entry = A.register("cube_test", A.registry.quadrature(lambda x: x**3, "cube_test"), closed_form=False)
    try:
        act = A.get_activation("CUBE_TEST", degree=12)
        assert isinstance(act, A.Quadrature) and act.degree == 12 and "cube_test" in A.names()
        # E[u^3 v^3] = 9 q1 q2 c + 6 c^3 (Isserlis)
        c, q1, q2 = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64), \
            torch.tensor(1.2, dtype=torch.float64)
        torch.testing.assert_close(act.sigma(c, q1, q2), 9 * q1 * q2 * c + 6 * c**3, rtol=1e-10, atol=0)
    finally:
        A.registry.REGISTRY.pop(entry.name)
    with pytest.raises(ValueError, match="unknown"):
        A.get_activation("cube_test")
    with pytest.raises(ValueError, match="lower-case"):
        A.register("Bad", A.Erf)


def test_the_maps_base_class_keeps_its_old_name_with_a_warning():
    with pytest.warns(DeprecationWarning, match="Nonlinearity"):
        old = A.Activation
    assert old is A.Nonlinearity
