"""The empirical NTK of models torch.func cannot batch over samples, `auto` passing over methods that cannot
run, and the errors that name the failing submodule and a method that runs.

Every kernel is checked against an explicit Jacobian written here: one torch.autograd.grad per sample and
output, contracted by hand (float64, so agreement to 1e-12 relative to the kernel's scale).
"""

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.empirical.api import estimate_costs
from ntkit.empirical.common import make_problem
from ntkit.empirical.jacobians import jacobian_way
from test_empirical_structured import NoForwardAD  # tanh with a backward and no jvp

MODES = ("full", "trace", "diagonal")


def reference_ntk(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, mode: str) -> torch.Tensor:
    """Theta from per-sample, per-output autograd gradients: sum_p dF_k(x)/dp dF_k'(y)/dp."""
    params = [p for p in model.parameters() if p.requires_grad]

    def jac(Z: torch.Tensor) -> torch.Tensor:
        rows = []
        for z in Z:
            out = model(z.unsqueeze(0)).reshape(-1)
            grads = [torch.autograd.grad(out[k], params, retain_graph=True, allow_unused=True)
                     for k in range(out.numel())]
            rows.append(torch.stack([torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                                for g, p in zip(gs, params, strict=True)]) for gs in grads]))
        return torch.stack(rows)  # (B, K, P)

    full = torch.einsum("ikp,jlp->ijkl", jac(X), jac(Y))
    if mode == "full":
        return full
    diagonal = torch.diagonal(full, dim1=2, dim2=3)
    return diagonal.mean(-1) if mode == "trace" else diagonal


class SequenceModel(nn.Module):
    """A recurrent layer and a Linear head on its last state."""

    def __init__(self, cell: type[nn.Module], outputs: int = 2):
        super().__init__()
        self.rnn = cell(2, 3, batch_first=True)
        self.head = nn.Linear(3, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def prelu_cnn(outputs: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.PReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, outputs))


def cases():
    torch.manual_seed(0)
    image = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    sequence = torch.randn(5, 4, 2, dtype=torch.float64)
    # nn.PReLU's backward under vmap raises when the samples and outputs differ in number and returns wrong
    # numbers when they agree (2 samples of Y, 2 outputs); nn.GRU / nn.LSTM have no batching rule at all
    return {"prelu-3": (prelu_cnn(3).double(), image[:3], image[3:]),
            "prelu-2": (prelu_cnn(2).double(), image[:3], image[3:]),
            "gru": (SequenceModel(nn.GRU).double(), sequence[:3], sequence[3:]),
            "lstm": (SequenceModel(nn.LSTM).double(), sequence[:3], sequence[3:])}


CASES = cases()


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))


@pytest.mark.parametrize("method", ["auto", "jacobian", "ntk_vp", "structured"])
@pytest.mark.parametrize("case", list(CASES))
def test_unbatchable_models_exact(case, method):
    model, X, Y = CASES[case]
    for mode in MODES:
        close(nk.empirical_ntk(model, X, Y, mode=mode, method=method), reference_ntk(model, X, Y, mode))
    close(nk.empirical_ntk(model, X, mode="trace", method=method), reference_ntk(model, X, X, "trace"))


def test_structured_fallback_parameters_of_prelu():
    """The structured path covers the Conv2d and Linear by rules; PReLU's weight takes the Jacobian fallback."""
    model, X, Y = CASES["prelu-3"]
    report = nk.choose_method(model, X, Y, per_layer=True)
    assert report["(other parameters)"] == "jacobian: 1.weight"


@pytest.mark.parametrize("case", ["gru", "lstm"])
def test_recurrent_models_take_the_head_by_its_rule_and_the_rest_one_sample_at_a_time(case):
    """The Linear head has a rule; the recurrent layer's parameters take the Jacobian, formed one sample at a
    time (vmap cannot batch them); both the plan's self-check and its passes avoid vmap over samples."""
    model, X, Y = CASES[case]
    assert nk.choose_method(model, X, Y) == "structured"
    report = nk.choose_method(model, X, Y, per_layer=True)
    assert report["head"].startswith("structured linear")
    assert report["(other parameters)"].startswith("jacobian: rnn.weight_ih_l0")


