"""The rest of stax with a closed form: Dropout, sum pooling, 3-D convolutions, the standard parametrization of
convolutions. Their kernels equal neural-tangents' (tests/test_branches.py); here: Dropout's kernel against Monte Carlo
over weights and masks, the relations that define sum pooling, the standard parametrization's finite layers, and bad
settings."""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from ntkit.layers import (
    AvgPool2d,
    Conv3d,
    Dropout,
    GlobalSumPool,
    SumPool2d,
)

f64 = torch.float64


def test_dropout_kernel_is_the_average_over_weights_and_masks():
    """The NNGP of Linear, ReLU, Dropout(0.6), Linear against the outputs' second moments over S random networks of
    width n in training mode (independent masks per example): within 5 standard errors plus the O(1/n) bias. The
    diagonal carries the factor 1 / rate, the pairs of different examples do not."""
    arch = nk.Sequential(nk.Linear(), nk.ReLU(), Dropout(0.6), nk.Linear(b_std=0.2))
    X = torch.randn(4, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    K = arch.kernel(X, get="nngp")
    width, samples, outputs = 128, 100, 16
    torch.manual_seed(0)
    moments = []
    for s in range(samples):
        net = arch.network(3, width=width, out_features=outputs, seed=s, dtype=f64).train()
        with torch.no_grad():
            f = net(X)                                   # (4, outputs): each output one draw given the hidden layer
        moments.append(f @ f.T / outputs)
    values = torch.stack(moments)
    mean, stderr = values.mean(0), values.std(0) / samples**0.5
    allowed = 5 * stderr + 2.0 / width * float(K.abs().max())
    assert bool(((mean - K).abs() <= allowed).all()), ((mean - K).abs() / allowed).max()
    no_dropout = nk.Sequential(nk.Linear(), nk.ReLU(), nk.Linear(b_std=0.2)).kernel(X, get="nngp")
    off = ~torch.eye(4, dtype=torch.bool)
    torch.testing.assert_close(K[off], no_dropout[off], rtol=1e-14, atol=0)
    torch.testing.assert_close(K.diagonal() - 0.2**2, (no_dropout.diagonal() - 0.2**2) / 0.6, rtol=1e-13, atol=0)


def test_dropout_in_test_mode_and_at_rate_one_is_the_identity():
    X = torch.randn(5, 3, dtype=f64)
    plain = nk.Sequential(nk.Linear(), nk.ReLU(), nk.Linear())
    for layer in (Dropout(0.5, mode="test"), Dropout(1.0)):
        arch = nk.Sequential(nk.Linear(), nk.ReLU(), layer, nk.Linear())
        torch.testing.assert_close(arch.kernel(X), plain.kernel(X), rtol=1e-13, atol=0)   # the fused path there


def test_dropout_output_is_not_gaussian():
    with pytest.raises(nk.layers.LayerError, match=r"ReLU \(layer 3\) needs a Gaussian input"):
        nk.Sequential(nk.Linear(), nk.ReLU(), Dropout(0.5), nk.ReLU(), nk.Linear()).kernel(torch.randn(2, 3))


@pytest.mark.parametrize("rate, mode, error", [(0.0, "train", "rate"), (1.5, "train", "rate"),
                                               (0.5, "eval", "mode")])
def test_dropout_bad_settings(rate, mode, error):
    with pytest.raises(ValueError, match=error):
        Dropout(rate, mode)


def test_sum_pooling_is_average_pooling_times_the_window():
    """SumPool's kernel is AvgPool's times (window size)^2; GlobalSumPool's is the mean's times P^2."""
    X = torch.randn(4, 1, 5, 4, dtype=f64)
    head = (nk.Conv2d(3), nk.ReLU())
    tail = (nk.Flatten(), nk.Linear(W_std=1.0, b_std=0.0))
    K_sum = nk.Sequential(*head, SumPool2d(2, stride=1), *tail).kernel(X, get=("nngp", "ntk"))
    K_avg = nk.Sequential(*head, AvgPool2d(2, stride=1), *tail).kernel(X, get=("nngp", "ntk"))
    for a, b in zip(K_sum, K_avg, strict=True):
        torch.testing.assert_close(a, 16 * b, rtol=1e-13, atol=0)
    K_gsp = nk.Sequential(*head, GlobalSumPool(), nk.Linear(b_std=0.0)).kernel(X)
    K_gap = nk.Sequential(*head, nk.GlobalAvgPool(), nk.Linear(b_std=0.0)).kernel(X)
    torch.testing.assert_close(K_gsp, 20**2 * K_gap, rtol=1e-13, atol=0)


def test_conv3d_of_a_volume_one_deep_is_conv2d():
    """A 3-D convolution of kernel depth 1 over a volume of depth 1 is the 2-D convolution (kernels and networks)."""
    X = torch.randn(4, 2, 5, 4, dtype=f64)
    a = nk.Sequential(Conv3d((1, 3, 3), padding="same"), nk.ReLU(), nk.layers.AvgPool3d((1, 2, 2)), nk.Flatten(),
                      nk.Linear())
    b = nk.Sequential(nk.Conv2d(3, padding="same"), nk.ReLU(), AvgPool2d(2), nk.Flatten(), nk.Linear())
    for get in ("nngp", "ntk"):
        torch.testing.assert_close(a.kernel(X[:, :, None], get=get), b.kernel(X, get=get), rtol=1e-13, atol=0)
    net3, net2 = a.network((2, 1, 5, 4), width=6, seed=0, dtype=f64), b.network((2, 5, 4), width=6, seed=0, dtype=f64)
    torch.testing.assert_close(net3(X[:, :, None]), net2(X), rtol=1e-12, atol=1e-12)


def test_standard_parametrization_of_convolutions():
    """The same functions at initialization and the same NNGP as the NTK parametrization; its NTK grows with the
    width (no limit), so without the fan-in (`in_channels`) get="ntk" is refused."""
    X = torch.randn(3, 2, 6, dtype=f64)
    ntk = nk.Sequential(nk.Conv1d(3, W_std=1.3), nk.ReLU(), nk.Flatten(), nk.Linear())
    std = nk.Sequential(nk.Conv1d(3, W_std=1.3, parametrization="standard"), nk.ReLU(), nk.Flatten(), nk.Linear())
    assert torch.equal(std.kernel(X, get="nngp"), ntk.kernel(X, get="nngp"))
    torch.testing.assert_close(std.network((2, 6), width=9, seed=1, dtype=f64)(X),
                               ntk.network((2, 6), width=9, seed=1, dtype=f64)(X), rtol=1e-12, atol=1e-12)
    assert "parametrization='standard'" in std.describe()
    with pytest.raises(ValueError, match="parametrization='standard'"):
        std.kernel(X)
    with pytest.raises(ValueError, match="parametrization"):
        nk.Conv1d(3, parametrization="mup")


def test_infinite_translates_3d_convolutions_and_pooling():
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool3d(2),
                                torch.nn.Conv3d(8, 8, (2, 1, 2)), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 1))
    expected = nk.Sequential(Conv3d(3, padding="same", in_channels=2), nk.ReLU(), nk.layers.AvgPool3d(2),
                             Conv3d((2, 1, 2), padding="valid", in_channels=8), nk.ReLU(), nk.GlobalAvgPool(),
                             nk.Flatten(), nk.Linear(in_channels=8))
    assert nk.infinite(model).describe() == expected.describe()


