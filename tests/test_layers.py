"""Layers: the finite networks, MLP through Sequential, Monte Carlo convergence of wide conv nets to the analytic
kernels, translation from torch, and the errors bad input gets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit as nk
from ntkit.kernels import kernel_block
from ntkit.layers import LayerError
from ntkit.layers.sequential import Sequential as Seq

f64 = torch.float64


def conv_flatten(activation=nk.ReLU):
    return nk.Sequential(nk.Conv2d(3), activation(), nk.Conv2d(3, stride=2), activation(), nk.Flatten(),
                         nk.Linear())


def conv_pool_residual():
    return nk.Sequential(nk.Conv2d(3), nk.LayerNorm(), nk.Residual(nk.ReLU(), nk.Conv2d(3)), nk.ReLU(),
                         nk.AvgPool2d(2), nk.Conv2d(2, padding="circular"), nk.Erf(), nk.GlobalAvgPool(),
                         nk.Linear(W_std=1.2))


# ------------------------------------------------------------------------------ MLP through Sequential
@pytest.mark.parametrize("activation", ["relu", "erf", "tanh", "gelu"])
def test_mlp_equals_the_layer_by_layer_path(activation, monkeypatch):
    X = torch.randn(7, 5, dtype=f64)
    Y = torch.randn(4, 5, dtype=f64)
    arch = nk.MLP(depth=4, activation=activation, beta=0.2, W_std=1.1)
    fused = arch.kernel(X, Y, get=("nngp", "ntk"))
    # the recursion of ntkit.kernels called directly (what MLP computed before it was built on Sequential)
    direct = kernel_block(X, Y, arch.recursion, True)
    assert torch.equal(fused[0], direct[0]) and torch.equal(fused[1], direct[1])
    # the general layer-by-layer path of Sequential, not the fused recursion
    monkeypatch.setattr(Seq, "recursion", lambda self: None)
    layered = arch.layers.kernel(X, Y, get=("nngp", "ntk"))
    for a, b in zip(fused, layered, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(arch.layers.kernel_diag(X), arch.kernel_diag(X), rtol=1e-13, atol=0)


def test_sequential_of_linear_layers_is_the_mlp():
    X = torch.randn(6, 3, dtype=f64)
    seq = nk.Sequential(nk.Linear(b_std=0.1), nk.ReLU(), nk.Linear(b_std=0.1), nk.ReLU(), nk.Linear(b_std=0.1))
    assert torch.equal(seq.kernel(X), nk.MLP(depth=3, beta=0.1).kernel(X))
    a = seq.network(3, width=9, seed=4, dtype=f64)
    b = nk.MLP(depth=3, beta=0.1).network(3, width=9, seed=4, dtype=f64)
    assert torch.equal(a(X), b(X))


# ------------------------------------------------------------------------------------ finite networks
def test_conv_module_is_the_ntk_parametrized_convolution():
    arch = nk.Sequential(nk.Conv2d((3, 2), stride=2, padding="same", W_std=1.5, b_std=0.3), nk.ReLU(),
                         nk.Conv2d(3, padding="circular"), nk.ReLU(), nk.Conv2d(2, padding="valid"), nk.Flatten(),
                         nk.Linear())
    net = arch.network((2, 7, 6), width=5, out_features=3, seed=0, dtype=f64)
    x = torch.randn(4, 2, 7, 6, dtype=f64)
    c1, c2, c3, lin = net[0], net[2], net[4], net[6]
    # "same" with stride 2 pads as XLA: total = (ceil(7/2) - 1) 2 + 3 - 7 = 2 rows, (3 - 1) 2 + 2 - 6 = 0 columns
    h = F.conv2d(F.pad(x, (0, 0, 1, 1)), c1.weight, stride=2) * 1.5 / math.sqrt(2 * 6) + 0.3 * c1.bias[:, None, None]
    h = torch.relu(h)
    assert h.shape == (4, 5, 4, 3)
    h = F.conv2d(F.pad(h, (1, 1, 1, 1), mode="circular"), c2.weight) / math.sqrt(5 * 9) + 0.1 * c2.bias[:, None, None]
    h = torch.relu(h)
    h = F.conv2d(h, c3.weight) / math.sqrt(5 * 4) + 0.1 * c3.bias[:, None, None]
    out = h.flatten(1) @ lin.weight.T / math.sqrt(h[0].numel()) + 0.1 * lin.bias
    torch.testing.assert_close(net(x), out)
    assert out.shape == (4, 3)


def test_residual_and_layernorm_modules():
    arch = conv_pool_residual()
    net = arch.network((1, 6, 6), width=8, seed=1, dtype=f64)
    x = torch.randn(3, 1, 6, 6, dtype=f64)
    h = net[1](net[0](x))
    torch.testing.assert_close(h.mean(1), torch.zeros(3, 6, 6, dtype=f64), atol=1e-12, rtol=0)
    torch.testing.assert_close(net[2](h), h + net[2].branch(h))
    assert net(x).shape == (3, 1)


# ---------------------------------------------------------------------------------------- Monte Carlo
def _errors(arch, shape, widths, seeds, X):
    """Per network: relative Frobenius errors of the empirical NTK and of the hidden layers' output covariance
    (the exact covariance of the last Linear's outputs given the hidden layers) against the analytic kernels."""
    nngp, ntk = arch.kernel(X, get=("nngp", "ntk"))
    last = arch[-1]
    out = {}
    for width in widths:
        e_ntk, e_nngp = [], []
        for seed in range(seeds):
            net = arch.network(shape, width=width, seed=seed, dtype=f64)
            emp = nk.empirical_ntk(net, X, mode="trace", method="jacobian")
            with torch.no_grad():
                features = net[:-1](X)
            cov = float(last.W_std) ** 2 * features @ features.T / features.shape[1] + float(last.b_std) ** 2
            e_ntk.append(float(torch.linalg.norm(emp - ntk) / torch.linalg.norm(ntk)))
            e_nngp.append(float(torch.linalg.norm(cov - nngp) / torch.linalg.norm(nngp)))
        out[width] = (np.mean(e_ntk), np.mean(e_nngp))
    return out


@pytest.mark.parametrize("make", [conv_flatten, conv_pool_residual], ids=["flatten", "pool_residual"])
def test_wide_conv_nets_converge_like_one_over_sqrt_width(make):
    """Theorem 1 and Proposition 1 for conv nets: the errors fall by about 4 when the width grows by 16
    (mean errors over 8 networks; a wrong limit would leave a floor instead)."""
    torch.manual_seed(0)
    X = torch.randn(3, 1, 6, 6, dtype=f64)
    errors = _errors(make(), (1, 6, 6), (16, 256), 8, X)
    for kind in (0, 1):
        assert 2.3 < errors[16][kind] / errors[256][kind] < 7.0, (kind, errors)
    assert errors[256][0] < 0.15 and errors[256][1] < 0.15


@pytest.mark.slow
def test_average_over_wide_conv_nets_is_the_analytic_ntk():
    torch.manual_seed(1)
    X = torch.randn(4, 2, 5, 5, dtype=f64)
    arch = conv_pool_residual()
    ntk = arch.kernel(X)
    mean = sum(nk.empirical_ntk(arch.network((2, 5, 5), width=512, seed=s, dtype=f64), X, mode="trace",
                                method="jacobian") for s in range(16)) / 16
    assert float(torch.linalg.norm(mean - ntk) / torch.linalg.norm(ntk)) < 0.02


# -------------------------------------------------------------------------- conventions of `kernel`
def test_numpy_dtype_out_progress_and_tiles(tmp_path):
    arch = conv_pool_residual()
    X = np.random.default_rng(0).standard_normal((5, 1, 4, 4))
    K = arch.kernel(X)
    assert isinstance(K, np.ndarray) and K.dtype == np.float64 and K.shape == (5, 5)
    np.testing.assert_allclose(K, K.T, rtol=0, atol=0)
    assert np.linalg.eigvalsh(K).min() > 0
    K32 = arch.kernel(torch.as_tensor(X, dtype=torch.float32))
    assert K32.dtype == torch.float32
    np.testing.assert_allclose(K32.numpy(), K, rtol=1e-4)
    out = np.lib.format.open_memmap(tmp_path / "k.npy", mode="w+", dtype=np.float64, shape=(5, 5))
    assert arch.kernel(X, out=out, tile=2, progress=True) is out
    np.testing.assert_allclose(out, K, rtol=1e-13)
    tiles = arch.kernel_tiles(torch.as_tensor(X))
    assert tiles.describe == arch.describe() and "Residual(" in tiles.describe
    assert tiles.fingerprint() != nk.Sequential(*arch.layers[:-1], nk.Linear(W_std=1.0)).kernel_tiles(
        torch.as_tensor(X)).fingerprint()


def test_layouts_follow_what_the_network_needs():
    flat = conv_flatten().plan((1, 8, 8))[1]
    pooled = conv_pool_residual().plan((1, 8, 8))[1]
    assert flat == "diag" and pooled == "full"
    arch = nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.AvgPool2d(2), nk.Conv2d(3), nk.ReLU(), nk.Flatten(), nk.Linear())
    steps, need = arch.plan((1, 8, 8))
    # every pair of positions up to the pooling, then only the diagonal
    assert [need, *(s.out_need for s in steps)] == ["full", "full", "full", "diag", "diag", "diag", "flat", "flat"]


