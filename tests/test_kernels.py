"""The analytic kernels Sigma^(L) and Theta^(L): known values, structure, numerics, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit as nk


def circle(angles) -> np.ndarray:
    angles = np.asarray(angles, dtype=np.float64)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def reference_kernels(X: np.ndarray, Y: np.ndarray, depth: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """The paper's ReLU recursion written directly with arccos (NOTES.md), element by element."""
    def sig(a, b):
        return a @ b / len(a) + beta**2

    S = np.empty((len(X), len(Y)))
    T = np.empty_like(S)
    for i, x in enumerate(X):
        for j, y in enumerate(Y):
            qx, qy, c = sig(x, x), sig(y, y), sig(x, y)
            theta = c
            for _ in range(depth - 1):
                ang = math.acos(max(-1.0, min(1.0, c / math.sqrt(qx * qy))))
                dot = (math.pi - ang) / (2 * math.pi)
                c = math.sqrt(qx * qy) * (math.sin(ang) + (math.pi - ang) * math.cos(ang)) / (2 * math.pi) + beta**2
                qx, qy = qx / 2 + beta**2, qy / 2 + beta**2
                theta = theta * dot + c
            S[i, j], T[i, j] = c, theta
    return S, T


def test_known_values_from_the_paper():
    """Theta^(4)((1,0),(1,0)) = 0.2825, 0.0644 at the antipode, Sigma^(4) = 0.0813 (NOTES.md)."""
    arch = nk.MLP(depth=4, activation="relu", beta=0.1)
    X = circle([0.0, math.pi])
    S, T = arch.kernel(X[:1], X, get=("nngp", "ntk"))
    assert T[0, 0] == pytest.approx(0.2825, abs=5e-5)
    assert T[0, 1] == pytest.approx(0.0644, abs=5e-5)
    assert S[0, 0] == pytest.approx(0.0813, abs=1e-4)
    # on the diagonal, Sigma^(l+1) = Sigma^(l) / 2 + beta^2 from Sigma^(1) = 1/2 + beta^2: 0.08125
    assert S[0, 0] == pytest.approx(0.08125, rel=1e-12)


def test_matches_direct_arccos_recursion(rng):
    X, Y = rng.standard_normal((7, 5)), rng.standard_normal((4, 5))
    arch = nk.MLP(depth=3, beta=0.3)
    S_ref, T_ref = reference_kernels(X, Y, 3, 0.3)
    S, T = arch.kernel(X, Y, get=("nngp", "ntk"))
    np.testing.assert_allclose(S, S_ref, rtol=1e-12)
    np.testing.assert_allclose(T, T_ref, rtol=1e-12)


def test_depth_one_is_the_linear_kernel(rng):
    X = rng.standard_normal((6, 3))
    K = nk.MLP(depth=1, beta=0.5, W_std=2.0).kernel(X)
    np.testing.assert_allclose(K, 4.0 * X @ X.T / 3 + 0.25, rtol=1e-13)


@pytest.mark.parametrize("activation", ["relu", "erf", "gelu", "tanh", "abs"])
def test_symmetric_and_positive_semidefinite(activation, rng):
    X = rng.standard_normal((40, 6))
    for get in ("nngp", "ntk"):
        K = nk.MLP(depth=3, activation=activation).kernel(X, get=get)
        np.testing.assert_allclose(K, K.T, atol=1e-14)
        assert np.linalg.eigvalsh(K).min() > -1e-10 * np.abs(K).max()


def test_cross_kernel_is_the_transpose_and_diagonal_agrees(rng):
    X, Y = rng.standard_normal((9, 4)), rng.standard_normal((5, 4))
    arch = nk.MLP(depth=4, activation="gelu")
    np.testing.assert_allclose(arch.kernel(X, Y), arch.kernel(Y, X).T, rtol=1e-13)
    full = arch.kernel(X, get=("nngp", "ntk"))
    diag = arch.kernel_diag(X, get=("nngp", "ntk"))
    for K, d in zip(full, diag, strict=True):
        np.testing.assert_allclose(np.diag(K), d, rtol=1e-12)


