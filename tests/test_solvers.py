"""The large-N solvers against independent references: the dense Cholesky solution, the eigendecomposition path,
dense low-rank residuals, high-precision arithmetic (mpmath) at coincident points, and a subprocess's peak memory."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.solvers import ConvergenceWarning, KernelOperator, cg
from ntkit.solvers.cholesky import cholesky_in_place, solve
from ntkit.solvers.nystrom import CrossOperator, falkon
from ntkit.solvers.preconditioners import rp_cholesky, uniform_nystrom

pytestmark = pytest.mark.usefixtures("one_thread")

ACTIVATIONS = ["relu", "erf", "leaky_relu"]


def problem(n=300, d=6, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    Y = torch.randn(n, k, generator=g, dtype=torch.float64)
    return X, Y


def dense_solution(K, Y, ridge):
    return torch.linalg.solve(K + ridge * torch.eye(K.shape[0], dtype=K.dtype), Y)


def relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("ridge", [1e-3, 1.0])
def test_cg_matches_the_cholesky_solution(activation, ridge):
    X, Y = problem()
    arch = nk.MLP(depth=3, activation=activation)
    K = arch.kernel(X)
    reference = dense_solution(K, Y, ridge)
    sources = (K, arch.kernel_tiles(X, tile=128)) if activation == "relu" else (K,)   # stored, then matrix-free
    for source in sources:
        for preconditioner in ("rpcholesky", "nystrom"):
            result = cg.solve(KernelOperator(source), Y, ridge, preconditioner=preconditioner, rank=60)
            assert result.converged and result.residual <= 1e-10
            assert relative(result.solution, reference) < 1e-6


def test_rpcholesky_preconditioner_cuts_iterations_and_is_no_worse_than_uniform():
    """Clustered data: RPCholesky spreads its pivots over the clusters, a uniform sample wastes some."""
    g = torch.Generator().manual_seed(1)
    centres = 5 * torch.randn(20, 4, generator=g, dtype=torch.float64)
    X = centres[torch.randint(0, 20, (400,), generator=g)] + 0.05 * torch.randn(400, 4, generator=g,
                                                                                 dtype=torch.float64)
    Y = torch.randn(400, 1, generator=g, dtype=torch.float64)
    op = KernelOperator(nk.MLP(depth=3).kernel(X))
    counts = {kind: cg.solve(op, Y, 1e-4, preconditioner=kind, rank=40, max_iter=3000).iterations
              for kind in ("none", "nystrom", "rpcholesky")}
    assert counts["rpcholesky"] < counts["none"] / 2
    assert counts["rpcholesky"] <= counts["nystrom"]


def test_low_rank_residual_trace_is_the_dense_residual():
    X, _ = problem(n=200)
    K = nk.MLP(depth=3).kernel(X)
    op = KernelOperator(K)
    for low in (rp_cholesky(op, 30, generator=torch.Generator().manual_seed(0)),
                uniform_nystrom(op, 30, generator=torch.Generator().manual_seed(0))):
        residual = K - low.F @ low.F.T
        assert low.residual_trace == pytest.approx(float(residual.diagonal().sum()), rel=1e-8)
        assert float(torch.linalg.eigvalsh(residual).min()) > -1e-10     # K - F F^T stays PSD
    # the randomly pivoted approximation is close to the best rank-30 one in trace norm
    best = float(torch.linalg.eigvalsh(K).flip(0)[30:].sum())
    assert rp_cholesky(op, 30, generator=torch.Generator().manual_seed(0)).residual_trace < 3 * best


@pytest.mark.parametrize("ridge", [1e-4, 1e-1])
@pytest.mark.parametrize("centers", ["uniform", "rpcholesky"])
def test_nystrom_with_every_point_a_centre_is_exact(ridge, centers):
    X, Y = problem(n=250)
    y = Y[:, 0]
    arch = nk.MLP(depth=3, activation="erf")
    exact = nk.InfiniteWidthGP(arch, X, y, ridge=ridge)
    nystrom = nk.InfiniteWidthGP(arch, X, y, ridge=ridge, solver="nystrom", n_centers=250, centers=centers)
    Xs = torch.randn(40, 6, dtype=torch.float64)
    assert relative(nystrom.predict(Xs), exact.predict(Xs)) < 1e-6


def test_falkon_streamed_equals_cached():
    X, Y = problem(n=260)
    arch = nk.MLP(depth=2)
    C = X[::4]
    K_mm = arch.kernel(C)
    tiles = arch.kernel_tiles(X, C, tile=64)
    cached = falkon(CrossOperator(tiles, True), K_mm, Y, 1e-3, tol=1e-12, max_iter=200)
    streamed = falkon(CrossOperator(tiles, False), K_mm, Y, 1e-3, tol=1e-12, max_iter=200)
    assert relative(streamed.solution, cached.solution) < 1e-10
    # and it solves the Nystrom normal equations (K_nm^T K_nm + ridge K_mm) alpha = K_nm^T Y
    K_nm = arch.kernel(X, C)
    H = K_nm.T @ K_nm + 1e-3 * K_mm
    assert relative(H @ cached.solution, K_nm.T @ Y) < 1e-8


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_krylov_dynamics_match_the_eigendecomposition(ridge):
    X, Y = problem(n=300)
    Xs = torch.randn(25, 6, dtype=torch.float64)
    arch = nk.MLP(depth=3)
    K, Ks = arch.kernel(X), arch.kernel(Xs, X)
    exact = nk.LeastSquares(K, Y, ridge=ridge)
    krylov = nk.LeastSquares(K if ridge == 0 else arch.kernel_tiles(X), Y, ridge=ridge, solver="cg")
    times = [0.0, 0.3, 10.0, 1e3, 1e5]
    for i, (a, b) in enumerate(zip(krylov.predict(arch.kernel_tiles(Xs, X), times), exact.predict(Ks, times),
                                   strict=True)):
        assert relative(a, b) < 1e-8 or (i == 0 and float(a.abs().max()) == 0.0)
    assert relative(krylov.train_outputs(times)[1:], exact.train_outputs(times)[1:]) < 1e-8
    steps = krylov.predict(Ks, steps=[5, 50], lr=1.0)
    assert relative(steps, exact.predict(Ks, steps=[5, 50], lr=1.0)) < 1e-8


def test_infinite_width_gp_iterative_solvers_give_the_exact_mean():
    X, Y = problem(n=300, k=1)
    y = Y[:, 0]
    Xs = torch.randn(30, 6, dtype=torch.float64)
    arch = nk.MLP(depth=3, activation="erf")
    exact = nk.InfiniteWidthGP(arch, X, y, ridge=1e-3)
    gp = nk.InfiniteWidthGP(arch, X, y, ridge=1e-3, solver="cg")
    for t in (np.inf, 2.0, [1.0, 50.0]):
        assert relative(gp.predict(Xs, t), exact.predict(Xs, t)) < 1e-7
    assert gp.iterations >= 1
    with pytest.raises(ValueError, match="solver='cholesky'"):
        gp.predict(Xs, return_std=True)
    nystrom = nk.InfiniteWidthGP(arch, X, y, ridge=1e-3, solver="nystrom", n_centers=100)
    with pytest.raises(ValueError, match="t = inf only"):
        nystrom.predict(Xs, t=1.0)


def test_lean_exact_path_matches_the_copying_path():
    """The in-place factorization (the architecture's own Gram) equals the factorization of a copy (from_grams), and
    a finite time after t = inf recomputes the overwritten Gram."""
    X, Y = problem(n=200, k=1)
    Xs = torch.randn(20, 6, dtype=torch.float64)
    arch = nk.MLP(depth=3)
    gp = nk.InfiniteWidthGP(arch, X, Y[:, 0], ridge=1e-3)
    grams = nk.InfiniteWidthGP.from_grams(arch.kernel(X), arch.kernel(X, get="nngp"), Y[:, 0], ridge=1e-3)
    Th, Si = arch.kernel(Xs, X), arch.kernel(Xs, X, get="nngp")
    assert relative(gp.predict(Xs), grams.predict_from_grams(Th, Si)) < 1e-12
    assert relative(gp.predict(Xs, t=3.0), grams.predict_from_grams(Th, Si, t=3.0)) < 1e-10
    mean, std = gp.predict(Xs, return_std=True)
    ref_mean, ref_std = grams.predict_from_grams(Th, Si, arch.kernel_diag(Xs, get="nngp"), return_std=True)
    assert relative(std, ref_std) < 1e-8


def test_cholesky_in_place_overwrites_only_the_lower_triangle():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(50, 50, generator=g, dtype=torch.float64)
    K = B @ B.T
    A = K.clone()
    pointer = A.data_ptr()
    assert cholesky_in_place(A, 0.5)
    assert A.data_ptr() == pointer
    L = torch.tril(A)
    assert relative(L @ L.T, K + 0.5 * torch.eye(50, dtype=torch.float64)) < 1e-14
    assert torch.equal(torch.triu(A, 1), torch.triu(K, 1))
    rhs = torch.randn(50, 3, generator=g, dtype=torch.float64)
    assert relative(solve(A, rhs), dense_solution(K, rhs, 0.5)) < 1e-12


def test_peak_memory_of_the_exact_path(tmp_path):
    """fit + predict at t = inf with solver='cholesky' holds one Gram: peak growth <= 1.25 x its bytes + 100 MB
    (the goal allows 1 GB), measured in a fresh process."""
    script = """
import resource, numpy as np, torch
from ntkit.sklearn import NTKRegressor
rng = np.random.default_rng(0)
n = 5000
X = rng.standard_normal((n, 30)); y = rng.standard_normal(n); Xs = rng.standard_normal((100, 30))
torch.ones(4) @ torch.ones(4)
import scipy.linalg  # noqa: F401  (its libraries are part of the baseline)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
NTKRegressor(depth=3, ridge=1e-6, solver="cholesky").fit(X, y).predict(Xs)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(after - before, n * n * 8)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={"NTKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PATH": ""})
    growth, gram_bytes = map(int, done.stdout.split())
    assert growth <= 1.25 * gram_bytes + 100e6, (growth, gram_bytes)


