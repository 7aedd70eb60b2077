"""Parallel branches (sum, concatenation along channels, product), Aggregate over graphs, sum pooling, Dropout, 3-D
convolutions and pooling and the standard parametrization against neural-tangents' FanOut / parallel / FanInSum /
FanInConcat / FanInProd, Aggregate, SumPool / GlobalSumPool, Dropout, N-D Conv / AvgPool (float64), stored in
tests/data/nt_references_branches.npz (benchmarks/make_nt_references.py --branches); the combinations' errors;
Residual as the special case it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.layers import (
    Aggregate,
    AvgPool3d,
    Conv3d,
    Dropout,
    GlobalSumPool,
    LayerError,
    Parallel,
    SumPool1d,
    SumPool2d,
    SumPool3d,
)
from ntkit.layers.conv_transpose import ConvTranspose1d, ConvTranspose2d
from test_layers_reference import build as build_plain
from test_layers_reference import check_against_references

DATA = np.load(Path(__file__).parent / "data" / "nt_references_branches.npz")
CASES = json.loads(str(DATA["cases"]))
f64 = torch.float64


def build(spec: list) -> list:
    """The ntkit layers of a case (the kinds of tests/test_layers_reference.py and the branching ones)."""
    layers = []
    for entry in spec:
        kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
        if kind == "parallel":
            branches = [tuple(build(b)) for b in opts["branches"]]
            layers.append(Parallel(*branches, combine=opts["combine"], proportions=opts.get("proportions")))
        elif kind == "aggregate":
            layers.append(Aggregate())
        elif kind == "gsp":
            layers.append(GlobalSumPool())
        elif kind == "sumpool":
            layers.append({1: SumPool1d, 2: SumPool2d, 3: SumPool3d}[len(opts["k"])](opts["k"], opts["s"]))
        elif kind == "dropout":
            layers.append(Dropout(opts["rate"]))
        elif kind == "convtranspose":
            conv = ConvTranspose1d if len(opts["k"]) == 1 else ConvTranspose2d
            layers.append(conv(opts["k"], opts["s"], opts["padding"], W_std=opts["W"], b_std=opts["b"]))
        elif kind == "conv":
            conv = {1: nk.Conv1d, 2: nk.Conv2d, 3: Conv3d}[len(opts["k"])]
            layers.append(conv(opts["k"], opts["s"], opts["padding"], W_std=opts["W"], b_std=opts["b"],
                               parametrization=opts.get("param", "ntk")))
        elif kind == "dense":
            layers.append(nk.Linear(W_std=opts["W"], b_std=opts["b"], parametrization=opts.get("param", "ntk")))
        elif kind == "avgpool" and len(opts["k"]) == 3:
            layers.append(AvgPool3d(opts["k"], opts["s"]))
        else:
            layers.extend(build_plain([entry]))
    return layers


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_neural_tangents(name):
    """Off the diagonal to 1e-10 of the scale; the diagonal looser where neural-tangents takes the arc-cosine of a
    correlation rounded near 1 (sqrt(eps) in the ReLU maps, as tests/test_layers_reference.py)."""
    arch = nk.Sequential(*build(CASES[name]["layers"]))
    names = ("nngp",) if CASES[name].get("nngp_only") else ("nngp", "ntk")   # standard: no NTK limit
    check_against_references(arch, DATA, name, names)


def test_residual_is_parallel_with_the_identity():
    """Residual(branch) and Parallel((), branch) give the same kernels bitwise and the same finite networks."""
    branch = (nk.ReLU(), nk.Conv1d(3, b_std=0.2))
    a = nk.Sequential(nk.Conv1d(2), nk.layers.Residual(*branch), nk.ReLU(), nk.GlobalAvgPool(), nk.Linear())
    b = nk.Sequential(nk.Conv1d(2), Parallel((), branch), nk.ReLU(), nk.GlobalAvgPool(), nk.Linear())
    X = torch.randn(5, 2, 6, dtype=f64, generator=torch.Generator().manual_seed(0))
    for get in ("nngp", "ntk"):
        assert torch.equal(a.kernel(X, get=get), b.kernel(X, get=get))
    na, nb = a.network((2, 6), width=7, seed=3, dtype=f64), b.network((2, 6), width=7, seed=3, dtype=f64)
    assert torch.equal(na(X), nb(X))


def test_finite_concat_has_the_proportions_of_channels():
    arch = nk.Sequential(nk.Linear(), Parallel(nk.Linear(), (nk.ReLU(), nk.Linear()), combine="concat",
                                               proportions=(1, 3)), nk.Linear())
    net = arch.network(4, width=5, seed=0)
    hidden = net[1](net[0](torch.randn(2, 4)))
    assert hidden.shape == (2, 20)


@pytest.mark.parametrize("make, shape, match", [
    (lambda: nk.Sequential(nk.Conv2d(3), Parallel(nk.Conv2d(3), nk.Conv2d(3, stride=2), combine="concat"),
                           nk.Flatten(), nk.Linear()), (1, 6, 6),
     r"Parallel \(layer 1\): its branches give the shapes per example \(C, 6, 6\), \(C, 3, 3\)"),
    (lambda: nk.Sequential(nk.Linear(), Parallel(nk.Linear(), (nk.Linear(), nk.ReLU())), nk.Linear()), (3,),
     r"Parallel \(layer 1\): each branch of a sum must end with a Linear or Conv"),
    (lambda: nk.Sequential(nk.Linear(), Parallel(nk.Linear(), nk.Linear(), combine="product"), nk.ReLU(),
                           nk.Linear()), (3,), r"ReLU \(layer 2\) needs a Gaussian input"),
    (lambda: nk.Sequential(nk.Linear(), Parallel(nk.ReLU(), nk.Linear(), combine="product"), nk.Linear()), (3,),
     r"Parallel \(layer 1\): each branch of a product needs a weight layer"),
    (lambda: nk.Sequential(nk.Conv1d(3), Parallel((nk.Conv1d(3), nk.Flatten()), (nk.Conv1d(3, stride=2), nk.Flatten()),
                                                  combine="concat"), nk.Linear()), (1, 6),
     r"Parallel \(layer 1\): its branches end flat"),
])
def test_bad_combinations_name_the_layer(make, shape, match):
    with pytest.raises(LayerError, match=match):
        make().kernel(torch.randn(2, *shape))


def test_bad_settings():
    with pytest.raises(LayerError, match="at least two branches"):
        Parallel(nk.Linear())
    with pytest.raises(LayerError, match="identity branches"):
        Parallel((), (), nk.Linear())
    with pytest.raises(LayerError, match="concat.*identity"):
        Parallel((), nk.Linear(), combine="concat")
    with pytest.raises(ValueError, match="proportions must have one entry per branch"):
        Parallel(nk.Linear(), nk.Linear(), combine="concat", proportions=(1,))
    with pytest.raises(ValueError, match="combine"):
        Parallel(nk.Linear(), nk.Linear(), combine="mean")
    with pytest.raises(TypeError, match="branch 1 of Parallel"):
        Parallel(nk.Linear(), "relu")


# ------------------------------------------------------------------------------- nk.infinite by tracing
class _Block(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


class _Net(torch.nn.Module):
    """A stem, an inception-like concatenation of 4 and 8 channels, a residual block, a pooled head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.a = torch.nn.Conv2d(8, 4, 1)
        self.b = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1))
        self.block = _Block(12)
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(12, 1))

    def forward(self, x):
        h = self.stem(x)
        h = torch.cat([self.a(h), self.b(h)], dim=1)
        return self.head(self.block(h))