def test_differentiable_in_x():
    arch = nk.Sequential(nk.Conv2d(2), nk.Erf(), nk.AvgPool2d(2, stride=1), nk.Conv2d(2), nk.GELU(),
                         nk.GlobalAvgPool(), nk.Linear())
    X = torch.randn(3, 1, 3, 3, dtype=f64, requires_grad=True)
    Y = torch.randn(2, 1, 3, 3, dtype=f64)
    assert torch.autograd.gradcheck(lambda x: arch.kernel(x, Y, get=("nngp", "ntk")), (X,))
    with torch.no_grad():
        plain = arch.kernel(X, Y)
    torch.testing.assert_close(arch.kernel(X, Y), plain, rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------------------------------------ infinite
def test_infinite_translates_a_torch_network():
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, padding_mode="circular"), nn.Tanh()),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    arch = nk.infinite(net, b_std=0.2)
    same = nk.Sequential(nk.Conv2d(3, b_std=0.2), nk.ReLU(), nk.AvgPool2d(2), nk.Conv2d(3, padding="circular",
                         b_std=0.2), nk.Tanh(), nk.GlobalAvgPool(), nk.Flatten(), nk.Linear(b_std=0.2))
    X = torch.randn(3, 3, 6, 6, dtype=f64)
    torch.testing.assert_close(arch.kernel(X), same.kernel(X), rtol=1e-14, atol=0)
    with pytest.raises(LayerError, match=r"Conv2d \(layer 0\) expects 3 input channels, got 1"):
        arch.kernel(torch.randn(2, 1, 6, 6))


