"""The Hermite fast path of the activations without a closed form against the 2-D quadrature (the reference, degree
64), its fallback, its derivatives (Price's theorem) against finite differences, and the kernels built on it."""

import math

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.activations import Quadrature, get_activation, hermite
from ntkit.activations.hermite import HermiteMaps
from ntkit.activations.hermite_autograd import gaussian_maps

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


def _conv_stack(act, dims=1, pool=True):
    """Conv, act, [AvgPool,] Conv, act, GlobalAvgPool, Linear: every position has its own variance."""
    conv, avg = (nk.Conv1d, nk.AvgPool1d) if dims == 1 else (nk.Conv2d, nk.AvgPool2d)
    return nk.Sequential(conv(3), nk.Activation(act), *([avg(2)] if pool else []), conv(3, W_std=1.4),
                         nk.Activation(act), nk.GlobalAvgPool(), nk.Linear())


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softplus", "silu"])
def test_conv_pool_stack_matches_quadrature(name):
    """Convolution and pooling stacks (a variance per position, many distinct variances, correlations up to 1 within
    an example) take the Hermite path and agree with degree-64 quadrature to 1e-10 of the largest entry (the series'
    bound is 1e-12 of the maps' scale); float32 to float32's accuracy."""
    g = torch.Generator().manual_seed(4)
    X = torch.randn(3, 2, 6, generator=g, dtype=torch.float64)
    act = get_activation(name)
    K = _conv_stack(act).kernel(X, get="ntk")
    assert act.last_path == "hermite"
    R = _conv_stack(_reference(act.fn)).kernel(X, get="ntk")
    assert float((K - R).abs().max() / R.abs().max()) < 1e-10
    K32 = _conv_stack(get_activation(name)).kernel(X.float(), get="ntk")
    assert float((K32.double() - R).abs().max() / R.abs().max()) < 1e-5


def test_conv2d_pool_stack_matches_quadrature():
    """The same with 2-D convolutions and average pooling, NNGP and NTK together."""
    X = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for K, R in zip(_conv_stack("tanh", dims=2).kernel(X, get=("nngp", "ntk")),
                    _conv_stack(_reference(torch.tanh), dims=2).kernel(X, get=("nngp", "ntk")), strict=True):
        assert float((K - R).abs().max() / R.abs().max()) < 1e-10


def test_banded_series_within_its_bound():
    """The series truncated per band of |rho| against the full series (every resolved term, NumPy Horner), for
    many distinct variances and correlations in every band, both ends included: within TOLERANCE of
    sqrt(E[sigma(u)^2] E[sigma(v)^2]) (the tail bound), and the small correlations take far fewer terms."""
    maps = HermiteMaps(torch.tanh)
    g = torch.Generator().manual_seed(6)
    q1 = torch.rand(40, 1, generator=g, dtype=torch.float64) * 2.2 + 0.05
    q2 = torch.rand(1, 30, generator=g, dtype=torch.float64) * 2.2 + 0.05
    rho = torch.rand(40, 30, generator=g, dtype=torch.float64) ** 3 * 2 - 1
    rho[0, :4] = torch.tensor([1.0, -1.0, 0.0, 0.999])
    sigma, dot = maps.evaluate(rho * (q1 * q2).sqrt(), q1, q2, ((0, 0), (1, 1)))
    for (m, n), ours in zip(((0, 0), (1, 1)), (sigma, dot), strict=True):
        reps1, index1 = hermite._groups(q1)
        reps2, index2 = hermite._groups(q2)
        a, b, terms = maps._series(reps1, reps2, m, n)
        assert terms(0.3) < terms(1.0) / 3
        products = a[index1.reshape(-1).numpy()][:, None, :] * b[index2.reshape(-1).numpy()][None, :, :]
        full = np.zeros(rho.shape)
        for k in range(products.shape[-1] - 1, -1, -1):
            full = full * rho.numpy() + products[..., k]
        norms = [maps.coefficients(r, o).norms[i.reshape(-1).numpy()] for r, o, i in
                 ((reps1, m, index1), (reps2, n, index2))]
        scale = np.sqrt(norms[0][:, None] * norms[1][None, :])
        assert float((np.abs(ours.numpy() - full) / scale).max()) <= 2 * hermite.TOLERANCE


def test_coefficients_on_fewer_nodes_match_the_largest_rule():
    """Each variance's coefficients come from the fewest Gauss-Hermite nodes that resolve it: against the
    2048-node rule, to the resolution tolerance of the norm."""
    q = np.array([0.05, 0.7, 2.3, 6.0])
    for order in (0, 1):
        rows = hermite._rows(torch.tanh, q, order)
        assert rows[0][3] < hermite.NODE_LADDER[-1]
        z, psi, root_w = hermite._basis(2048)
        values = hermite._derivatives(torch.tanh, torch.as_tensor(np.sqrt(q)[:, None] * z), order).numpy()
        big = (values * root_w) @ psi.T
        for i, (every, norm, _, nodes, _) in enumerate(rows):
            assert np.abs(every[:nodes // 2] - big[i, :nodes // 2]).max() <= 1e-6 * math.sqrt(norm)
            assert abs(norm - (big[i] ** 2).sum()) <= 1e-12 * norm


def _conv_theta(X, W, b):
    return nk.Sequential(nk.Conv1d(3, W_std=W, b_std=b), nk.Tanh(), nk.AvgPool1d(2), nk.Conv1d(3), nk.Tanh(),
                         nk.GlobalAvgPool(), nk.Linear()).kernel(X, get="ntk")


def test_kernel_derivatives_through_torch_func():
    """A convolution stack through the fast path: torch.func.grad and jacrev equal autograd (the same Price
    derivatives, so to rounding)."""
    X = torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    W, b = torch.tensor(1.2, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    Xg = X.clone().requires_grad_(True)
    _conv_theta(Xg, W, b).sum().backward()
    torch.testing.assert_close(torch.func.grad(lambda X: _conv_theta(X, W, b).sum())(X), Xg.grad,
                               rtol=1e-12, atol=1e-14)
    jac = torch.func.jacrev(lambda X: _conv_theta(X, W, b))(X)
    torch.testing.assert_close(jac.sum((0, 1)), Xg.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_conv_kernel_gradients_against_finite_differences():
    """d Theta / d X, d W_std, d b_std of the convolution stack through the fast path against central differences."""
    X = torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64, requires_grad=True)
    W = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_conv_theta, (X, W, b), eps=1e-6, atol=1e-7, rtol=1e-6)