class Act(nn.Module):
    def forward(self, x):
        return NoForwardAD.apply(x)


class Dense(nn.Module):
    """A weight used directly (no nn.Linear, so no structured rule applies)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out, dtype=torch.float64) / n_in ** 0.5)

    def forward(self, x):
        return x @ self.weight


def test_auto_passes_over_a_method_that_cannot_run():
    torch.manual_seed(1)
    model = nn.Sequential(Dense(6, 12), Act(), Dense(12, 8))
    X, Y = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    problem, _ = make_problem(model, X, Y, "full", None)
    costs = estimate_costs(problem)
    assert costs["ntk_vp"] < costs["jacobian"]  # by cost alone auto would take ntk_vp, which needs a jvp rule
    assert nk.choose_method(model, X, Y) == "jacobian"
    close(nk.empirical_ntk(model, X, Y), reference_ntk(model, X, Y, "full"))
    with pytest.raises(RuntimeError, match=r"method='ntk_vp' failed inside torch on Sequential, in its submodule "
                                           r"'1' \(Act\).*method='jacobian' was checked to run"):
        nk.empirical_ntk(model, X, Y, method="ntk_vp")


def test_fast_path_keeps_vmap():
    """A model torch.func batches correctly keeps the vmapped Jacobians."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(32, 3)).double()
    X = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    problem, _ = make_problem(model, X, None, "full", None)
    assert jacobian_way(problem, list(problem.trainable)) == "vmap"
    close(nk.empirical_ntk(model, X, method="jacobian"), reference_ntk(model, X, X, "full"))
    for case, way in (("prelu-3", "jacrev"), ("prelu-2", "jacrev"), ("gru", "jacrev")):
        model, X, Y = CASES[case]
        problem, _ = make_problem(model, X, Y, "full", None)
        assert jacobian_way(problem, list(problem.trainable)) == way


class Rescale(nn.Module):
    """Divides by the largest absolute input, read through NumPy: a constant to autograd, and a tensor without
    storage to every torch.func transform (so not even jacrev of one sample runs)."""

    def forward(self, x):
        return x / float(np.abs(x.detach().cpu().numpy()).max())


def test_one_backward_pass_per_output_where_jacrev_fails():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), Rescale(), nn.Tanh(), nn.Linear(6, 3)).double()
    X, Y = torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    problem, _ = make_problem(model, X, Y, "full", None)
    assert jacobian_way(problem, list(problem.trainable)) == "autograd"
    assert nk.choose_method(model, X, Y) == "jacobian"
    for mode in MODES:
        close(nk.empirical_ntk(model, X, Y, mode=mode), reference_ntk(model, X, Y, mode))
    with pytest.raises(RuntimeError, match=r"in its submodule '1' \(Rescale\).*method='jacobian' was checked"):
        nk.empirical_ntk(model, X, Y, method="ntk_vp")


def test_auto_prefers_jacobians_where_vmap_cannot_batch():
    """Where the cost estimate favours ntk_vp but torch.func cannot batch the model (ntk_vp would then push its
    K N vectors one at a time), auto takes the Jacobians of one sample at a time."""
    torch.manual_seed(4)
    model = nn.Sequential(Dense(6, 12), nn.PReLU(), Dense(12, 8)).double()
    X, Y = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    problem, _ = make_problem(model, X, Y, "full", None)
    costs = estimate_costs(problem)
    assert costs["ntk_vp"] < costs["jacobian"]
    assert nk.choose_method(model, X, Y) == "jacobian"
    close(nk.empirical_ntk(model, X, Y), reference_ntk(model, X, Y, "full"))