def test_infinite_traces_residual_additions_and_concatenations():
    """The traced model is the description written by hand: the same describe() (every setting) and kernels."""
    arch = nk.infinite(_Net())
    conv = lambda k, c, padding="same": nk.Conv2d(k, padding=padding, in_channels=c)   # noqa: E731
    expected = nk.Sequential(conv(3, 1), Parallel(conv(1, 8, "valid"), (nk.ReLU(), conv(3, 8)), combine="concat",
                                                  proportions=(1, 2)),
                             nk.layers.Residual(conv(3, 12), nk.ReLU(), conv(3, 12)), nk.GlobalAvgPool(), nk.Flatten(),
                             nk.Linear(in_channels=12))
    assert arch.describe() == expected.describe()
    X = torch.randn(3, 1, 5, 5, dtype=f64)
    assert torch.equal(arch.kernel(X), expected.kernel(X))


class _Sum(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.d = torch.nn.Linear(3, 5), torch.nn.Linear(3, 5)
        self.b, self.c = torch.nn.Linear(5, 5), torch.nn.Linear(5, 5)
        self.out = torch.nn.Linear(5, 1)

    def forward(self, x):
        h = self.a(x)
        return self.out(torch.relu(self.b(h) + self.c(torch.relu(h))) * self.d(x))


def test_infinite_traces_sums_and_products_of_branches():
    inner = Parallel(nk.Linear(in_channels=5), (nk.ReLU(), nk.Linear(in_channels=5)))
    expected = nk.Sequential(Parallel((nk.Linear(in_channels=3), inner, nk.ReLU()), nk.Linear(in_channels=3),
                                      combine="product"), nk.Linear(in_channels=5))
    assert nk.infinite(_Sum()).describe() == expected.describe()


class _Shared(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.out = torch.nn.Linear(3, 5), torch.nn.Linear(5, 1)

    def forward(self, x):
        return self.out(self.a(x) * self.a(x))


class _Bad(torch.nn.Module):
    def __init__(self, forward):
        super().__init__()
        self.conv = torch.nn.Conv1d(2, 2, 3, padding=1)
        self.linear = torch.nn.Linear(8, 1)
        self.fn = forward

    def forward(self, x):
        return self.linear(torch.flatten(self.fn(self, x), 1))


@pytest.mark.parametrize("forward, match", [
    (lambda m, x: m.conv(x) + 1.0, r"node add .* an operand is a constant"),
    (lambda m, x: torch.cat([m.conv(x), x], dim=2), r"node cat .* only a concatenation .* along channels"),
    (lambda m, x: torch.softmax(m.conv(x), 1), r"node softmax .* no infinite-width counterpart"),
    (lambda m, x: x + torch.relu(m.conv(x)), r"Residual.*must end with a Linear or Conv"),
])
def test_infinite_names_what_it_cannot_translate(forward, match):
    with pytest.raises(LayerError, match=match):
        nk.infinite(_Bad(forward)).kernel(torch.randn(2, 2, 4))


def test_infinite_refuses_shared_weights():
    """One module called twice shares its weights: the two values are not independent branches."""
    with pytest.raises(LayerError, match=r"module a \(Linear\) is called 2 times"):
        nk.infinite(_Shared())


@pytest.mark.parametrize("layer", [ConvTranspose1d, ConvTranspose2d])
def test_transposed_convolution_kernels_differentiate_in_their_scales(layer):
    """W_std and b_std given as tensors stay in the graph (the scikit-learn and GPyTorch kernels learn them): the
    derivatives of the NTK's sum equal central differences (error O(h^2) ~ 1e-12 of the scale at h = 1e-6, plus
    rounding eps K / h ~ 1e-10)."""
    shape = (2, 4) if layer is ConvTranspose1d else (2, 3, 3)
    X = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def total(W_std, b_std):
        arch = nk.Sequential(layer(2, stride=2, W_std=W_std, b_std=b_std), nk.ReLU(), nk.Flatten(), nk.Linear())
        return arch.kernel(X).sum()

    W, b = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.3, 0.4))
    grads = torch.autograd.grad(total(W, b), (W, b))
    h = 1e-6
    differences = ((total(1.3 + h, 0.4) - total(1.3 - h, 0.4)) / (2 * h),
                   (total(1.3, 0.4 + h) - total(1.3, 0.4 - h)) / (2 * h))
    for grad, difference in zip(grads, differences, strict=True):
        torch.testing.assert_close(grad, difference, rtol=1e-7, atol=0)