def test_infinite_translates_unflatten_after_a_linear():
    """nn.Unflatten(1, (C, H, W)) after an nn.Linear: the units at independent positions, Sigma'(x_p, y_q) =
    delta_pq Sigma(x, y); so a 1x1 convolution and a global average after it give the Linear's kernel with the
    Sigma of different positions left out (1 / P of the pairs), checked by hand; and wide finite networks converge."""
    from ntkit.layers.unflatten import Unflatten

    model = torch.nn.Sequential(torch.nn.Linear(5, 48), torch.nn.Unflatten(1, (8, 3, 2)), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 1))
    expected = nk.Sequential(nk.Linear(in_channels=5), Unflatten((3, 2)), nk.ReLU(),
                             nk.Conv2d(3, padding="same", in_channels=8), nk.ReLU(), nk.GlobalAvgPool(), nk.Flatten(),
                             nk.Linear(in_channels=4))
    assert nk.infinite(model).describe() == expected.describe()
    X = torch.randn(4, 5, dtype=f64, generator=torch.Generator().manual_seed(0))
    by_hand = nk.Sequential(nk.Linear(W_std=1.3), nk.ReLU(), nk.Linear(W_std=1.0, b_std=0.0))
    unflat = nk.Sequential(nk.Linear(W_std=1.3), Unflatten((3, 2)), nk.ReLU(), nk.Conv2d(1, b_std=0.0),
                           nk.GlobalAvgPool(), nk.Linear(W_std=1.0, b_std=0.0))
    # each position the same Sigma; the average over P^2 pairs keeps the P equal positions' (1 / P) plus the
    # P^2 - P pairs of independent ReLUs, whose Sigma is E relu(u) E relu(v) = sqrt(q_x q_y) / (2 pi)
    q = nk.Sequential(nk.Linear(W_std=1.3)).kernel_diag(X, get="nngp")
    off = torch.sqrt(q[:, None] * q[None, :]) / (2 * torch.pi)
    K, T = by_hand.kernel(X, get=("nngp", "ntk"))
    S_ours, T_ours = unflat.kernel(X, get=("nngp", "ntk"))
    torch.testing.assert_close(S_ours, K / 6 + off * 5 / 6, rtol=1e-12, atol=0)
    # Theta: the ReLU's (T - K) at the 6 equal positions only, then the 1x1 convolution and the Linear each add Sigma
    torch.testing.assert_close(T_ours, (T - K) / 6 + 2 * (K / 6 + off * 5 / 6), rtol=1e-12, atol=0)
    samples, outputs = 40, 16                     # the finite network's outputs: second moments
    net = unflat.network(5, width=[48, 48], seed=0)
    assert net[0].out_features == 6 * 48 and tuple(net[1].unflattened_size) == (48, 3, 2)   # 48 channels per position
    moments = []
    for seed in range(samples):
        with torch.no_grad():
            f = unflat.network(5, width=[48, 48], out_features=outputs, seed=seed, dtype=f64)(X)
        moments.append(f @ f.T / outputs)
    values = torch.stack(moments)
    mean, stderr = values.mean(0), values.std(0) / samples**0.5
    assert bool(((mean - S_ours).abs() <= 5 * stderr + 2.0 / 48 * float(S_ours.abs().max())).all())
    with pytest.raises(nk.layers.LayerError, match=r"Unflatten \(layer 0\) needs the output of a weight layer"):
        nk.Sequential(Unflatten((2, 2)), nk.Conv2d(1), nk.Flatten(), nk.Linear()).kernel(torch.randn(2, 8))
    with pytest.raises(nk.layers.LayerError, match=r"Unflatten \(layer 1\): 7 features do not divide"):
        Unflatten((3, 2)).out_shape((7,), "layer 1")


