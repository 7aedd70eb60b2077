"""The empirical NTK as `gram.KernelTiles`: Grams assembled from tiles equal the direct call, stored (zarr) and
Dask Grams are bitwise the in-process ones, a store of another model is refused, CG on the empirical Gram equals
a dense solve, and the NTK of a function of the parameters (a physics-informed network's residual)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ntkit import empirical as E
from ntkit import gram
from ntkit.solvers import cg
from ntkit.solvers.operator import KernelOperator
from test_empirical import assert_close, inputs, residual_net

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def small_cnn():
    torch.manual_seed(11)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 3 * 3, 2)).to(DT)


@pytest.mark.parametrize("mode", ["trace", "full"])
@pytest.mark.parametrize("cross", [False, True])
def test_gram_from_tiles_equals_the_direct_call(mode, cross):
    model = residual_net()
    X, Y = inputs((2, 5, 5), 7, 0), inputs((2, 5, 5), 5, 1)
    direct = E.empirical_ntk(model, X, Y if cross else None, mode=mode)
    if mode == "full":
        direct = direct.permute(0, 2, 1, 3).reshape(direct.shape[0] * 2, direct.shape[1] * 2)
    tiles = E.empirical_kernel_tiles(model, X, Y if cross else None, mode=mode, tile=3)
    assert tiles.shape == tuple(direct.shape) and tiles.symmetric is not cross
    (K,) = gram.evaluate(tiles)
    assert_close(K, direct, 1e-12)
    if not cross:
        assert torch.equal(K, K.T)
        assert_close(tiles.diag(torch.tensor([4, 0, 1]))[0], direct.diagonal()[[4, 0, 1]], 1e-12)
    index = torch.tensor([3, 0, 3])  # index tensors, repeats
    assert_close(tiles(index, slice(1, 4))[0], direct[index][:, 1:4], 1e-12)


def test_a_store_is_bitwise_and_refuses_another_models_store(tmp_path):
    pytest.importorskip("zarr")
    model, X = small_cnn(), inputs((1, 6, 6), 9, 0)
    tiles = E.empirical_kernel_tiles(model, X, tile=4)
    (K,) = gram.evaluate(tiles)
    (stored,) = gram.evaluate(tiles, str(tmp_path / "K.zarr"))
    assert torch.equal(torch.from_numpy(stored[:]), K)
    (again,) = gram.evaluate(E.empirical_kernel_tiles(model, X, tile=4), str(tmp_path / "K.zarr"))  # resumed
    assert torch.equal(torch.from_numpy(again[:]), K)
    with torch.no_grad():
        model[0].weight.add_(0.01)  # a step of training: another kernel
    with pytest.raises(ValueError, match="fingerprint|different|another"):
        gram.evaluate(E.empirical_kernel_tiles(model, X, tile=4), str(tmp_path / "K.zarr"))


def test_cg_on_the_empirical_gram_equals_a_dense_solve():
    model, X = small_cnn(), inputs((1, 6, 6), 30, 2)
    tiles = E.empirical_kernel_tiles(model, X, tile=8)
    (K,) = gram.evaluate(tiles)
    B = torch.randn(30, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    ridge = 1e-2 * float(K.diagonal().mean())
    dense = torch.linalg.solve(K + ridge * torch.eye(30, dtype=DT), B)
    result = cg.solve(KernelOperator(K), B, ridge, tol=1e-12, rank=5)  # matrix-free on tiles: the next test
    # CG stops at a relative residual of 1e-12: the error is at most cond(K + ridge I) times that
    cond = float(torch.linalg.cond(K + ridge * torch.eye(30, dtype=DT)))
    assert float((result.solution - dense).norm() / dense.norm()) <= 10 * cond * 1e-12


@pytest.mark.slow  # starts its own two-worker cluster (about 20 s here)
def test_dask_gram_is_bitwise_the_in_process_gram():
    distributed = pytest.importorskip("distributed")
    cloudpickle = pytest.importorskip("cloudpickle")
    from ntkit.gram.distributed import local_cluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    model, X = small_cnn(), inputs((1, 6, 6), 10, 3)
    tiles = E.empirical_kernel_tiles(model, X, tile=4)
    (K,) = gram.evaluate(tiles)
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        (on_workers,) = gram.evaluate(tiles, client=client)
    assert torch.equal(torch.as_tensor(on_workers), K)


# ------------------------------------------------------------------- functions of the parameters
def test_pinn_blocks_of_a_function_of_the_parameters():
    """u(x) = net(x) on [0, 1], r(x) = u''(x) - g(x): K_uu, K_ur, K_rr (Wang, Yu and Perdikaris 2022) against
    explicit Jacobians of u and r with respect to every parameter."""
    torch.manual_seed(12)
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)).to(DT)
    params = {n: p.detach() for n, p in net.named_parameters()}

    def u(p, X):  # (B, 1) -> (B,)
        return functional_call(net, p, (X,)).reshape(-1)

    def r(p, X):  # u'' - g with g = sin(pi x), u'' by torch.func in x
        def scalar(x):
            return functional_call(net, p, (x.reshape(1, 1),)).reshape(())
        second = vmap(grad(grad(scalar)))(X.reshape(-1))
        return second - torch.sin(torch.pi * X.reshape(-1))

    x_u = torch.tensor([[0.0], [1.0]], dtype=DT)
    x_r = torch.linspace(0, 1, 5, dtype=DT).reshape(-1, 1)

    def jac(f, X):
        rows = []
        for x in X:
            values = {n: v.clone().requires_grad_(True) for n, v in params.items()}
            out = f(values, x.reshape(1, 1))
            grads = torch.autograd.grad(out.sum(), list(values.values()), allow_unused=True)  # u'' has no last bias
            rows.append(torch.cat([(torch.zeros_like(v) if g is None else g).reshape(-1)
                                   for g, v in zip(grads, values.values(), strict=True)]))
        return torch.stack(rows)

    Ju, Jr = jac(u, x_u), jac(r, x_r)
    K_uu = E.empirical_ntk(u, x_u, params=params, mode="trace")
    K_rr = E.empirical_ntk(r, x_r, params=params, mode="trace")
    assert_close(K_uu, Ju @ Ju.T, 1e-12)
    assert_close(K_rr, Jr @ Jr.T, 1e-12)

    def both(p, X):  # one function, both blocks: K_ur is its off-diagonal output block
        return torch.stack([u(p, X), r(p, X)], dim=1)

    full = E.empirical_ntk(both, x_u, x_r, params=params, mode="full")
    assert_close(full[:, :, 0, 1], Ju @ Jr.T, 1e-12)
    for method in ("jacobian", "ntk_vp"):
        assert_close(E.empirical_ntk(r, x_r, params=params, mode="trace", method=method), Jr @ Jr.T, 1e-12)


def test_function_of_the_parameters_must_return_a_tensor():
    params = {"w": torch.ones(3, dtype=DT)}
    with pytest.raises(TypeError, match="function of the parameters must return one tensor"):
        E.empirical_ntk(lambda p, X: (X @ p["w"]).tolist(), torch.ones(2, 3, dtype=DT), params=params)
    with pytest.raises(TypeError, match="params="):
        E.empirical_ntk(lambda p, X: X @ p["w"], torch.ones(2, 3, dtype=DT))


def test_module_checks_for_the_tiles():
    with pytest.raises(ValueError, match="mode must be one of"):
        E.empirical_kernel_tiles(nn.Linear(2, 1), torch.randn(3, 2), mode="diagonal")


def test_least_squares_dynamics_on_empirical_tiles_match_the_dense_gram():
    """Kernel gradient descent with a finite net's NTK, matrix-free on its tiles (CG at t = inf, Lanczos at finite
    t) against the eigendecomposition of the dense Gram."""
    from ntkit.dynamics import LeastSquares

    model, X, Xs = small_cnn(), inputs((1, 6, 6), 24, 4), inputs((1, 6, 6), 5, 5)
    tiles = E.empirical_kernel_tiles(model, X, tile=8)
    (K,) = gram.evaluate(tiles)
    (K_cross,) = gram.evaluate(E.empirical_kernel_tiles(model, Xs, X, tile=8))
    y = torch.randn(24, dtype=DT, generator=torch.Generator().manual_seed(1))
    ridge = 1e-2 * float(K.diagonal().mean())
    exact = LeastSquares(K, y, ridge=ridge)
    matrix_free = LeastSquares(tiles, y, ridge=ridge, solver="cg", tol=1e-12)
    # residual 1e-12 times cond(K + ridge I) <= 1 + N / 0.01 = 2401: a few 1e-9; 1e-7 leaves room for Lanczos
    for t in (float("inf"), 3.0):
        reference = exact.predict(K_cross, t)
        assert_close(matrix_free.predict(K_cross, t), reference, 1e-7)


def regression_problem(n: int, m: int, seed: int) -> tuple:
    """(model, X (n, 1, 6, 6), Xs (m, ...), X and Xs flattened, targets y (n,), K = Theta(X, X), Theta(Xs, X) in
    trace mode, a ridge of 1e-2 times K's mean diagonal) for the kernel-regression tests."""
    model, X, Xs = small_cnn(), inputs((1, 6, 6), n, seed), inputs((1, 6, 6), m, seed + 1)
    y = torch.randn(n, dtype=DT, generator=torch.Generator().manual_seed(seed))
    K = E.empirical_ntk(model, X, mode="trace")
    K_cross = E.empirical_ntk(model, Xs, X, mode="trace")
    return model, X, Xs, X.reshape(n, -1), Xs.reshape(m, -1), y, K, K_cross, 1e-2 * float(K.diagonal().mean())


def test_infinite_width_gp_mean_with_a_finite_models_kernel():
    """`EmpiricalKernel` gives `InfiniteWidthGP` (unchanged) a trained model's NTK: its mean at t = inf and at a
    finite t, by Cholesky and by matrix-free CG, equals least squares on the dense empirical Gram; a standard
    deviation (which needs an NNGP) is refused."""
    from ntkit.dynamics import InfiniteWidthGP, LeastSquares

    model, X, Xs, flat, flat_s, y, K, K_cross, ridge = regression_problem(20, 4, 6)
    reference = LeastSquares(K, y, ridge=ridge)
    kernel = E.EmpiricalKernel(model, in_shape=(1, 6, 6))
    exact = InfiniteWidthGP(kernel, flat, y, ridge=ridge)
    for t in (float("inf"), 2.0):
        assert_close(exact.predict(flat_s, t), reference.predict(K_cross, t), 1e-9)
    iterative = InfiniteWidthGP(kernel, flat, y, ridge=ridge, solver="cg", tol=1e-12)
    assert_close(iterative.predict(flat_s), reference.predict(K_cross, float("inf")), 1e-7)  # 1e-12 x cond <= 2001
    assert_close(kernel.kernel_diag(flat), K.diagonal(), 1e-12)
    with pytest.raises(ValueError, match="NTK only"):
        exact.predict(flat_s, return_std=True)


# ------------------------------------------------------------------- memmaps, products, Nystrom
@pytest.mark.parametrize("mode,cross", [("trace", False), ("full", True)])
def test_a_memmap_gram_is_bitwise_the_in_memory_gram(tmp_path, mode, cross):
    model, X, Y = small_cnn(), inputs((1, 6, 6), 9, 0), inputs((1, 6, 6), 5, 1)
    tiles = E.empirical_kernel_tiles(model, X, Y if cross else None, mode=mode, tile=4)
    (K,) = gram.evaluate(tiles)
    path = tmp_path / "K.dat"
    out = np.memmap(path, dtype=np.float64, mode="w+", shape=tiles.shape)
    (filled,) = gram.evaluate(tiles, out)
    assert filled is out
    out.flush()
    del out, filled
    assert np.array_equal(np.memmap(path, dtype=np.float64, mode="r", shape=tiles.shape), K.numpy())


@pytest.mark.parametrize("mode,cross", [("trace", False), ("trace", True), ("full", False)])
def test_matmul_on_empirical_tiles_is_the_dense_product(mode, cross):
    """gram.matmul sums K_ij V_j tile by tile (a symmetric kernel uses each off-diagonal tile twice): the same m
    products per entry as K @ V in another order, so each differs from the exact product by at most
    gamma_m (|K| |V|), gamma_m = m u / (1 - m u) (Higham, Accuracy and Stability, 3.5): together 2 gamma_m."""
    model, X, Y = small_cnn(), inputs((1, 6, 6), 11, 2), inputs((1, 6, 6), 6, 3)
    tiles = E.empirical_kernel_tiles(model, X, Y if cross else None, mode=mode, tile=4)
    (K,) = gram.evaluate(tiles)  # the same tiles, so the same entries (tested against empirical_ntk above)
    V = torch.randn(tiles.m, 3, dtype=DT, generator=torch.Generator().manual_seed(4))
    product = gram.matmul(tiles, V)
    m, u = tiles.m, torch.finfo(DT).eps / 2
    bound = 2 * (m * u / (1 - m * u)) * (K.abs() @ V.abs())
    assert product.shape == (tiles.n, 3)
    assert bool(((product - K @ V).abs() <= bound).all())


def test_nystrom_on_empirical_tiles():
    """InfiniteWidthGP(solver="nystrom") on a finite model's NTK: with every point a centre it is kernel ridge
    regression (the Cholesky prediction); with fewer centres it is kernel ridge regression with the Nystrom kernel
    K~ = K_nm K_mm^-1 K_mn of the same centres, f(x) = K~(x, X) (K~ + ridge I)^-1 y, computed here densely."""
    from ntkit.dynamics import InfiniteWidthGP

    model, X, Xs, flat, flat_s, y, K, K_s, ridge = regression_problem(24, 5, 8)
    eye = torch.eye(24, dtype=DT)
    kernel = E.EmpiricalKernel(model, in_shape=(1, 6, 6))
    exact = InfiniteWidthGP(kernel, flat, y, ridge=ridge).predict(flat_s)
    assert_close(exact, K_s @ torch.linalg.solve(K + ridge * eye, y), 1e-10)
    # Falkon's CG stops at a relative residual of 1e-12 of its preconditioned system (condition number about 1
    # with every point a centre); the answer then moves by at most cond(K + ridge I) times that: cond <= 1 + N / 0.01
    cond = float(torch.linalg.cond(K + ridge * eye))
    everywhere = InfiniteWidthGP(kernel, flat, y, ridge=ridge, solver="nystrom", n_centers=24, tol=1e-12)
    assert_close(everywhere.predict(flat_s), exact, 10 * cond * 1e-12)
    fewer = InfiniteWidthGP(kernel, flat, y, ridge=ridge, solver="nystrom", n_centers=10, tol=1e-12)
    index = fewer._iterative.index  # the centres it drew
    assert index.shape == (10,) and len(set(index.tolist())) == 10
    K_nm, K_mm, K_sm = K[:, index], K[index][:, index], K_s[:, index]
    K_tilde = K_nm @ torch.linalg.solve(K_mm, K_nm.T)
    K_tilde_s = K_sm @ torch.linalg.solve(K_mm, K_nm.T)
    reference = K_tilde_s @ torch.linalg.solve(K_tilde + ridge * eye, y)
    # the CG's residual 1e-12 amplified by cond(K~ + ridge I), plus the reference's own rounding through K_mm^-1
    cond_tilde = float(torch.linalg.cond(K_tilde + ridge * eye))
    eps = torch.finfo(DT).eps
    assert_close(fewer.predict(flat_s), reference, cond_tilde * (10 * 1e-12 + float(torch.linalg.cond(K_mm)) * eps))
    assert float((reference - exact).norm()) > 1e-3 * float(exact.norm())  # fewer centres: another predictor