def test_memory_budget_is_checked_before_allocating():
    X, Y = problem(n=400, k=1)
    arch = nk.MLP(depth=2)
    with pytest.raises(MemoryError, match=r"N = 400.*solver='nystrom'"):
        nk.InfiniteWidthGP(arch, X, Y[:, 0], solver="cholesky", memory_budget=1e6)
    gp = nk.InfiniteWidthGP(arch, X, Y[:, 0], ridge=1e-3, solver="auto", memory_budget=1e6, n_centers=50)
    assert gp.solver == "nystrom"
    assert nk.InfiniteWidthGP(arch, X, Y[:, 0], ridge=1e-3, solver="auto").solver == "cholesky"
    cg_gp = nk.InfiniteWidthGP(arch, X, Y[:, 0], ridge=1e-3, solver="cg", memory_budget=1e5)
    assert cg_gp._iterative.matrix_free


def test_bad_input_names_the_argument():
    X, Y = problem(n=60, k=1)
    y = Y[:, 0]
    arch = nk.MLP(depth=2)
    with pytest.raises(ValueError, match="n_centers"):
        nk.InfiniteWidthGP(arch, X, y, solver="nystrom", n_centers=61)
    with pytest.raises(ValueError, match="n_centers"):
        nk.InfiniteWidthGP(arch, X, y, solver="nystrom", n_centers=0)
    with pytest.raises(ValueError, match="tol"):
        nk.InfiniteWidthGP(arch, X, y, solver="cg", tol=-1e-3)
    with pytest.raises(ValueError, match="max_iter"):
        nk.InfiniteWidthGP(arch, X, y, solver="cg", max_iter=0)
    with pytest.raises(ValueError, match="solver"):
        nk.InfiniteWidthGP(arch, X, y, solver="lu")
    with pytest.raises(ValueError, match="centers"):
        nk.InfiniteWidthGP(arch, X, y, solver="nystrom", n_centers=10, centers="kmeans")
    duplicated = torch.cat([X, X[:5]])
    gp = nk.InfiniteWidthGP(arch, duplicated, torch.cat([y, y[:5]]), solver="cg")
    with pytest.raises(ValueError, match="ridge"):
        gp.predict(X[:3])