def test_infinite_takes_dropout_and_tanh_gelu_as_the_evaluated_network_sees_them():
    """nn.Dropout is the identity of the evaluated network (the NTK is taken in eval mode); nn.GELU's tanh
    approximation is integrated as the function it is (a maps' error below 1e-6 of the exact GELU's would hide it)."""
    plain = nk.infinite(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)))
    dropped = nk.infinite(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1)))
    X = torch.randn(5, 4, dtype=f64)
    assert torch.equal(dropped.kernel(X), plain.kernel(X))
    with pytest.raises(LayerError, match=r"module 1 \(Dropout\) drops every unit"):
        nk.infinite(nn.Sequential(nn.Linear(4, 8), nn.Dropout(1.0), nn.Linear(8, 1)))
    tanh_gelu = nk.infinite(nn.Sequential(nn.Linear(4, 8), nn.GELU(approximate="tanh"), nn.Linear(8, 1)))
    exact_gelu = nk.infinite(nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1)))
    gelu = nn.GELU(approximate="tanh")
    by_quadrature = nk.Sequential(nk.Linear(), nk.Activation(lambda x: gelu(x)), nk.Linear())
    torch.testing.assert_close(tanh_gelu.kernel(X), by_quadrature.kernel(X), rtol=1e-9, atol=0)
    assert not torch.allclose(tanh_gelu.kernel(X), exact_gelu.kernel(X), rtol=1e-6, atol=0)


