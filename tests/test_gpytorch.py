"""ntkit.gpytorch: the NTK and NNGP of any architecture as GPyTorch kernels, in BoTorch models and loops."""

from __future__ import annotations

import pytest
import torch

import ntkit as nk

gpytorch = pytest.importorskip("gpytorch")
botorch = pytest.importorskip("botorch")

from botorch.acquisition import LogExpectedImprovement  # noqa: E402
from botorch.fit import fit_gpytorch_mll  # noqa: E402
from botorch.models import SingleTaskGP  # noqa: E402
from botorch.models.transforms import Normalize, Standardize  # noqa: E402
from botorch.optim import optimize_acqf  # noqa: E402
from botorch.test_functions import Branin, Hartmann  # noqa: E402
from gpytorch.kernels import ScaleKernel  # noqa: E402
from gpytorch.mlls import ExactMarginalLogLikelihood  # noqa: E402

from ntkit.gpytorch import NNGPKernel, NTKKernel  # noqa: E402

F64 = torch.float64


def cnn() -> nk.Sequential:
    return nk.Sequential(nk.Conv1d(3), nk.ReLU(), nk.GlobalAvgPool(), nk.Linear(W_std=1.3, b_std=0.2))


@pytest.mark.parametrize(("kernel_class", "get"), [(NTKKernel, "ntk"), (NNGPKernel, "nngp")])
def test_equal_to_ntkits_kernel(kernel_class, get) -> None:
    g = torch.Generator().manual_seed(0)
    X, Y = torch.rand(6, 3, dtype=F64, generator=g), torch.rand(4, 3, dtype=F64, generator=g)
    arch = nk.MLP(3, beta=0.3, W_std=1.2)
    kernel = kernel_class(arch).to(F64)
    # the scales as stored (raw parameters through the constraint's softplus, rounded in float32 before .to)
    arch = nk.MLP(3, beta=kernel.b_std.item(), W_std=kernel.W_std.item())
    with torch.no_grad():
        torch.testing.assert_close(kernel(X, Y).to_dense(), arch.kernel(X, Y, get=get), rtol=1e-12, atol=0)
        torch.testing.assert_close(kernel(X, diag=True), arch.kernel_diag(X, get=get), rtol=1e-12, atol=0)
    # a convolutional architecture on rows reshaped to sequences (1, 6); W_std, b_std set as hyperparameters
    conv = kernel_class(cnn(), in_shape=(1, 6), W_std=1.0, b_std=0.1).to(F64)
    Z = torch.rand(5, 6, dtype=F64, generator=g)
    W, b = conv.W_std.item(), conv.b_std.item()
    exact = nk.Sequential(nk.Conv1d(3, W_std=W, b_std=b), nk.ReLU(), nk.GlobalAvgPool(),
                          nk.Linear(W_std=W, b_std=b)).kernel(Z.reshape(5, 1, 6), get=get)
    with torch.no_grad():
        torch.testing.assert_close(conv(Z).to_dense(), exact, rtol=1e-12, atol=0)
    # batches: one kernel per batch element, with its own scales
    batched = kernel_class(arch, batch_shape=torch.Size([2])).to(F64)
    batched.W_std = torch.tensor([1.2, 0.7], dtype=F64).reshape(2, 1, 1)
    batched.b_std = torch.tensor([0.3, 0.5], dtype=F64).reshape(2, 1, 1)
    Xb = torch.rand(2, 5, 3, dtype=F64, generator=g)
    with torch.no_grad():
        K = batched(Xb).to_dense()
        assert K.shape == (2, 5, 5) and batched(Xb, diag=True).shape == (2, 5)
        one = nk.MLP(3, b_std=batched.b_std[1].item(), W_std=batched.W_std[1].item())
        torch.testing.assert_close(K[1], one.kernel(Xb[1], get=get), rtol=1e-12, atol=0)


def test_the_scales_reach_every_parallel_branch() -> None:
    """W_std and b_std of the kernel set every weight layer's, those in the branches of a Parallel included."""
    def branched(W: float, b: float) -> nk.Sequential:
        return nk.Sequential(nk.Linear(W_std=W, b_std=b),
                             nk.Parallel((nk.Linear(W_std=W, b_std=b),),
                                         (nk.ReLU(), nk.Linear(W_std=W, b_std=b)), combine="product"),
                             nk.Linear(W_std=W, b_std=b))

    X = torch.rand(5, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    kernel = NTKKernel(branched(1.0, 0.1), W_std=1.4, b_std=0.3).to(F64)
    exact = branched(kernel.W_std.item(), kernel.b_std.item()).kernel(X)
    with torch.no_grad():
        torch.testing.assert_close(kernel(X).to_dense(), exact, rtol=1e-12, atol=0)


def test_hyperparameters_learn() -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.rand(20, 2, dtype=F64, generator=g)
    Y = torch.sin(6 * X[:, :1]) * X[:, 1:] + 0.01 * torch.randn(20, 1, dtype=F64, generator=g)
    model = SingleTaskGP(X, Y, covar_module=ScaleKernel(NTKKernel(nk.MLP(3))), outcome_transform=Standardize(1))
    mll = ExactMarginalLogLikelihood(model.likelihood, model)

    def value() -> float:
        model.train()
        with torch.no_grad():
            return float(mll(model(*model.train_inputs), model.train_targets))

    before = value()
    fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": 30}})
    assert value() > before + 0.1
    kernel = model.covar_module.base_kernel
    assert kernel.b_std.item() != pytest.approx(0.1, rel=1e-3)   # it moved
    assert kernel.W_std.item() == pytest.approx(1.0, rel=1e-6)   # fixed by default: the ScaleKernel has the scale


@pytest.mark.parametrize(("problem", "steps"), [
    (Branin(negate=True), 1), pytest.param(Hartmann(dim=6, negate=True), 1, marks=pytest.mark.slow),
    pytest.param(Branin(negate=True), 5, marks=pytest.mark.slow)], ids=["Branin", "Hartmann6", "Branin-5"])
def test_botorch_loop_runs_to_the_end(problem, steps) -> None:
    torch.manual_seed(0)
    bounds = problem.bounds.to(F64)
    X = bounds[0] + (bounds[1] - bounds[0]) * torch.rand(5, problem.dim, dtype=F64)
    Y = problem(X).unsqueeze(-1)
    for _ in range(steps):
        model = SingleTaskGP(X, Y, covar_module=ScaleKernel(NTKKernel(nk.MLP(3))),
                             input_transform=Normalize(problem.dim, bounds=bounds), outcome_transform=Standardize(1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model),
                         optimizer_kwargs={"options": {"maxiter": 30}})
        candidate, _ = optimize_acqf(LogExpectedImprovement(model, best_f=Y.max()), bounds=bounds, q=1,
                                     num_restarts=2, raw_samples=16)
        X, Y = torch.cat([X, candidate]), torch.cat([Y, problem(candidate).unsqueeze(-1)])
    assert X.shape == (5 + steps, problem.dim) and torch.isfinite(Y).all()
    assert ((X >= bounds[0]) & (X <= bounds[1])).all()


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="ntkit architecture"):
        NTKKernel("mlp")
    uneven = nk.Sequential(nk.Linear(W_std=1.0), nk.ReLU(), nk.Linear(W_std=2.0))
    with pytest.raises(ValueError, match="different W_std"):
        NTKKernel(uneven)
    with pytest.raises(ValueError, match="learn must name"):
        NTKKernel(nk.MLP(2), learn=("scale",))
    with pytest.raises(ValueError, match="b_std must be finite and > 0"):
        NTKKernel(nk.MLP(2)).b_std = -1.0
