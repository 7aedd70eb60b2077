"""Finite networks against their limit: Monte Carlo averages, the NTK moving in training, linearization.

References: the analytic kernels `MLP.kernel` (Theorem 1, Proposition 1), the 1/sqrt(width)
fluctuations of a finite network's kernel, the paper's Figure 1 finding (a narrow net's NTK
moves more in training than a wide one's), and a Jacobian built by hand for the linearization.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import empirical as E

WIDTHS = [16, 64, 256, 1024]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def circle_points():
    angles = np.linspace(0.3, 2.9, 4)
    return np.stack([np.cos(angles), np.sin(angles), 0.5 * np.ones(4)], axis=1)


@pytest.mark.parametrize("kind", ["ntk", "nngp"])
def test_monte_carlo_converges_to_the_analytic_kernel(kind, circle_points):
    arch = nk.MLP(depth=3, activation="relu", beta=0.1)
    limit = arch.kernel(circle_points, get=kind)
    estimate = E.monte_carlo_ntk if kind == "ntk" else E.monte_carlo_nngp
    distances, stderrs = [], []
    for width in WIDTHS:
        mean, stderr = estimate(arch, circle_points, width=width, n_samples=16, seed=10)
        assert isinstance(mean, np.ndarray) and mean.shape == (4, 4) and stderr.shape == (4, 4)
        distances.append(np.linalg.norm(mean - limit))
        stderrs.append(stderr.mean())
        # the mean is within a few standard errors of the limit (plus an O(1/width) bias)
        assert np.all(np.abs(mean - limit) <= 4.5 * stderr + 2.0 * np.abs(limit) / width)
    slope = np.polyfit(np.log(WIDTHS), np.log(stderrs), 1)[0]  # spread of one network ~ width^(-1/2)
    assert -0.65 < slope < -0.35, slope
    assert distances[-1] < distances[0] / 2.5, distances


def test_monte_carlo_with_two_sets_and_torch_inputs(circle_points):
    arch = nk.MLP(depth=2, activation="erf", beta=0.2)
    X = torch.tensor(circle_points)
    Y = X[:2] * 1.5
    mean, stderr = E.monte_carlo_ntk(arch, X, Y, width=512, n_samples=8)
    assert isinstance(mean, torch.Tensor) and mean.shape == (4, 2)
    assert torch.all((mean - arch.kernel(X, Y)).abs() <= 5 * stderr + 0.01)
    # depth 1: Sigma^(1) = x.y / n0 + beta^2 exactly, no randomness
    nngp, err = E.monte_carlo_nngp(nk.MLP(depth=1, beta=0.2), X, width=None or 1, n_samples=3)
    torch.testing.assert_close(nngp, X @ X.T / 3 + 0.04, rtol=1e-12, atol=1e-12)
    assert float(err.max()) < 1e-12


def test_monte_carlo_bad_input(circle_points):
    arch = nk.MLP(depth=2)
    with pytest.raises(ValueError, match="n_samples must be >= 2"):
        E.monte_carlo_ntk(arch, circle_points, width=8, n_samples=1)
    with pytest.raises(TypeError, match="arch must describe an architecture"):
        E.monte_carlo_ntk("relu", circle_points, width=8, n_samples=2)
    with pytest.raises(ValueError, match="X contains NaN"):
        E.monte_carlo_nngp(arch, np.full((2, 3), np.nan), width=8, n_samples=2)


# ------------------------------------------------------------------- the NTK during training
def train_and_track(width: int, seed: int, steps: int = 200) -> float:
    """Full-batch gradient descent, lr 1, on the cost (1/2)||f - f*||^2_{p_in} with f*(x) = x1 x2
    (the paper's Figure 1 setting); returns the tracked relative change of the NTK on a probe set."""
    generator = torch.Generator().manual_seed(100 + seed)
    X = torch.randn(20, 2, generator=generator, dtype=torch.float64)
    y = (X[:, 0] * X[:, 1]).unsqueeze(1)
    gamma = torch.linspace(-np.pi, np.pi, 12, dtype=torch.float64)
    probe = torch.stack([torch.cos(gamma), torch.sin(gamma)], dim=1)
    net = nk.MLP(depth=4, activation="relu", beta=0.1).network(2, width=width, seed=seed, dtype=torch.float64)
    tracker = E.NTKTracker(net, probe, every=50)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    for step in range(steps + 1):
        tracker.maybe_record(step)
        optimizer.zero_grad()
        (0.5 * ((net(X) - y) ** 2).mean()).backward()
        optimizer.step()
    assert tracker.steps == list(range(0, steps + 1, 50))
    change = tracker.relative_change()
    assert change[0] == 0.0 and change.shape == (len(tracker.steps),)
    return float(change[-1])


def test_narrow_network_ntk_moves_more_than_wide_one():
    narrow = np.mean([train_and_track(30, seed) for seed in range(2)])
    wide = np.mean([train_and_track(600, seed) for seed in range(2)])
    assert narrow > 2.5 * wide > 0, (narrow, wide)


def test_tracker_checks_its_arguments():
    net = nk.MLP(depth=2).network(2, width=4, seed=0)
    with pytest.raises(ValueError, match="every must be >= 1"):
        E.NTKTracker(net, torch.randn(3, 2), every=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        E.NTKTracker(net, torch.randn(3, 2), mode="average")
    tracker = E.NTKTracker(net, torch.randn(3, 2))
    with pytest.raises(ValueError, match="nothing recorded yet"):
        tracker.relative_change()


# ------------------------------------------------------------------------- linearization
def test_linearized_model_is_the_taylor_expansion_and_its_ntk_is_constant():
    from test_empirical import explicit_jacobian  # the hand-built reference

    torch.manual_seed(0)
    net = nk.MLP(depth=3, activation="tanh").network(3, width=[8, 6], out_features=2, seed=1,
                                                     dtype=torch.float64)
    X = torch.randn(5, 3, dtype=torch.float64)
    y = torch.randn(5, 2, dtype=torch.float64)
    lin = E.linearize(net)
    f0, J0 = net(X).detach(), explicit_jacobian(net, X)
    torch.testing.assert_close(lin(X), f0, rtol=0, atol=1e-14)
    theta0 = E.empirical_ntk(lin, X)
    torch.testing.assert_close(theta0, E.empirical_ntk(net, X), rtol=1e-12, atol=1e-14)

    for model in (lin, net):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(30):
            optimizer.zero_grad()
            (0.5 * ((model(X) - y) ** 2).mean()).backward()
            optimizer.step()
    delta = torch.cat([(p - q).detach().reshape(-1) for p, q in zip(lin.params, net_params0(lin), strict=True)])
    assert float(delta.abs().max()) > 1e-2  # it did train
    torch.testing.assert_close(lin(X), f0 + J0 @ delta, rtol=1e-12, atol=1e-12)  # f0 + J0 (theta - theta0)
    for method in ("jacobian", "ntk_vp"):  # constant NTK, unlike the trained network's
        torch.testing.assert_close(E.empirical_ntk(lin, X, method=method), theta0, rtol=1e-12, atol=1e-13)
    assert float((E.empirical_ntk(net, X) - theta0).abs().max()) > 1e-4


def net_params0(lin):
    expansion = lin.theta0()
    return [expansion[name] for name in lin.names]
