"""The finite network of `MLP.network` against the paper's formula, and its infinite-width limit
against Monte Carlo averages over random initializations (Proposition 1, Theorem 1)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call, jacrev

import ntkit as nk


def test_network_computes_the_papers_formula():
    arch = nk.MLP(depth=3, activation="relu", beta=0.1)
    net = arch.network(in_features=4, width=[7, 5], out_features=2, seed=3, dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64)
    a = x
    for index, layer in enumerate(l for l in net if isinstance(l, nk.NTKLinear)):
        n_in = layer.weight.shape[1]
        pre = a @ layer.weight.T / math.sqrt(n_in) + 0.1 * layer.bias   # Section 2
        a = torch.relu(pre) if index < 2 else pre
    torch.testing.assert_close(net(x), a)
    assert [layer.weight.shape for layer in net if isinstance(layer, nk.NTKLinear)] == [(7, 4), (5, 7), (2, 5)]


def test_parameters_are_standard_normal_and_seeds_reproduce():
    net = nk.MLP(depth=2).network(in_features=300, width=400, seed=1)
    weights = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert abs(float(weights.mean())) < 0.01 and abs(float(weights.std()) - 1) < 0.01
    again = nk.MLP(depth=2).network(in_features=300, width=400, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), again.parameters(), strict=True))


def test_standard_parametrization_scales_the_initialization():
    net = nk.MLP(depth=2, W_std=2.0, beta=0.5, parametrization="standard").network(1000, 1000, seed=0)
    first = net[0]
    assert first.weight_multiplier == 1.0 and first.bias_multiplier == 1.0
    assert float(first.weight.detach().std()) == pytest.approx(2.0 / math.sqrt(1000), rel=0.02)
    assert float(first.bias.detach().std()) == pytest.approx(0.5, rel=0.1)


def nngp_monte_carlo(arch: nk.MLP, X: torch.Tensor, width: int, n_nets: int) -> torch.Tensor:
    """E[f(x) f(x')] over random networks, averaged over many outputs of each network."""
    total = torch.zeros(len(X), len(X), dtype=torch.float64)
    for seed in range(n_nets):
        out = arch.network(X.shape[1], width, out_features=128, seed=seed, dtype=torch.float64)(X)
        total += out @ out.T / out.shape[1]
    return total / n_nets


@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_nngp_is_the_limit_of_random_networks(activation, parametrization):
    arch = nk.MLP(depth=3, activation=activation, beta=0.2, parametrization=parametrization)
    X = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.2], [0.0, 0.0]], dtype=torch.float64)
    exact = arch.kernel(X, get="nngp")
    estimate = nngp_monte_carlo(arch, X, width=256, n_nets=40)
    assert (estimate - exact).abs().max() < 0.06 * exact.abs().max()


def empirical_ntk_by_jacobian(net: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Theta = sum_p dF/dtheta_p (x) dF/dtheta_p (x') from an explicit autograd Jacobian."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    jac = jacrev(lambda p: functional_call(net, p, (X,))[:, 0])(params)
    J = torch.cat([j.reshape(len(X), -1) for j in jac.values()], dim=1)
    return J @ J.T


def test_empirical_ntk_converges_to_theta_like_one_over_sqrt_width():
    arch = nk.MLP(depth=3, activation="relu", beta=0.1)
    X = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-0.8, 0.6]], dtype=torch.float64)
    exact = arch.kernel(X)
    errors = {}
    for width in (64, 1024):
        deviations = [
            (empirical_ntk_by_jacobian(arch.network(2, width, seed=s, dtype=torch.float64), X) - exact).norm()
            for s in range(12)
        ]
        errors[width] = float(torch.stack(deviations).pow(2).mean().sqrt())
    ratio = errors[64] / errors[1024]
    assert 2.0 < ratio < 8.0  # sqrt(1024 / 64) = 4
    assert errors[1024] < 0.1 * float(exact.norm())


@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_monte_carlo_of_a_convolutional_architecture(get):
    # Theorem 1 / Proposition 1 for any architecture: the average over random finite CNNs (networks built from the
    # same description, arch.network(in_shape=...)) tends to the exact kernel. Allowed: 4 standard errors of the
    # average, plus the O(1/width) bias of width 48 (a few percent).
    arch = nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.GlobalAvgPool(), nk.Linear())
    X = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    estimate = nk.monte_carlo_ntk if get == "ntk" else nk.monte_carlo_nngp
    mean, stderr = estimate(arch, X, width=48, n_samples=8, progress=False)
    exact = arch.kernel(X, get=get)
    assert mean.shape == exact.shape == (3, 3)
    assert ((mean - exact).abs() <= 4 * stderr + 0.05 * exact.abs()).all()
    flat = nk.MLP(2)
    with pytest.raises(ValueError, match="flat inputs"):
        nk.monte_carlo_ntk(flat, X, width=8, n_samples=2)
