"""Operator kernels (derivatives of Theta in x and y) against finite differences, the errors for non-smooth
activations and bad operators, and the infinitely wide physics-informed network on the 1-D Poisson equation."""

import math

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import pinn


def _fd(f, X, a, h=1e-2):
    """Fourth-order central difference of f(X) along coordinate a of every row of X (error O(h^4))."""
    e = torch.zeros_like(X)
    e[:, a] = h
    return (-f(X + 2 * e) + 8 * f(X + e) - 8 * f(X - e) + f(X - 2 * e)) / (12 * h)


@pytest.mark.parametrize("activation", ["tanh", "erf"])
def test_operator_kernels_match_finite_differences(activation):
    """Each derivative level against a finite difference of the level below, in x and in y, 2-D inputs."""
    arch = nk.MLP(depth=3, activation=activation, W_std=1.2, b_std=0.3)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(4, 2, generator=g, dtype=torch.float64)
    Y = torch.rand(3, 2, generator=g, dtype=torch.float64)

    def K(left=None, right=None):
        return lambda A: pinn.operator_kernel(arch, A, Y, left=left, right=right)

    def KY(left=None, right=None):
        return lambda B: pinn.operator_kernel(arch, X, B, left=left, right=right).T

    d0, d1, d01 = pinn.derivative(0), pinn.derivative(1), pinn.derivative(0, 1)
    lap = pinn.laplacian(2)
    cases = [  # (operator kernel, finite difference of a lower one)
        (K(d1)(X), _fd(K(), X, 1)),
        (K(d01)(X), _fd(K(d0), X, 1)),
        (K(d0 + 2 * d01)(X), _fd(K(), X, 0) + 2 * _fd(K(d0), X, 1)),
        (K(lap, d1)(X), _fd(KY(lap), Y, 1).T),
        (K(lap, lap)(X), _fd(KY(lap, d0), Y, 0).T + _fd(KY(lap, d1), Y, 1).T),
    ]
    for exact, approx in cases:
        scale = float(exact.abs().max())
        assert float((exact - approx).abs().max()) < 1e-6 * max(scale, 1.0)


def test_zeroth_order_is_the_kernel_and_symmetry():
    arch = nk.MLP(depth=3, activation="tanh")
    X = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None]
    torch.testing.assert_close(pinn.operator_kernel(arch, X), arch.kernel(X, get="ntk"), rtol=1e-12, atol=1e-14)
    L = pinn.derivative(0, 0) + 3.0 * pinn.derivative(0)
    Krr = pinn.operator_kernel(arch, X, left=L, right=L)
    torch.testing.assert_close(Krr, Krr.T, rtol=1e-10, atol=1e-10)
    assert bool((torch.linalg.eigvalsh(Krr) > -1e-8 * Krr.diagonal().max()).all())     # a Gram matrix: PSD
    Kur = pinn.operator_kernel(arch, X, right=L)
    torch.testing.assert_close(pinn.operator_kernel(arch, X, left=L), Kur.T, rtol=1e-10, atol=1e-10)


def test_errors():
    X = torch.rand(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="relu.*second derivative"):
        pinn.operator_kernel(nk.MLP(depth=2, activation="relu"), X, left=pinn.laplacian(2))
    with pytest.raises(ValueError, match="elu"):
        pinn.operator_kernel(nk.MLP(depth=2, activation="elu"), X, left=pinn.laplacian(2))
    with pytest.raises(ValueError, match="coordinate 2"):
        pinn.operator_kernel(nk.MLP(depth=2, activation="tanh"), X, left=pinn.derivative(2))
    with pytest.raises(TypeError, match="Operator"):
        pinn.operator_kernel(nk.MLP(depth=2, activation="tanh"), X, left="laplacian")
    with pytest.raises(ValueError, match="one or two"):
        pinn.derivative(0, 0, 0)
    act = nk.MLP(depth=2, activation="elu").recursion.activation
    assert act.require_fast is False                     # restored after the refusal