@pytest.mark.parametrize("module, match", [
    (nn.BatchNorm2d(4), r"module 1 \(BatchNorm2d\)"),
    (nn.MaxPool2d(2), r"module 1 \(MaxPool2d\)"),
    (nn.Conv2d(4, 4, 3, dilation=2), "dilation"),
    (nn.LayerNorm(4), "elementwise_affine"),
])
def test_infinite_names_what_it_cannot_translate(module, match):
    with pytest.raises(LayerError, match=match):
        nk.infinite(nn.Sequential(nn.Conv2d(1, 4, 3), module, nn.Flatten(), nn.Linear(4, 1)))


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("make, X, error, match", [
    (conv_flatten, torch.randn(2, 1, 8), LayerError, r"Conv2d \(layer 0\) needs inputs of shape \(C, H, W\)"),
    (conv_flatten, torch.randn(2, 8), LayerError, r"Conv2d \(layer 0\)"),
    (lambda: nk.Sequential(nk.Conv2d(5, padding="valid"), nk.ReLU(), nk.Flatten(), nk.Linear()),
     torch.randn(2, 1, 4, 6), LayerError, r"Conv2d \(layer 0\): kernel_size \(5, 5\) is larger than the input 4x6"),
    (lambda: nk.Sequential(nk.Conv1d(3), nk.AvgPool1d(8), nk.Flatten(), nk.Linear()),
     torch.randn(2, 1, 5), LayerError, r"AvgPool1d \(layer 1\): a window of \(8,\) leaves no positions"),
    (lambda: nk.Sequential(nk.Conv2d(3), nk.Residual(nk.Conv2d(3, stride=2)), nk.Flatten(), nk.Linear()),
     torch.randn(2, 1, 6, 6), LayerError, r"Residual \(layer 1\): its branch changes the shape"),
    (lambda: nk.Sequential(nk.Conv2d(3), nk.Residual(nk.Conv2d(3), nk.ReLU()), nk.Flatten(), nk.Linear()),
     torch.randn(2, 1, 6, 6), LayerError, r"Residual \(layer 1\): its branch must end with a Linear or Conv"),
    (lambda: nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.LayerNorm(), nk.Flatten(), nk.Linear()),
     torch.randn(2, 1, 6, 6), LayerError, r"LayerNorm \(layer 2\) needs a centred Gaussian"),
    (lambda: nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.ReLU(), nk.Flatten(), nk.Linear()),
     torch.randn(2, 1, 6, 6), LayerError, r"ReLU \(layer 2\) needs a Gaussian input"),
    (lambda: nk.Sequential(nk.Conv2d(3), nk.ReLU()), torch.randn(2, 1, 6, 6), LayerError, "must end with flat"),
    (lambda: nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.Linear()), torch.randn(2, 1, 6, 6), LayerError,
     r"Linear \(layer 2\) needs flat inputs"),
    (conv_flatten, torch.full((2, 1, 6, 6), float("nan")), ValueError, "X contains NaN"),
])
def test_bad_input_names_the_layer(make, X, error, match):
    with pytest.raises(error, match=match):
        make().kernel(X)


def test_bad_descriptions_are_refused():
    with pytest.raises(LayerError, match="Sequential needs at least one layer"):
        nk.Sequential()
    with pytest.raises(LayerError, match="Residual needs a branch"):
        nk.Residual()
    with pytest.raises(TypeError, match=r"layer 1 of Sequential must be an ntkit layer .* got ReLU"):
        nk.Sequential(nk.Linear(), nn.ReLU())
    with pytest.raises(ValueError, match="padding must be one of"):
        nk.Conv2d(3, padding="reflect")
    with pytest.raises(ValueError, match="X and Y must have the same shape per example"):
        conv_flatten().kernel(torch.randn(2, 1, 6, 6), torch.randn(2, 2, 6, 6))
    with pytest.raises(ValueError, match="width must list 2 hidden widths"):
        conv_flatten().network((1, 6, 6), width=[3])