def test_non_convergence_warns_with_iterations_and_residual():
    X, Y = problem(n=200, k=1)
    op = KernelOperator(nk.MLP(depth=3).kernel(X))
    with pytest.warns(ConvergenceWarning, match=r"after 2 iterations \(max_iter = 2\) with relative residual"):
        result = cg.solve(op, Y, 1e-6, max_iter=2, preconditioner="none")
    assert not result.converged and result.iterations == 2


def test_estimators_take_the_solver_options():
    from ntkit.sklearn import NTKClassifier, NTKRegressor

    X, Y = problem(n=200, k=1)
    Xn, yn = X.numpy(), Y[:, 0].numpy()
    exact = NTKRegressor(depth=3, ridge=1e-3).fit(Xn, yn)
    assert exact.solver_ == "cholesky" and exact.n_iter_ == 1
    for solver, extra in (("cg", {}), ("nystrom", {"n_centers": 200})):
        est = NTKRegressor(depth=3, ridge=1e-3, solver=solver, **extra).fit(Xn, yn)
        assert est.solver_ == solver and est.n_iter_ >= 1
        assert relative(torch.as_tensor(est.predict(Xn[:20])), torch.as_tensor(exact.predict(Xn[:20]))) < 1e-6
    labels = (yn > 0).astype(int)
    a = NTKClassifier(depth=2, ridge=1e-3, solver="cg").fit(Xn, labels).decision_function(Xn[:30])
    b = NTKClassifier(depth=2, ridge=1e-3).fit(Xn, labels).decision_function(Xn[:30])
    assert np.allclose(a, b, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- coincident points
def mp_relu_ntk(x, y, depth, w_std=1.0, b_std=0.1, digits=50):
    """Theta^(L)(x, y) of a ReLU MLP in mpmath at `digits` digits: the paper's recursion with arccos."""
    import mpmath

    mpmath.mp.dps = digits
    x = [mpmath.mpf(float(v)) for v in x]
    y = [mpmath.mpf(float(v)) for v in y]
    w2, b2, n0 = mpmath.mpf(w_std) ** 2, mpmath.mpf(b_std) ** 2, len(x)
    c = w2 * mpmath.fsum(a * b for a, b in zip(x, y, strict=True)) / n0 + b2
    q1 = w2 * mpmath.fsum(a * a for a in x) / n0 + b2
    q2 = w2 * mpmath.fsum(b * b for b in y) / n0 + b2
    theta = c
    for _ in range(depth - 1):
        rho = c / mpmath.sqrt(q1 * q2)
        ang = mpmath.acos(min(rho, mpmath.mpf(1)))
        dot = (mpmath.pi - ang) / (2 * mpmath.pi)
        c = w2 * mpmath.sqrt(q1 * q2) * (mpmath.sin(ang) + (mpmath.pi - ang) * mpmath.cos(ang)) / (2 * mpmath.pi) + b2
        q1, q2 = w2 * q1 / 2 + b2, w2 * q2 / 2 + b2
        theta = theta * w2 * dot + c
    return float(theta)


@pytest.mark.parametrize("dtype, before_at_least, after_at_most", [(torch.float32, 3e-5, 2e-6),
                                                                    (torch.float64, 1e-10, 1e-14)])
def test_cross_kernel_at_coincident_and_near_points_is_accurate(dtype, before_at_least, after_at_most):
    """A cross kernel K(X, Y) with rows of Y equal or within 1e-6 of rows of X (Nystrom centres among the training
    points): against 50-digit arithmetic, the plain formulas lose sqrt(eps) (before), the carried determinant
    does not (after)."""
    from ntkit.kernels import piecewise_linear_layers, sigma1, sigma_diagonals

    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 5, generator=g, dtype=torch.float64)
    Y = X.clone()
    Y[6:] += 1e-6 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    arch = nk.MLP(depth=4)
    reference = torch.tensor([mp_relu_ntk(X[i], Y[i], 4) for i in range(12)], dtype=torch.float64)
    Xd, Yd = X.to(dtype), Y.to(dtype)
    after = arch.kernel(Xd, Yd).diagonal().double()
    # before: the same recursion on the same tile, without the near-pair recomputation
    rec = arch.recursion
    qx, qy = sigma_diagonals(Xd, rec), sigma_diagonals(Yd, rec)
    roots = [(q1.rsqrt(), q2.rsqrt(), q1.sqrt(), q2.sqrt()) for q1, q2 in zip(qx[:-1], qy[:-1], strict=True)]
    s = sigma1(Xd, Yd, rec)
    _, before = piecewise_linear_layers(s, s.clone(), roots, 0.0, 1.0, 0.01)
    before = before.diagonal().double()
    error_before = float(((before - reference).abs() / reference).max())
    error_after = float(((after - reference).abs() / reference).max())
    assert error_before >= before_at_least
    assert error_after <= after_at_most, (error_before, error_after)