def test_poisson_1d_matches_the_exact_solution():
    """u'' = g on [0, 1], u(0) = 0, u(1) = 1, exact u = sin(pi x) + x: the infinitely wide tanh network at
    t = inf (kernel regression on the block Gram) against the exact solution; the residual is interpolated."""
    arch = nk.MLP(depth=3, activation="tanh", W_std=1.0, b_std=0.5)
    Xb = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    Xr = torch.linspace(0, 1, 14, dtype=torch.float64)[1:-1, None]
    g = -math.pi**2 * torch.sin(math.pi * Xr[:, 0])
    model = pinn.PhysicsInformed(arch, pinn.derivative(0, 0), Xb, torch.tensor([0.0, 1.0]), Xr, g, ridge=1e-8)
    Xt = torch.linspace(0, 1, 41, dtype=torch.float64)[:, None]
    exact = torch.sin(math.pi * Xt[:, 0]) + Xt[:, 0]
    assert float((model.predict(Xt) - exact).abs().max()) < 2e-3
    torch.testing.assert_close(model.predict_operator(Xr), g, rtol=0, atol=1e-3)   # |g| <= pi^2; ridge 1e-8
    early = model.predict(Xt, t=1.0)
    assert float((early - exact).abs().max()) > 10 * float((model.predict(Xt) - exact).abs().max())
    # the stiffness: K_rr's largest eigenvalue dwarfs K_uu's
    assert float(torch.linalg.eigvalsh(model.K_rr)[-1]) > 10 * float(torch.linalg.eigvalsh(model.K_uu)[-1])


def test_numpy_in_numpy_out():
    arch = nk.MLP(depth=2, activation="tanh")
    out = pinn.operator_kernel(arch, np.linspace(0, 1, 3)[:, None], left=pinn.derivative(0))
    assert isinstance(out, np.ndarray) and out.shape == (3, 3)


@pytest.mark.slow
def test_operator_kernels_match_wide_networks():
    """Monte Carlo: the empirical operator kernels of wide tanh networks (parameter gradients of u'' and of u, by
    torch.func) average to the exact ones within 4 standard errors plus the O(1/width) finite-width bias."""
    from torch.func import functional_call, hessian, jacrev, vmap

    arch = nk.MLP(depth=3, activation="tanh", W_std=1.0, b_std=0.5)
    X = torch.tensor([[-0.6], [0.1], [0.8]], dtype=torch.float64)
    L = pinn.derivative(0, 0)
    exact = {"ur": pinn.operator_kernel(arch, X, right=L), "rr": pinn.operator_kernel(arch, X, left=L, right=L)}
    width, seeds = 512, 12
    samples: dict[str, list[torch.Tensor]] = {"ur": [], "rr": []}
    for seed in range(seeds):
        net = arch.network(in_features=1, width=width, seed=seed, dtype=torch.float64)
        params = {k: v.detach() for k, v in net.named_parameters()}

        def u(p, x, net=net):
            return functional_call(net, p, (x[None, :],))[0, 0]

        def second(p, x, u=u):
            return hessian(lambda z: u(p, z))(x)[0, 0]

        def flat(jac):
            return torch.cat([v.reshape(X.shape[0], -1) for v in jac.values()], 1)

        J_u = flat(vmap(jacrev(u), in_dims=(None, 0))(params, X))
        J_r = flat(vmap(jacrev(second), in_dims=(None, 0))(params, X))
        samples["ur"].append(J_u @ J_r.T)
        samples["rr"].append(J_r @ J_r.T)
    for key, values in samples.items():
        stack = torch.stack(values)
        mean, se = stack.mean(0), stack.std(0) / math.sqrt(seeds)
        gap = (mean - exact[key]).abs()
        assert bool((gap <= 4 * se + 0.05 * exact[key].abs().max()).all()), (key, gap, se)