@pytest.mark.parametrize("make", [lambda **kw: nk.layers.ConvTranspose1d(3, 2, "circular", W_std=1.3, **kw),
                                  lambda **kw: nk.layers.TokenLinear(W_std=1.3, **kw)])
def test_standard_parametrization_of_transposed_and_tokenwise_layers(make):
    """The same functions at initialization and the same NNGP as the NTK parametrization (with and without a bias);
    the NTK needs the fan-in (its values: tests/test_widths_reference.py)."""
    X = torch.randn(3, 2, 5, dtype=f64)
    for bias in (0.2, None):
        ntk = nk.Sequential(make(b_std=bias), nk.ReLU(), nk.Flatten(), nk.Linear())
        std = nk.Sequential(make(b_std=bias, parametrization="standard"), nk.ReLU(), nk.Flatten(), nk.Linear())
        torch.testing.assert_close(std.kernel(X, get="nngp"), ntk.kernel(X, get="nngp"), rtol=1e-14, atol=0)
        torch.testing.assert_close(std.network((2, 5), width=9, seed=1, dtype=f64)(X),
                                   ntk.network((2, 5), width=9, seed=1, dtype=f64)(X), rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="parametrization='standard'"):
            std.kernel(X)
    assert "b_std=None" in make(b_std=None).describe()