def test_tiles_serve_the_gram_layer():
    """Index tensors as rows, matrix-free products and the exact diagonal, as the solvers and stores use them."""
    from ntkit import gram

    arch = conv_pool_residual()
    X = torch.randn(7, 1, 4, 4, dtype=f64)
    K = arch.kernel(X)
    tiles = arch.kernel_tiles(X, tile=3)
    rows = torch.tensor([5, 0, 5])
    block = tiles(rows, slice(1, 6))[0]
    # the point with itself, computed as a cross pair, is its exact diagonal value (no sqrt(eps) of the ReLU's cone)
    assert block[0, 4] == K[5, 5] and block[2, 4] == K[5, 5]
    # the other pairs: other summation orders, a few roundings per layer (angles here are far from 0 and pi)
    torch.testing.assert_close(block, K[rows][:, 1:6], rtol=1e-12, atol=1e-14)
    V = torch.randn(7, 2, dtype=f64)
    torch.testing.assert_close(gram.matmul(tiles, V), K @ V, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(tiles.diag(slice(0, 7))[0], K.diagonal(), rtol=0, atol=0)


@pytest.mark.parametrize("make", [conv_pool_residual, conv_flatten,
                                  lambda: nk.Sequential(nk.Linear(), nk.ReLU(), nk.Linear(W_std=2.0), nk.ReLU(),
                                                        nk.Linear()),
                                  lambda: nk.MLP(depth=3, activation="gelu")])
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_identical_examples_in_any_tile_get_the_exact_diagonal(make, dtype):
    """A point with itself as a cross pair (X and Y share it, a duplicate in X, an index tile that repeats a row)
    equals the diagonal exactly: the plain formulas keep only sqrt(eps) of the angle at the ReLU's cone."""
    arch = make()
    shape = (1, 5, 5) if isinstance(arch, nk.Sequential) and isinstance(arch[0], nk.Conv2d) else (3,)
    X = torch.randn(6, *shape, dtype=f64).to(dtype)
    X[4] = X[1]                                              # a duplicate
    Y = torch.cat([torch.randn(2, *shape, dtype=dtype), X[2:3], X[1:2]])
    diag = arch.kernel_diag(X, get=("nngp", "ntk"))
    for K, want in zip(arch.kernel(X, Y, get=("nngp", "ntk")), diag, strict=True):
        assert K[2, 2] == want[2] and K[1, 3] == want[1] and K[4, 3] == want[1]
    for K, want in zip(arch.kernel(X, get=("nngp", "ntk"), tile=2), diag, strict=True):
        assert K[1, 4] == want[1] and K[4, 1] == want[1]
    tiles = arch.kernel_tiles(X)
    block = tiles(torch.tensor([3, 1, 3]), torch.tensor([4, 3]))[0]
    assert block[0, 1] == diag[1][3] and block[1, 0] == diag[1][1] and block[2, 1] == diag[1][3]


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_global_average_of_entries_near_the_dtype_limit_is_not_an_overflow(get):
    """Sigma near float32's largest value at 16 positions: the 256 pairs sum past the range, their mean does not.
    The float32 kernel equals the float64 one (it was refused as an overflow before)."""
    arch = nk.Sequential(nk.Conv1d(1, b_std=0.0), nk.GlobalAvgPool(), nk.Linear(b_std=0.0))
    X = torch.ones(2, 1, 16, dtype=f64) * 3e18
    X[1] *= -0.5
    exact = arch.kernel(X, get=get)
    assert exact.abs().max() * 256 > torch.finfo(torch.float32).max  # the sum of the pairs overflows float32
    torch.testing.assert_close(arch.kernel(X.float(), get=get), exact.float(), rtol=1e-6, atol=0)


def test_mean_over_positions_where_the_sum_overflows():
    from ntkit.layers.pooling import mean

    big = torch.finfo(torch.float32).max
    t = torch.tensor([[big, big / 2, -big / 4, big], [1.0, 2.0, 3.0, float("inf")]], dtype=torch.float32)
    out = mean(t, (1,))
    assert out[0] == torch.tensor((1 + 0.5 - 0.25 + 1) / 4 * big, dtype=torch.float64).float()
    assert out[1] == float("inf")  # an infinite entry stays infinite


def test_autograd_path_has_the_exact_diagonal_and_the_standard_parametrization_no_ntk():
    """The differentiable block of a symmetric Gram carries the exact diagonal on every path (as the tiles do), and a
    Linear in the standard parametrization has an NNGP but no NTK limit, in MLP and Sequential alike."""
    X = torch.randn(4, 1, 4, 4, dtype=f64)
    arch = conv_pool_residual()
    Xg = X.clone().requires_grad_(True)
    K = arch.kernel(Xg)
    # the self pass's diagonal formulas (no sqrt(eps) of the pair formulas at a point with itself); the first
    # convolution runs through the input record under autograd, hence a few roundings
    torch.testing.assert_close(K.detach().diagonal(), arch.kernel_diag(X), rtol=1e-13, atol=0)
    K.sum().backward()
    assert torch.isfinite(Xg.grad).all()
    flat = torch.randn(5, 3, dtype=f64)
    standard = nk.Sequential(nk.Linear(parametrization="standard"), nk.ReLU(), nk.Linear(parametrization="standard"))
    torch.testing.assert_close(standard.kernel(flat, get="nngp"), nk.MLP(depth=2).kernel(flat, get="nngp"),
                               rtol=0, atol=0)
    for make in (lambda: standard.kernel(flat), lambda: nk.MLP(depth=2, parametrization="standard").kernel(flat)):
        with pytest.raises(ValueError, match="parametrization='standard'"):
            make()
    net = standard.network(3, width=8, seed=0, dtype=f64)
    assert net[0].parametrization == "standard" and net[0].weight_multiplier == 1.0