def test_time_is_gradient_flow_on_the_summed_loss():
    """At the training points the outputs z_t = [u_t(X_b); L u_t(X_r)] solve dz/dt = -K (z - z*), z_0 = 0: against
    the eigendecomposition of the block Gram."""
    arch = nk.MLP(depth=2, activation="tanh", W_std=1.0, b_std=0.5)
    Xb = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    Xr = torch.linspace(0, 1, 6, dtype=torch.float64)[1:-1, None]
    h, g = torch.tensor([0.0, 1.0], dtype=torch.float64), -torch.sin(math.pi * Xr[:, 0])
    model = pinn.PhysicsInformed(arch, pinn.derivative(0, 0), Xb, h, Xr, g)
    K = torch.cat([torch.cat([model.K_uu, model.K_ur], 1), torch.cat([model.K_ur.T, model.K_rr], 1)])
    lam, V = torch.linalg.eigh((K + K.T) / 2)
    target = torch.cat([h, g])
    t = 0.7
    z_t = target - V @ (torch.exp(-t * lam) * (V.T @ target))
    torch.testing.assert_close(model.predict(Xb, t=t), z_t[:2], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(model.predict_operator(Xr, t=t), z_t[2:], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("activation", ["tanh", "erf", "sin"])
def test_dense_path_matches_nested_autograd(activation):
    """The dense-chain path (Taylor polynomials in x.y, |x|^2, |y|^2 through the recursion) against nested autograd
    through the kernel, float64. Both are exact up to the truncation of the Hermite series of the maps' derivatives
    (1e-9 of their scale for orders above 3, 1e-12 below) and rounding, hence 1e-8 relative."""
    arch = nk.MLP(depth=3, activation=activation, W_std=1.2, b_std=0.3)
    g = torch.Generator().manual_seed(1)
    X = torch.rand(4, 2, generator=g, dtype=torch.float64) * 2 - 1
    Y = torch.rand(3, 2, generator=g, dtype=torch.float64) * 2 - 1
    lap, d0, d1, d01 = pinn.laplacian(2), pinn.derivative(0), pinn.derivative(1), pinn.derivative(0, 1)
    cases = [(None, None, "ntk"), (lap, None, "ntk"), (lap, lap, "ntk"), (d0 + 2 * d01 - pinn.identity(), d1 - lap,
                                                                          "ntk"), (lap, d01, "nngp")]
    for left, right, get in cases:
        fast = pinn.operator_kernel(arch, X, Y, left=left, right=right, get=get, method="dense")
        slow = pinn.operator_kernel(arch, X, Y, left=left, right=right, get=get, method="autograd")
        scale = float(slow.abs().max())
        assert float((fast - slow).abs().max()) <= 1e-8 * scale, (left, right, get)


def test_dense_path_on_a_sequential_with_different_layers():
    """A Sequential chain whose layers differ (scales, nonlinearities) takes the dense path, as nested autograd."""
    arch = nk.Sequential(nk.Linear(1.3, 0.2), nk.Tanh(), nk.Linear(0.8, 0.4), nk.Erf(), nk.Linear(1.0, 0.1))
    assert pinn.pinn_dense.dense_chain(arch) is not None
    g = torch.Generator().manual_seed(2)
    X = torch.rand(3, 2, generator=g, dtype=torch.float64)
    Y = torch.rand(2, 2, generator=g, dtype=torch.float64)      # no coincident pair: see the next test
    lap = pinn.laplacian(2)
    fast = pinn.operator_kernel(arch, X, Y, left=lap, right=lap, method="dense")
    slow = pinn.operator_kernel(arch, X, Y, left=lap, right=lap, method="autograd")
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-8 * float(slow.abs().max()))


@pytest.mark.parametrize("activation", ["erf", "tanh"])
def test_dense_path_at_coincident_points(activation):
    """K_rr(x, x) (the diagonal, where the correlation is 1) against a finite difference in y of K_r,dy at
    neighbouring, non-coincident points. Nested autograd through erf's closed form gets these wrong (its
    sqrt(q1 q2 - c^2) has a zero derivative at 0 by convention), the dense path does not."""
    arch = nk.MLP(depth=3, activation=activation, W_std=1.3, b_std=0.2)
    X = torch.rand(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lap = pinn.laplacian(2)

    def KY(right):
        return lambda B: pinn.operator_kernel(arch, X, B, left=lap, right=right).T

    approx = _fd(KY(pinn.derivative(0)), X, 0).T + _fd(KY(pinn.derivative(1)), X, 1).T
    exact = pinn.operator_kernel(arch, X, left=lap, right=lap)
    assert float((exact - approx).abs().max()) < 1e-6 * float(exact.abs().max())


def test_dense_path_symmetric_blocks_and_dtype(monkeypatch):
    """K_rr computed by blocks above the diagonal and mirrored equals the full computation, up to the truncation of
    the maps' derivative series, which each block chooses for its own variances (1e-9 of the maps' scale); float32
    in, float32 out; the chain is refused where it does not apply (method='dense')."""
    monkeypatch.setattr(pinn.pinn_dense, "BLOCK_PAIRS", 16)          # blocks of 2 rows of 8 columns
    arch = nk.MLP(depth=2, activation="tanh", b_std=0.5)
    X = torch.rand(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    lap = pinn.laplacian(2)
    K = pinn.operator_kernel(arch, X, left=lap, right=lap)
    full = pinn.operator_kernel(arch, X, X.clone(), left=lap, right=lap)
    torch.testing.assert_close(K, full, rtol=0, atol=1e-8 * float(full.abs().max()))
    assert bool((K == K.T).all())
    assert pinn.operator_kernel(arch, X.float(), left=lap).dtype == torch.float32
    pooled = nk.Sequential(nk.Linear(), nk.Tanh(), nk.Linear(), nk.LayerNorm(), nk.Linear())
    assert pinn.pinn_dense.dense_chain(pooled) is None
    with pytest.raises(ValueError, match="method='dense'"):
        pinn.operator_kernel(pooled, X[:2], left=lap, method="dense")
    with pytest.raises(ValueError, match="method"):
        pinn.operator_kernel(arch, X, method="fast")


def test_chain_rule_polynomials():
    """The chain rule's terms for F(x.y, |x|^2, |y|^2) = x.y |x|^2 (F_s = p, F_p = s, F_sp = 1): the Laplacian in x
    in 2-D is sum_a (4 x_a y_a + 2 x.y) = 8 x.y, hand-derived, against `chain_rule` evaluated with those partials."""
    terms = pinn.pinn_dense.chain_rule(pinn.laplacian(2), pinn.identity(), 2)
    X = torch.tensor([[0.3, -0.7], [1.1, 0.4]], dtype=torch.float64)
    Y = torch.tensor([[0.5, 0.2]], dtype=torch.float64)
    s, p = X @ Y.T, (X * X).sum(1, keepdim=True).expand(2, 1)
    partials = {(0, 0, 0): s * p, (1, 0, 0): p, (0, 1, 0): s, (1, 1, 0): torch.ones_like(s)}
    total = sum(partials.get(i, torch.zeros_like(s)) * pinn.pinn_dense._evaluate_poly(poly, X, Y)
                for i, poly in terms.items())
    torch.testing.assert_close(total, 8 * s, rtol=1e-14, atol=1e-14)


def test_dense_path_falls_back_where_the_series_do_not_converge():
    """Variances of 1e3 at the first nonlinearity: erf's Hermite series do not converge there, so method='auto'
    takes nested autograd through the closed form (the same numbers) and method='dense' says why it cannot."""
    arch = nk.MLP(depth=3, activation="erf", W_std=1.5, b_std=0.3)
    X = torch.tensor([[30.0, 20.0], [25.0, -10.0]], dtype=torch.float64)
    L = pinn.derivative(0, 0)
    assert not pinn.pinn_dense.ready(pinn.pinn_dense.dense_chain(arch), X, X, L, L)
    torch.testing.assert_close(pinn.operator_kernel(arch, X, left=L, right=L),
                               pinn.operator_kernel(arch, X, left=L, right=L, method="autograd"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="Hermite series converge"):
        pinn.operator_kernel(arch, X, left=L, right=L, method="dense")