@pytest.mark.parametrize("activation", ["erf", "gelu", "sin"])
def test_closed_forms_agree_with_quadrature_through_the_network(activation, rng):
    X = 0.5 * rng.standard_normal((8, 3))  # pre-activation variances below 1: quadrature is exact there
    closed = nk.MLP(depth=3, activation=activation)
    quad = nk.MLP(depth=3, activation=closed.activation.__call__, quadrature_degree=64)
    np.testing.assert_allclose(quad.kernel(X), closed.kernel(X), rtol=1e-9)


def test_float32_agrees_with_float64(rng):
    X = rng.standard_normal((300, 50))
    arch = nk.MLP(depth=4)
    K64 = arch.kernel(torch.from_numpy(X))
    K32 = arch.kernel(torch.from_numpy(X).float())
    assert K32.dtype == torch.float32 and K64.dtype == torch.float64
    assert (K32.double() - K64).abs().max() / K64.abs().max() < 1e-5


def test_tiling_out_and_memmap_give_the_same_answer(rng, tmp_path):
    X, Y = rng.standard_normal((37, 5)), rng.standard_normal((23, 5))
    arch = nk.MLP(depth=3)
    whole = arch.kernel(X, tile=1000)
    np.testing.assert_allclose(arch.kernel(X, tile=7), whole, rtol=1e-14)
    np.testing.assert_allclose(arch.kernel(X, Y, tile=5), arch.kernel(X, Y, tile=100), rtol=1e-14)
    mm = np.lib.format.open_memmap(tmp_path / "k.npy", mode="w+", dtype=np.float64, shape=(37, 37))
    assert arch.kernel(X, out=mm, tile=8) is mm
    np.testing.assert_allclose(np.load(tmp_path / "k.npy"), whole, rtol=1e-14)
    S_out, T_out = torch.empty(37, 23, dtype=torch.float64), torch.empty(37, 23, dtype=torch.float64)
    arch.kernel(torch.from_numpy(X), torch.from_numpy(Y), get=("nngp", "ntk"), out=(S_out, T_out), tile=10)
    np.testing.assert_allclose(T_out.numpy(), arch.kernel(X, Y), rtol=1e-14)


def test_numpy_in_numpy_out_and_torch_in_torch_out(rng):
    X = rng.standard_normal((4, 3))
    arch = nk.MLP(depth=2)
    assert isinstance(arch.kernel(X), np.ndarray)
    assert isinstance(arch.kernel(torch.from_numpy(X)), torch.Tensor)
    assert isinstance(arch.kernel(X.tolist()), np.ndarray)


@pytest.mark.parametrize("activation", ["relu", "erf", "sign", "gelu", "tanh", "leaky_relu"])
def test_no_nan_for_identical_zero_and_collinear_points(activation):
    X = np.array([[0.0, 0.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0 + 1e-9], [-1.0, -2.0]])
    for beta in (0.0, 0.1):
        for dtype in (torch.float32, torch.float64):
            arch = nk.MLP(depth=4, activation=activation, beta=beta)
            S, T = arch.kernel(torch.tensor(X, dtype=dtype), get=("nngp", "ntk"))
            assert torch.isfinite(S).all() and torch.isfinite(T).all()


def test_gradients_are_finite_and_correct():
    X = torch.tensor([[0.0, 0.0], [1.0, 2.0], [1.0, 2.0], [0.3, -0.5]], dtype=torch.float64, requires_grad=True)
    W_std = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    b_std = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    for activation in ("relu", "erf", "tanh"):
        arch = nk.MLP(depth=3, activation=activation, W_std=W_std, b_std=b_std)
        K = arch.kernel(X)
        grads = torch.autograd.grad(K.sum(), (X, W_std, b_std))
        assert all(torch.isfinite(g).all() for g in grads)
    # away from the kinks, the gradient matches finite differences
    Xs = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return nk.MLP(depth=3, W_std=w, b_std=b).kernel(x)

    assert torch.autograd.gradcheck(f, (Xs, W_std, b_std))


