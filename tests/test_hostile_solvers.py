"""Hostile cases against the solvers and the input checks: targets far from 1, duplicated points with conflicting
targets, tiny memory budgets, options refused alike by every solver, inputs that are not dense real arrays."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.dynamics import large_n

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = nk.MLP(3, activation="erf")
X = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
Y = torch.sin(X[:, 0])
#: the accuracy each solver promises for the mean, relative to its size: Cholesky to rounding, the iterative
#: solvers to their tolerance (1e-10 in float64, 1e-5 in float32) times the conditioning of K + ridge I
ACCURACY = {torch.float64: {"cholesky": 1e-12, "cg": 1e-7, "nystrom": 1e-7},
            torch.float32: {"cholesky": 1e-3, "cg": 1e-3, "nystrom": 1e-2}}


@pytest.mark.parametrize("solver", ["cholesky", "cg", "nystrom"])
@pytest.mark.parametrize(("dtype", "scales"), [(torch.float64, (1e-170, 1e160)), (torch.float32, (1e-25, 1e20))])
def test_targets_far_from_one_give_the_scaled_answer_without_warnings(solver, dtype, scales):
    options = {"n_centers": 40} if solver == "nystrom" else {}

    def mean(y):
        gp = nk.InfiniteWidthGP(ARCH, X.to(dtype), y.to(dtype), dtype=dtype, solver=solver, ridge=1e-3, **options)
        return gp.predict(X[:6].to(dtype))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        base = mean(Y)
        for scale in scales:
            scaled = mean(Y.double() * scale)
            assert torch.isfinite(scaled).all() and scaled.abs().max() > 0
            error = float(((scaled.double() / scale) - base.double()).abs().max() / base.double().abs().max())
            assert error < ACCURACY[dtype][solver], (scale, error)


def test_cg_reports_a_non_finite_kernel_instead_of_stopping_quietly():
    from ntkit.solvers import cg
    from ntkit.solvers.operator import KernelOperator

    K = ARCH.kernel(X)
    K[3, 5] = K[5, 3] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite residual"):
        cg.conjugate_gradient(KernelOperator(K).matmul, Y[:, None], tol=1e-10, max_iter=50)


def test_a_point_repeated_with_other_targets_is_refused_by_every_solver_at_ridge_zero():
    Xd = torch.cat([X, X[:1]])
    yd = torch.cat([Y, Y[:1] + 1.0])
    with pytest.raises(ValueError, match="rows 0 and 40 are the same point with different targets"):
        nk.InfiniteWidthGP(ARCH, Xd, yd, solver="nystrom", n_centers=41)
    for solver in ("cholesky", "cg"):  # built (finite times are defined), refused at t = inf
        gp = nk.InfiniteWidthGP(ARCH, Xd, yd, solver=solver)
        with pytest.raises(ValueError, match="ridge"):
            gp.predict(X[:2])
    nk.InfiniteWidthGP(ARCH, Xd, yd, solver="nystrom", n_centers=41, ridge=1e-3)  # a ridge makes it well posed


def test_auto_takes_matrix_free_cg_where_not_even_nystrom_fits():
    big = torch.randn(3000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    problem = large_n.Problem(ARCH, big, torch.zeros(3000, 1, dtype=torch.float64), "ntk", 0.0, 1e-10, 10, None,
                              "uniform", budget=2e6)
    assert large_n.resolve_solver("auto", problem).name == "cg"     # Nystrom's 1000 centres need 32 MB
    problem.budget = 1e9
    assert large_n.resolve_solver("auto", problem).name == "nystrom"  # the exact path needs 1.1 GB
    problem.budget = 1e12
    assert large_n.resolve_solver("auto", problem).name == "cholesky"
    assert large_n.names() == ("auto", "cholesky", "nystrom", "cg")


@pytest.mark.parametrize("solver", ["auto", "cholesky", "cg", "nystrom"])
def test_bad_solver_options_are_refused_alike_by_every_solver(solver):
    for options, message in (({"tol": 0}, "tol must be > 0"), ({"tol": 2.0}, "tol is a relative residual"),
                             ({"max_iter": 0}, "max_iter must be >= 1")):
        with pytest.raises(ValueError, match=message):
            nk.InfiniteWidthGP(ARCH, X, Y, solver=solver, **options)
    with pytest.raises(ValueError, match="solver must be one of 'auto', 'cholesky', 'nystrom', 'cg'"):
        nk.InfiniteWidthGP(ARCH, X, Y, solver="lu")


def test_nystrom_with_more_centres_than_points_says_that_n_is_exact():
    with pytest.raises(ValueError, match="n_centers = N is already exact"):
        nk.InfiniteWidthGP(ARCH, X, Y, solver="nystrom", n_centers=400)


def test_inputs_that_are_not_dense_real_arrays_are_refused_clearly():
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match=r"sparse matrix \(csr_matrix\).*toarray"):
        ARCH.kernel(sparse.csr_matrix(np.eye(3)))
    with pytest.raises(TypeError, match="sparse tensor"):
        ARCH.kernel(torch.eye(3).to_sparse())
    with pytest.raises(ValueError, match="meta device"):
        ARCH.kernel(torch.empty(3, 2, device="meta"))
    for scalar in (np.float64(3.0), 3.0, torch.tensor(2.0)):
        with pytest.raises(ValueError, match=r"got shape \(\)"):
            ARCH.kernel(scalar)
    arch = nk.Sequential(nk.Linear(), nk.ReLU(), nk.Linear())
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        arch.kernel(np.float64(1.0))
