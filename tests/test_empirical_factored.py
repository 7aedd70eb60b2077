"""Layers whose cotangents factor over the outputs (ntkit.empirical.factored) against an explicit Jacobian.

The last convolution of a CNN ending in global average pooling and a Linear head (and the head itself) takes the
factored rule; its share of Theta must equal the Jacobian contraction to float64 precision, also with channels
that are dead for some samples (w differs between blocks), blocks assembled from chunks, and a model whose
cotangents factor on the probe sample only (the blocks then fall back to per-sample gradients).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkit import empirical as E
from ntkit.empirical import factored, layerwise
from ntkit.empirical.common import make_problem
from test_empirical import assert_close, explicit_ntk, inputs

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def pooled_cnn():
    """conv, ReLU, conv, ReLU, global average, Linear; one channel of the last conv dead for every input,
    one dead for some."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).to(DT)
    with torch.no_grad():
        net[2].bias[0] = -100.0
        net[2].bias[1] = -1.0
    return net


class ProbeOnly(nn.Module):
    """A pooled CNN plus a term that mixes the channels of the last conv in proportion to the first input value:
    the cotangents factor on an input whose first value is 0 (the probe) and not elsewhere."""

    def __init__(self):
        super().__init__()
        self.net = pooled_cnn()
        self.mix = nn.Parameter(torch.randn(3, 5, dtype=DT, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        z = self.net[:4](x)
        scale = x[:, 0, 0, 0, None]
        return self.net[4:](z) + scale * (z[:, :, 0, 0] ** 2) @ self.mix.T


def test_factor_recovers_separable_cotangents_and_refuses_others():
    D = torch.rand(3, 4, 5, dtype=DT)
    w = torch.randn(6, 5, dtype=DT)
    g = D[:, None] * w[None, :, None, :]
    D_, w_ = factored.factor(g)
    assert torch.allclose(D_[:, None] * w_[None, :, None, :], g, rtol=1e-14, atol=0)
    g[0, 0, 0, 0] += 1e-3
    assert factored.factor(g) is None


@pytest.mark.parametrize("mode", ["full", "trace", "diagonal"])
def test_factored_layers_match_explicit_jacobian(mode):
    model = pooled_cnn()
    X, Y = inputs((2, 6, 6), 5, 0), inputs((2, 6, 6), 4, 1)
    plan = E.choose_method(model, X, per_layer=True)
    assert plan["2"] == "structured conv (factored order)" and plan["6"] == "structured linear (factored order)"
    assert plan["0"] == "structured conv (jacobian order)"
    expected = explicit_ntk(model, X, Y, mode)
    assert_close(E.empirical_ntk(model, X, Y, mode=mode), expected, 1e-12)
    assert_close(E.empirical_ntk(model, X, Y, mode=mode, block_size=2), expected, 1e-12)
    assert_close(E.empirical_ntk(model, X, mode=mode, block_size=2), explicit_ntk(model, X, None, mode), 1e-12)


def test_blocks_assembled_from_chunks():
    model = pooled_cnn()
    X, Y = inputs((2, 6, 6), 6, 2), inputs((2, 6, 6), 3, 3)
    problem, _ = make_problem(model, X, Y, "full", None)
    plan = layerwise.make_plan(problem)
    plan.chunk = 2  # three reverse passes per block of X
    fx, fy = layerwise.block_features(plan, problem, X), layerwise.block_features(plan, problem, Y)
    assert all(f.w is not None for f in fx.factored)
    assert_close(layerwise.tile(fx, fy, "full", 3), explicit_ntk(model, X, Y, "full"), 1e-12)


def test_cotangents_that_factor_only_on_the_probe_fall_back():
    model = ProbeOnly()
    X, Y = inputs((2, 6, 6), 4, 4), inputs((2, 6, 6), 3, 5)
    X[0, 0, 0, 0] = 0.0
    assert "factored" in E.choose_method(model, X, per_layer=True)["net.2"]
    for mode in ("full", "trace"):
        assert_close(E.empirical_ntk(model, X, Y, mode=mode), explicit_ntk(model, X, Y, mode), 1e-12)
        assert_close(E.empirical_ntk(model, X, mode=mode, block_size=1), explicit_ntk(model, X, None, mode), 1e-12)


@pytest.mark.parametrize("mode", ["trace", "diagonal"])
def test_layer_by_layer_path_matches_explicit_jacobian(mode):
    """Trace and diagonal modes over all samples at once (bylayer.py): factored layers, a parameter without a rule
    (the Jacobian), X and Y different; the block path (block_size given) agrees."""
    from ntkit.empirical import bylayer

    model = ProbeOnly()
    X, Y = inputs((2, 6, 6), 4, 6), inputs((2, 6, 6), 3, 7)
    problem, _ = make_problem(model, X, Y, mode, None)
    assert bylayer.fits(layerwise.make_plan(problem), problem, 1 << 30)
    for other in (None, Y):
        expected = explicit_ntk(model, X, other, mode)
        assert_close(E.empirical_ntk(model, X, other, mode=mode), expected, 1e-12)
        assert_close(E.empirical_ntk(model, X, other, mode=mode, block_size=3), expected, 1e-12)
    theta = E.empirical_ntk(model, X, mode=mode)
    assert torch.equal(theta, theta.transpose(0, 1))


def test_layer_by_layer_positions_order_matches_explicit_jacobian():
    """A wide convolution over few positions takes the positions order in the by-layer path (the input Gram
    shared by all outputs); trace and diagonal against the explicit Jacobian, X and Y different."""
    from ntkit.empirical import bylayer

    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(2, 16, 3, padding=1), nn.Tanh(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(128, 3)).to(DT)
    X, Y = inputs((2, 4, 4), 4, 8), inputs((2, 4, 4), 3, 9)
    for other in (None, Y):
        problem, _ = make_problem(model, X, other, "trace", None)
        _, by_positions = bylayer.kept(layerwise.make_plan(problem), problem, 1 << 30)
        assert by_positions == {"2"}
        for mode in ("trace", "diagonal"):
            assert_close(E.empirical_ntk(model, X, other, mode=mode), explicit_ntk(model, X, other, mode), 1e-12)
