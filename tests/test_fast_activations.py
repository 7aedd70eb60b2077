"""The Hermite fast path of the activations without a closed form against the 2-D quadrature (the reference, degree
64), its fallback, its derivatives (Price's theorem) against finite differences, and the kernels built on it."""

import math

import pytest
import torch

import ntkit as nk
from ntkit.activations import Quadrature, get_activation
from ntkit.activations.hermite import HermiteMaps, gaussian_maps

SMOOTH = ["tanh", "sigmoid", "softplus", "silu", "swish", "mish"]
KINKED = ["elu", "selu", "softsign"]          # a jump in sigma' or sigma'' at 0: the quadrature stays


def _cases(dtype=torch.float64):
    """Variances up to 2.3 and correlations over [-1, 1], both ends included, with unequal variances."""
    q = torch.tensor([0.0, 0.3, 1.0, 2.3], dtype=dtype)
    rho = torch.tensor([-1.0, -0.999, -0.6, 0.0, 0.2, 0.9, 0.9999, 1.0], dtype=dtype)
    q1, q2, r = torch.meshgrid(q, q, rho, indexing="ij")
    return r * (q1 * q2).sqrt(), q1, q2


def _reference(fn):
    return Quadrature(fn, degree=64, fast=False)


@pytest.mark.parametrize("name", SMOOTH + KINKED)
def test_maps_match_quadrature_of_degree_64(name):
    """Smooth activations take the Hermite path and agree with degree-64 quadrature to 1e-11 of the scale
    sqrt(E[sigma(u)^2] E[sigma(v)^2]) (the series' Parseval bound); kinked ones fall back to the quadrature of
    their degree, unchanged."""
    act = get_activation(name)
    c, q1, q2 = _cases()
    sigma, dot = act.sigma_both(c, q1, q2)
    path = act.last_path
    assert path == ("hermite" if name in SMOOTH else "quadrature")
    ref_sigma, ref_dot = _reference(act.fn).sigma_both(c, q1, q2)
    scale_sigma = (act.sigma_diag(q1) * act.sigma_diag(q2)).sqrt() + 1e-300
    scale_dot = (act.sigma_dot_diag(q1) * act.sigma_dot_diag(q2)).sqrt() + 1e-300
    tol = 2e-11 if name in SMOOTH else 1e-7          # the default quadrature's accuracy at q <= 2.3
    assert float(((sigma - ref_sigma).abs() / scale_sigma).max()) < tol
    assert float(((dot - ref_dot).abs() / scale_dot).max()) < tol
    if name in KINKED:
        plain = Quadrature(act.fn, degree=act.degree, fast=False).sigma_both(c, q1, q2)
        assert torch.equal(sigma, plain[0]) and torch.equal(dot, plain[1])


def test_many_distinct_variances_use_the_series():
    """More distinct variances than tables: the series pair by pair, against the tables and the quadrature."""
    torch.manual_seed(0)
    q1 = torch.rand(30, 1, dtype=torch.float64) * 2 + 0.1
    q2 = torch.rand(1, 20, dtype=torch.float64) * 2 + 0.1
    c = (torch.rand(30, 20, dtype=torch.float64) * 2 - 1) * (q1 * q2).sqrt()
    act = get_activation("tanh")
    sigma, dot = act.sigma_both(c, q1, q2)
    assert act.last_path == "hermite"
    ref_sigma, ref_dot = _reference(torch.tanh).sigma_both(c, q1, q2)
    torch.testing.assert_close(sigma, ref_sigma, rtol=0, atol=1e-11)
    torch.testing.assert_close(dot, ref_dot, rtol=0, atol=1e-11)


def test_large_variance_falls_back_and_fast_false_is_the_reference():
    act = get_activation("tanh")
    q = torch.tensor([30.0], dtype=torch.float64)
    act.sigma(q * 0.5, q, q)
    assert act.last_path == "quadrature"
    ref = Quadrature(torch.tanh, fast=False)
    ref.sigma(q * 0.5, q, q)
    assert ref.last_path == "quadrature" and "fast=False" in repr(ref)
    with pytest.raises(TypeError, match="fast"):
        Quadrature(torch.tanh, fast="yes")


def test_price_derivatives_against_finite_differences():
    """d/dc, d/dq1, d/dq2 of both maps (first and second order, gradcheck's central differences in float64)."""
    maps = HermiteMaps(torch.tanh)
    c = torch.tensor([0.3, -0.5, 0.9], dtype=torch.float64, requires_grad=True)
    q1 = torch.tensor([1.0, 0.7, 1.2], dtype=torch.float64, requires_grad=True)
    q2 = torch.tensor([1.1, 0.9, 0.8], dtype=torch.float64, requires_grad=True)

    def both(c, q1, q2):
        return tuple(gaussian_maps(c, q1, q2, maps, ((0, 0), (1, 1))))

    assert torch.autograd.gradcheck(both, (c, q1, q2), eps=1e-6, atol=1e-7, rtol=1e-6)
    assert torch.autograd.gradgradcheck(both, (c, q1, q2), eps=1e-6, atol=1e-6, rtol=1e-5)


def _sphere(n, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    return X / X.norm(dim=1, keepdim=True) * math.sqrt(d)


@pytest.mark.parametrize("name", ["tanh", *(pytest.param(n, marks=pytest.mark.slow)
                                            for n in ("sigmoid", "softplus", "silu"))])
def test_mlp_kernels_match_quadrature(name):
    """The reference network (depth 4, W_std 1.5, beta 0.1) on the sphere: NTK and NNGP against degree 64, to 1e-10
    of the largest entry, and float32 to float32's accuracy."""
    X = _sphere(12, 20)
    fast = nk.MLP(depth=4, activation=name, W_std=1.5, beta=0.1)
    ref = nk.MLP(depth=4, activation=_reference(get_activation(name).fn), W_std=1.5, beta=0.1)
    for get in ("nngp", "ntk"):
        K, R = fast.kernel(X, get=get), ref.kernel(X, get=get)
        assert float((K - R).abs().max() / R.abs().max()) < 1e-10
        K32 = fast.kernel(X.float(), get=get)
        assert float((K32.double() - R).abs().max() / R.abs().max()) < 1e-5


def test_sequential_stack_matches_quadrature():
    """A convolutional stack calls the same activation objects: fast against the reference."""
    X = 0.5 * torch.randn(5, 2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stack = [nk.Conv1d(3), None, nk.Conv1d(3), None, nk.GlobalAvgPool(), nk.Linear()]

    def arch(act):
        return nk.Sequential(*[nk.Activation(act) if layer is None else layer for layer in stack])

    K = arch("tanh").kernel(X, get="ntk")
    R = arch(_reference(torch.tanh)).kernel(X, get="ntk")
    assert float((K - R).abs().max() / R.abs().max()) < 1e-10


@pytest.mark.slow
def test_kernel_gradients_in_inputs_and_scales():
    """d Theta / d X, d W_std, d b_std through the fast path against central differences."""
    X = _sphere(4, 3, seed=2).requires_grad_(True)
    W = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)

    def theta(X, W, b):
        return nk.MLP(depth=3, activation="tanh", W_std=W, b_std=b).kernel(X, get="ntk")

    assert torch.autograd.gradcheck(theta, (X, W, b), eps=1e-6, atol=1e-7, rtol=1e-6)
