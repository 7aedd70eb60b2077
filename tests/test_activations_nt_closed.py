"""The closed forms of neural-tangents' elementwise layers that ntkit took over: exp, gaussian, rbf, polynomial,
monomial, hermite, rectified_monomial and abrelu.

Each map (Sigma: E[sigma(u) sigma(v)], SigmaDot: E[sigma'(u) sigma'(v)], and the diagonals) is checked against
2-D Gaussian quadrature of the same function (`Quadrature`, degree 64: about 1e-12 for these smooth or piecewise
polynomial functions) and against a Monte Carlo average within 5 standard errors; the MLP kernels against
neural-tangents 0.6.5 in float64 (tests/data/nt_references_activations.npz, made by
benchmarks/make_nt_references.py --activations).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit as nk
import ntkit.activations as A
from ntkit.activations.abrelu import ABRelu
from ntkit.activations.exponential import Exp, Gaussian, Rbf
from ntkit.activations.polynomial import Hermite, Monomial, Polynomial
from ntkit.activations.quadrature import Quadrature
from ntkit.activations.rectified import RectifiedMonomial, arc_cosine_polynomials

f64 = torch.float64

#: one instance per family and setting worth telling apart (degrees, signs of b, slopes)
ACTIVATIONS = {
    "exp": Exp(), "exp_decay": Exp(1.3, -0.6), "gaussian": Gaussian(), "gaussian_positive_b": Gaussian(0.7, 0.1),
    "rbf": Rbf(0.8), "polynomial": Polynomial([0.5, -1.0, 0.3, 0.2]),
    **{f"monomial_{n}": Monomial(n) for n in range(6)},
    **{f"hermite_{n}": Hermite(n) for n in (0, 1, 3, 6)},
    **{f"rectified_monomial_{n}": RectifiedMonomial(n) for n in (0, 1, 2, 3, 5)},
    "abrelu": ABRelu(-0.4, 1.3), "abrelu_negative_b": ABRelu(0.5, -2.0),
}

# (c, q1, q2): generic, negative correlation, nearly collinear, uncorrelated with unequal variances, antipodal
PAIRS = [(0.3, 0.5, 1.2), (-0.2, 1.0, 0.3), (0.7999, 0.8, 0.8), (0.0, 1.5, 0.1), (-0.6, 0.6, 0.6)]


def tensors(*values: float) -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=f64) for v in values]


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_maps_match_quadrature(name):
    """The maps at PAIRS and on the diagonal (c = q1 = q2) against one call of the 2-D rule."""
    act = ACTIVATIONS[name]
    q = [0.1, 0.6, 1.2]
    rows = PAIRS + [(v, v, v) for v in q]
    c, q1, q2 = (torch.tensor(column, dtype=f64) for column in zip(*rows, strict=True))
    sigma, dot = act.sigma_both(c, q1, q2)
    ref_sigma, ref_dot = Quadrature(act, degree=64, fast=False).sigma_both(c, q1, q2)
    # errors in units of the Cauchy-Schwarz bound sqrt(E[sigma(u)^2] E[sigma(v)^2]) (exact zeros stay comparable)
    bound = (act.sigma_diag(q1) * act.sigma_diag(q2)).sqrt()
    bound_dot = (act.sigma_dot_diag(q1) * act.sigma_dot_diag(q2)).sqrt()
    assert ((sigma - ref_sigma).abs() <= 1e-9 * bound + 1e-300).all(), (sigma, ref_sigma)
    assert ((dot - ref_dot).abs() <= 1e-9 * bound_dot + 1e-300).all(), (dot, ref_dot)
    torch.testing.assert_close(act.sigma(c, q1, q2), sigma, rtol=1e-14, atol=1e-300)
    torch.testing.assert_close(act.sigma_dot(c, q1, q2), dot, rtol=1e-14, atol=1e-300)
    diagonal = slice(len(PAIRS), None)
    torch.testing.assert_close(act.sigma_diag(q1[diagonal]), ref_sigma[diagonal], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(act.sigma_dot_diag(q1[diagonal]), ref_dot[diagonal], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["exp_decay", "gaussian_positive_b", "rbf", "polynomial", "monomial_3",
                                  "hermite_3", "rectified_monomial_2", "abrelu_negative_b"])
def test_maps_match_monte_carlo(name):
    """E[sigma(u) sigma(v)] and E[sigma'(u) sigma'(v)] against the average over 400,000 Gaussian pairs, within 5 of
    its standard errors (finite fourth moments at these variances: 8 b q < 1 for the gaussian)."""
    act = ACTIVATIONS[name]
    c, q1, q2 = 0.3, 0.5, 0.8
    generator = torch.Generator().manual_seed(7)
    z = torch.randn(2, 400_000, generator=generator, dtype=f64)
    u = math.sqrt(q1) * z[0]
    v = (c / math.sqrt(q1)) * z[0] + math.sqrt(q2 - c * c / q1) * z[1]
    for samples, exact in ((act(u) * act(v), act.sigma(*tensors(c, q1, q2))),
                           (act.derivative(u) * act.derivative(v), act.sigma_dot(*tensors(c, q1, q2)))):
        error = samples.std() / math.sqrt(samples.numel())
        assert abs(float(samples.mean() - exact)) <= 5 * float(error) + 1e-15, (float(samples.mean()), float(exact))


def test_arc_cosine_polynomials_are_cho_and_saul():
    """Degree 1: J_1 = sin + (pi - theta) cos (ReLU); degree 2: J_2 = 3 sin cos + (pi - theta)(1 + 2 cos^2), as
    (q1 q2)^(n/2) J_n: 3 s c + (pi - theta)(s^2 + 3 c^2)."""
    assert dict(zip(*arc_cosine_polynomials(1), strict=True)) == {(0, 1, 0): 1, (1, 0, 1): 1}
    assert dict(zip(*arc_cosine_polynomials(2), strict=True)) == {(0, 1, 1): 3, (1, 0, 2): 3, (1, 2, 0): 1}
    c, q1, q2 = tensors(0.3, 0.5, 1.2)
    relu = A.get_activation("relu")
    torch.testing.assert_close(RectifiedMonomial(1).sigma(c, q1, q2), relu.sigma(c, q1, q2), rtol=1e-14, atol=0)
    torch.testing.assert_close(ABRelu(0.0, 1.0).sigma_both(c, q1, q2), relu.sigma_both(c, q1, q2), rtol=1e-14, atol=0)


def test_hermite_is_exact_at_any_variance_and_neural_tangents_form_at_unit_variance():
    act = Hermite(4)
    c = torch.tensor([0.3, -0.7], dtype=f64)
    one = torch.ones(2, dtype=f64)
    torch.testing.assert_close(act.sigma(c, one, one), c**4, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(act.sigma_dot(c, one, one), 4 * c**3, rtol=1e-13, atol=1e-15)
    x = torch.linspace(-2, 2, 7, dtype=f64)
    torch.testing.assert_close(act(x), (x**4 - 6 * x**2 + 3) / math.sqrt(24), rtol=1e-14, atol=1e-14)


# --------------------------------------------------------------------------------------------- edges and range
EDGES = [(0.0, 0.0, 0.0), (0.0, 0.0, 1.3), (0.7, 0.7, 0.7), (-0.7, 0.7, 0.7), (0.6, 0.4, 0.9), (-0.6, 0.4, 0.9)]


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_no_nan_at_zero_variance_or_collinear_and_gradients_finite(name):
    """q = 0 and c = +-sqrt(q1 q2) (rounded): finite maps and finite gradients in (c, q1, q2)."""
    act = ACTIVATIONS[name]
    for c, q1, q2 in EDGES:
        inputs = [torch.tensor(v, dtype=f64, requires_grad=True) for v in (c, q1, q2)]
        sigma, dot = act.sigma_both(*inputs)
        assert torch.isfinite(sigma) and torch.isfinite(dot), (c, q1, q2, sigma, dot)
        grads = torch.autograd.grad(sigma + dot, inputs, allow_unused=True)
        assert all(g is None or torch.isfinite(g) for g in grads), (c, q1, q2, grads)
    assert torch.isfinite(act.sigma_diag(torch.zeros(1, dtype=f64))).all()


@pytest.mark.parametrize("name", ["exp_decay", "gaussian", "rbf", "polynomial", "hermite_3", "rectified_monomial_2",
                                  "abrelu"])
def test_kernel_is_differentiable_in_X(name):
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(3, 4, generator=generator, dtype=f64, requires_grad=True)
    Y = torch.randn(2, 4, generator=generator, dtype=f64)
    mlp = nk.MLP(3, ACTIVATIONS[name], W_std=0.9, b_std=0.2)
    assert torch.autograd.gradcheck(lambda Z: mlp.kernel(Z, Y), (X,), eps=1e-6, atol=1e-6)


def test_overflow_is_refused_with_the_layer():
    X = torch.full((2, 3), 30.0, dtype=f64)
    with pytest.raises(nk.KernelOverflowError, match="layer"):
        nk.MLP(3, Exp(1.0, 2.0)).kernel(X)


def test_gaussian_past_its_domain_is_refused_as_such():
    # gaussian with b > 0: E[exp(2 b u^2)] is infinite once 4 b q >= 1 (here q = 2.25 at layer 1, bound 1.25)
    with pytest.raises(ValueError, match=r"infinite for a pre-activation variance q >= 1 / \(4b\) = 1.25.*2.25"):
        nk.MLP(2, Gaussian(1.0, 0.2), b_std=0.0).kernel(torch.full((2, 3), 1.5, dtype=f64))
    with pytest.raises(ValueError, match="reaches 1.25"):
        Gaussian(1.0, 0.2).sigma_diag(torch.tensor([1.0, 1.25], dtype=f64))
    # inside the domain: a^2 / sqrt(1 - 4 b q) and 4 a^2 b^2 q / (1 - 4 b q)^(3/2)
    q = torch.tensor([0.0, 0.5, 1.2], dtype=f64)
    root = torch.sqrt(1 - 0.8 * q)
    assert torch.allclose(Gaussian(1.0, 0.2).sigma_diag(q), 1 / root, rtol=1e-15)
    assert torch.allclose(Gaussian(1.0, 0.2).sigma_dot_diag(q), 0.16 * q / root**3, rtol=1e-15)


@pytest.mark.parametrize("make, error, match", [
    (lambda: Monomial(6), ValueError, "degree"), (lambda: Monomial(-1), ValueError, "degree"),
    (lambda: Monomial(2.0), TypeError, "degree"), (lambda: RectifiedMonomial(-1), ValueError, "degree"),
    (lambda: Hermite(-2), ValueError, "degree"), (lambda: ABRelu(float("nan"), 1.0), ValueError, "a must"),
    (lambda: ABRelu(0.0, float("inf")), ValueError, "b must"), (lambda: Rbf(-1.0), ValueError, "gamma"),
    (lambda: Exp(b=float("nan")), ValueError, "b must"), (lambda: Gaussian(a="x"), TypeError, "a must"),
    (lambda: Polynomial("12"), TypeError, "coef"), (lambda: Polynomial([1.0, float("nan")]), ValueError, r"coef\[1\]"),
    (lambda: nk.layers.Monomial(7), ValueError, "degree"), (lambda: nk.layers.ABRelu(b=None), TypeError, "b must"),
])
def test_settings_out_of_range_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_registry_names_and_short_forms():
    for name in ("exp", "gaussian", "rbf", "polynomial", "monomial", "hermite", "rectified_monomial", "abrelu"):
        assert name in A.names() and A.registry.lookup(name).closed_form
    assert nk.layers.Monomial(3).describe() == nk.Activation(Monomial(3)).describe()
    assert nk.layers.ABRelu(-0.5, 2.0).describe() == nk.Activation(ABRelu(-0.5, 2.0)).describe()
    assert nk.layers.Polynomial([1.0, 2.0]).describe() != nk.layers.Polynomial([1.0, 2.5]).describe()


# ------------------------------------------------------------------------------------ against neural-tangents
DATA = np.load(Path(__file__).parent / "data" / "nt_references_activations.npz")
CASES = json.loads(str(DATA["cases"]))


def build(spec: list) -> nk.Sequential:
    layers = []
    for kind, opts in spec:
        if kind == "dense":
            layers.append(nk.Linear(W_std=opts["W"], b_std=opts["b"]))
        else:
            layers.append(getattr(nk.layers, A.registry.lookup(kind).layer)(**opts))
    return nk.Sequential(*layers)


@pytest.mark.parametrize("name", sorted(CASES))
def test_mlp_matches_neural_tangents(name):
    arch = build(CASES[name]["layers"])
    X, Y = DATA[f"{name}/X"], DATA[f"{name}/Y"]
    got = {"xy": arch.kernel(X, Y, get=("nngp", "ntk")), "xx": arch.kernel(X, get=("nngp", "ntk"))}
    for pair in ("xy", "xx"):
        for ours, kind in zip(got[pair], ("nngp", "ntk"), strict=True):
            reference = DATA[f"{name}/{kind}_{pair}"]
            mask = ~np.eye(*reference.shape, dtype=bool) if pair == "xx" else np.ones(reference.shape, dtype=bool)
            scale = np.abs(reference[mask]).max()
            error = np.abs(np.asarray(ours) - reference)[mask].max() / scale
            assert error < 1e-10, f"{kind} {pair}: max relative error {error:.2e}"
    # the diagonal: stax's rectified monomials divide by sin(theta) = 0 there (NaN); its abrelu takes the square root
    # of q1 q2 - c^2 rounded near 0, an error of about sqrt(eps) (measured: 1e-8); the others to 1e-12
    if not name.startswith("rectified_monomial"):
        for ours, kind in zip(got["xx"], ("nngp", "ntk"), strict=True):
            np.testing.assert_allclose(np.diag(np.asarray(ours)), np.diag(DATA[f"{name}/{kind}_xx"]),
                                       rtol=1e-7 if name.startswith("abrelu") else 1e-12)