@pytest.mark.parametrize("ridge", [0.0, 1e-12])
def test_full_rank_preconditioner_with_tiny_ridge_converges(ridge):
    """A preconditioner that captures all of K (rank = N) with a shift near 0 once made the Woodbury form cancel
    catastrophically and CG diverge; the shift's floor keeps it accurate."""
    X, Y = problem(n=200, k=1)
    K = nk.MLP(depth=4).kernel(X)
    result = cg.solve(KernelOperator(K), Y, ridge, rank=200)
    assert result.converged and result.iterations < 10
    assert relative(result.solution, dense_solution(K, Y, ridge)) < 1e-8


@pytest.mark.parametrize("centers", ["uniform", "rpcholesky"])
def test_nystrom_with_a_rank_deficient_centres_gram_is_exact(centers):
    """1-D inputs without bias: the ReLU kernel has rank 2, so K(C, C) is singular; Nystrom then works in the range
    of K(C, C), which loses nothing, and with every point a centre equals exact kernel ridge regression."""
    X = np.array([[0.12573022], [-0.13210486], [0.64042265], [0.10490012], [-0.53566937], [0.36159505]])
    y = np.arange(6.0)
    arch = nk.MLP(depth=2, b_std=0.0)
    exact = nk.InfiniteWidthGP(arch, X, y, ridge=1.0).predict(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nystrom = nk.InfiniteWidthGP(arch, X, y, ridge=1.0, solver="nystrom", n_centers=6, centers=centers).predict(X)
    assert np.abs(nystrom - exact).max() < 1e-7 * np.abs(exact).max()