@pytest.mark.parametrize("activation", ["erf", "gelu", "sin"])
def test_grad_at_identical_points_is_the_limit_for_smooth_kernels(activation):
    """For smooth nonlinearities the kernel is smooth at x = y: the gradient there is the limit.
    (ReLU kernels have a cone at x = y, so only finiteness is asked of them.)"""
    x = torch.tensor([[0.6, 0.8]], dtype=torch.float64, requires_grad=True)
    arch = nk.MLP(depth=3, activation=activation, beta=0.1)
    (g_same,) = torch.autograd.grad(arch.kernel(x, x.detach()).sum(), x)
    y = torch.tensor([[0.6, 0.8 + 1e-7]], dtype=torch.float64)
    (g_near,) = torch.autograd.grad(arch.kernel(x, y).sum(), x)
    torch.testing.assert_close(g_same, g_near, atol=1e-6, rtol=1e-5)


def test_standard_parametrization_shares_the_nngp_and_refuses_the_ntk(rng):
    X = rng.standard_normal((5, 3))
    np.testing.assert_allclose(nk.MLP(3, parametrization="standard").kernel(X, get="nngp"),
                               nk.MLP(3).kernel(X, get="nngp"))
    with pytest.raises(ValueError, match="standard"):
        nk.MLP(3, parametrization="standard").kernel(X)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: nk.MLP(0), ValueError, "depth"),
        (lambda: nk.MLP(2.5), TypeError, "depth"),
        (lambda: nk.MLP(2, beta=-0.1), ValueError, "beta"),
        (lambda: nk.MLP(2, W_std=float("nan")), ValueError, "W_std"),
        (lambda: nk.MLP(2, activation="nope"), ValueError, "activation"),
        (lambda: nk.MLP(2, parametrization="mup"), ValueError, "parametrization"),
        (lambda: nk.MLP(2).kernel(np.array([[np.nan, 1.0]])), ValueError, "X"),
        (lambda: nk.MLP(2).kernel(np.ones((2, 2)), np.array([[np.inf, 1.0]])), ValueError, "Y"),
        (lambda: nk.MLP(2).kernel(np.ones((2, 3, 4))), ValueError, "X"),
        (lambda: nk.MLP(2).kernel(np.ones((2, 3)), np.ones((2, 4))), ValueError, "features"),
        (lambda: nk.MLP(2).kernel(np.ones((2, 3)), get="ntkk"), ValueError, "get"),
        (lambda: nk.MLP(2).kernel(np.ones((2, 3)), get=()), TypeError, "get"),
        (lambda: nk.MLP(2).kernel(np.ones((2, 3)), out=np.empty((3, 3))), ValueError, "out"),
        (lambda: nk.MLP(2).kernel("abc"), TypeError, "X"),
        (lambda: nk.MLP(2).kernel(np.ones((2, 3)), tile=0), ValueError, "tile"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.slow
def test_compiled_relu_path_matches_the_eager_one(rng):
    """torch.compile fuses the ReLU-family recursion; it computes the same numbers (compiles ~30 s)."""
    X = torch.from_numpy(rng.standard_normal((300, 10)))
    for activation in ("relu", "abs"):
        arch = nk.MLP(depth=4, activation=activation, W_std=1.3)
        torch.testing.assert_close(arch.kernel(X, compile=True, tile=128), arch.kernel(X), rtol=1e-10, atol=1e-12)
    mixed = nk.Sequential(nk.Linear(1.5, 0.0), nk.ReLU(), nk.Linear(0.9, 0.3), nk.LeakyReLU(0.2), nk.Linear(),
                          nk.Abs(), nk.Linear(1.2))     # each layer its own settings: one map per layer
    torch.testing.assert_close(mixed.kernel(X, compile=True, tile=128), mixed.kernel(X), rtol=1e-10, atol=1e-12)


def test_peak_memory_stays_near_the_output_size():
    """Measured in a fresh process: the Gram's tiles add little beyond the (N, N) output itself."""
    import subprocess
    import sys

    script = """
import resource, numpy as np, torch, ntkit as nk
X = torch.randn(3000, 784, dtype=torch.float64)
arch = nk.MLP(depth=4)
arch.kernel(X[:600])                       # warm up allocators and thread pools
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
K = arch.kernel(X)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024 / K.numel() / K.element_size())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth_in_outputs = float(done.stdout.strip())
    assert growth_in_outputs < 1.5  # one output (72 MB) plus tiles; a full-size temporary would make it >= 2
