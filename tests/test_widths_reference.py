"""The standard parametrization's NTK at finite widths, Aggregate over the positions of images and volumes, and
transposed convolutions with circular padding against neural-tangents (float64), stored in
tests/data/nt_references_widths.npz (benchmarks/make_nt_references.py --widths)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.layers import Conv3d
from test_branches import build as build_branches
from test_layers_reference import check_against_references

DATA = np.load(Path(__file__).parent / "data" / "nt_references_widths.npz")
CASES = json.loads(str(DATA["cases"]))


def build(spec: list) -> list:
    """The ntkit layers of a case: a weight layer with "in" takes it as in_channels (its finite fan-in channels)."""
    layers = []
    for entry in spec:
        kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
        param, n_in = opts.get("param", "ntk"), opts.get("in")
        if kind == "dense":
            layers.append(nk.Linear(W_std=opts["W"], b_std=opts["b"], in_channels=n_in, parametrization=param))
        elif kind == "conv":
            conv = {1: nk.Conv1d, 2: nk.Conv2d, 3: Conv3d}[len(opts["k"])]
            layers.append(conv(opts["k"], opts["s"], opts["padding"], W_std=opts["W"], b_std=opts["b"],
                               in_channels=n_in, parametrization=param))
        elif kind == "convtranspose":
            conv = {1: nk.layers.ConvTranspose1d, 2: nk.layers.ConvTranspose2d}[len(opts["k"])]
            layers.append(conv(opts["k"], opts["s"], opts["padding"], W_std=opts["W"], b_std=opts["b"],
                               in_channels=n_in, parametrization=param))
        elif kind == "token":
            layers.append(nk.layers.TokenLinear(opts["W"], opts["b"], in_channels=n_in, parametrization=param))
        else:
            layers.extend(build_branches([entry]))
    return layers


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_neural_tangents(name):
    """Off the diagonal to 1e-10 of the scale; the diagonal looser where neural-tangents takes the arc-cosine of a
    correlation rounded near 1 (as tests/test_layers_reference.py)."""
    arch = nk.Sequential(*build(CASES[name]["layers"]))
    names = ("nngp", "ntk")
    check_against_references(arch, DATA, name, names)


def _empirical_ntk(net, X):
    """J J^T with J the Jacobian of the scalar outputs in all parameters (torch.func)."""
    from torch.func import functional_call, jacrev

    jac = jacrev(lambda p: functional_call(net, p, (X,)).squeeze(-1))(dict(net.named_parameters()))
    J = np.concatenate([j.detach().reshape(X.shape[0], -1).numpy() for j in jac.values()], axis=1)
    return torch.as_tensor(J @ J.T)


@pytest.mark.parametrize("make, in_shape", [
    (lambda n: (nk.Linear(1.3, 0.2, in_channels=3, parametrization="standard"), nk.ReLU(),
                nk.Linear(0.9, 0.1, in_channels=n, parametrization="standard")), (3,)),
    pytest.param(lambda n: (nk.Conv1d(3, padding="circular", in_channels=2, b_std=None, parametrization="standard"),
                            nk.Erf(), nk.Flatten(), nk.Linear(1.1, 0.3, in_channels=5 * n, parametrization="standard")),
                 (2, 5), marks=pytest.mark.slow),
])
def test_empirical_ntk_at_the_stated_width_averages_to_the_kernel(make, in_shape):
    """With one hidden layer the hidden pre-activations are exactly Gaussian at any width, so the empirical NTK of the
    finite network in the standard parametrization averages to the kernel at that width exactly (not only in the
    limit): the mean over S networks of width n within 5 standard errors, at two widths (the kernel grows with n)."""

    X = torch.randn(4, *in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    samples, widths = 200, (4, 32)
    kernels = {width: nk.Sequential(*make(width)).kernel(X) for width in widths}
    for width, other in zip(widths, widths[::-1], strict=True):
        arch = nk.Sequential(*make(width))
        draws = torch.stack([_empirical_ntk(arch.network(in_shape, width=width, seed=s, dtype=torch.float64), X)
                             for s in range(samples)])
        mean, stderr = draws.mean(0), draws.std(0) / samples**0.5
        assert bool(((mean - kernels[width]).abs() <= 5 * stderr).all()), ((mean - kernels[width]).abs() / stderr).max()
        assert bool(((mean - kernels[other]).abs() > 5 * stderr).all())    # it tells the widths apart


def test_standard_ntk_needs_the_fan_in():
    X = np.random.default_rng(0).standard_normal((3, 4))
    arch = nk.Sequential(nk.Linear(parametrization="standard", in_channels=4), nk.ReLU(),
                         nk.Linear(parametrization="standard"))
    with pytest.raises(ValueError, match="parametrization='standard'"):
        arch.kernel(X)
    arch.kernel(X, get="nngp")                                           # the NNGP needs no width
    wrong = nk.Sequential(nk.Linear(parametrization="standard", in_channels=4), nk.ReLU(),
                          nk.Linear(parametrization="standard", in_channels=8))
    with pytest.raises(nk.layers.LayerError, match=r"Linear \(layer 2\) expects 8 input channels, got 5"):
        wrong.network(4, width=5)


@pytest.mark.parametrize("kernel_size, stride, size", [((3,), (2,), (5,)), ((4, 1), (1, 3), (3, 2)),
                                                       ((3, 7), (1, 2), (1, 2))])
def test_circular_transposed_convolution_layer_is_its_kernel(kernel_size, stride, size):
    """The finite circular ConvTranspose on the inputs is Gaussian over its weights with covariance J J^T (J its
    Jacobian in the standard-normal weight and bias): the kernel's Sigma at every pair of positions (read through a
    global average) and at each position (through Flatten), to rounding."""
    from torch.func import functional_call, jacrev

    conv = {1: nk.layers.ConvTranspose1d, 2: nk.layers.ConvTranspose2d}[len(kernel_size)]
    layer = conv(kernel_size, stride, "circular", W_std=1.3, b_std=0.2)
    X = torch.randn(3, 2, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    module = layer.module((2, *size), 1, None, torch.float64)
    jac = jacrev(lambda p: functional_call(module, p, (X,)))(dict(module.named_parameters()))
    positions = module(X)[0].numel()
    J = torch.cat([j.reshape(len(X), positions, -1) for j in jac.values()], dim=-1)     # (N, P, parameters)
    cov = torch.einsum("apk,bqk->abpq", J, J)
    head = nk.Linear(W_std=1.0, b_std=0.0)
    gap = nk.Sequential(layer, nk.GlobalAvgPool(), head).kernel(X, get="nngp")
    flat = nk.Sequential(layer, nk.Flatten(), head).kernel(X, get="nngp")
    torch.testing.assert_close(gap, cov.mean((2, 3)), rtol=1e-12, atol=0)
    torch.testing.assert_close(flat, cov.diagonal(dim1=2, dim2=3).mean(-1), rtol=1e-12, atol=0)


@pytest.mark.slow
def test_two_hidden_layers_approach_the_kernel_at_their_widths():
    """With two hidden layers the second layer's pre-activations are Gaussian only in the limit, so the mean empirical
    NTK of networks of width n matches the kernel at n up to an O(1/n) relative bias (and the standard error)."""
    X = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    samples = 300
    for width in (8, 128):
        arch = nk.Sequential(nk.Linear(1.3, 0.2, in_channels=3, parametrization="standard"), nk.ReLU(),
                             nk.Linear(1.1, 0.1, in_channels=width, parametrization="standard"), nk.ReLU(),
                             nk.Linear(0.9, 0.1, in_channels=width, parametrization="standard"))
        K = arch.kernel(X)
        draws = torch.stack([_empirical_ntk(arch.network(3, width=width, seed=s, dtype=torch.float64), X)
                             for s in range(samples)])
        mean, stderr = draws.mean(0), draws.std(0) / samples**0.5
        assert bool(((mean - K).abs() <= 5 * stderr + 2.0 / width * K.abs()).all())


def test_infinite_in_the_standard_parametrization_takes_the_modules_widths():
    """nk.infinite(model, parametrization="standard"): each weight layer at its torch module's fan-in (no bias where
    the module has none), so the NTK is the standard parametrization's at the model's widths."""
    model = torch.nn.Sequential(torch.nn.Conv1d(2, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(30, 1, bias=False))
    arch = nk.infinite(model, W_std=1.2, b_std=0.1, parametrization="standard")
    expected = nk.Sequential(nk.Conv1d(3, padding="same", W_std=1.2, b_std=0.1, in_channels=2,
                                       parametrization="standard"), nk.ReLU(), nk.Flatten(),
                             nk.Linear(1.2, None, in_channels=30, parametrization="standard"))
    assert arch.describe() == expected.describe()
    X = torch.randn(3, 2, 5, dtype=torch.float64)
    ntk_param = nk.infinite(model, W_std=1.2, b_std=0.1).kernel(X)
    torch.testing.assert_close(arch.kernel(X, get="nngp"), nk.infinite(model, W_std=1.2, b_std=0.1).kernel(
        X, get="nngp"), rtol=1e-13, atol=0)
    assert bool((arch.kernel(X) > 5 * ntk_param).all())        # the standard NTK grows with the width (6 here)
    with pytest.raises(ValueError, match="parametrization"):
        nk.infinite(model, parametrization="mup")
