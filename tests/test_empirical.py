"""The empirical NTK: every method against a Jacobian built by hand, on MLPs, a CNN and a residual net.

Reference: for each sample and output, torch.autograd.grad of that one scalar with respect to every
trainable parameter, stacked into J (N, K, P) and contracted as Theta_{k k'}(x, y) = J_k(x).J_k'(y)
(the paper's Theta = sum_p dF/dtheta_p (x) dF/dtheta_p), in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit import empirical as E
from ntkit.empirical import common

METHODS = ["structured", "jacobian", "ntk_vp"]
MODES = ["full", "trace", "diagonal"]
DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def explicit_jacobian(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """J[i, k, p] = dF_k(x_i)/dtheta_p by one autograd.grad call per sample and output."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for x in X:
        out = model(x.unsqueeze(0)).reshape(-1)
        per_output = []
        for k in range(out.numel()):
            grads = torch.autograd.grad(out[k], params, retain_graph=True, allow_unused=True)
            per_output.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                         for g, p in zip(grads, params, strict=True)]))
        rows.append(torch.stack(per_output))
    return torch.stack(rows)


def explicit_ntk(model: nn.Module, X: torch.Tensor, Y: torch.Tensor | None, mode: str) -> torch.Tensor:
    JX = explicit_jacobian(model, X)
    JY = JX if Y is None else explicit_jacobian(model, Y)
    full = torch.einsum("ikp,jlp->ijkl", JX, JY)
    if mode == "full":
        return full
    diagonal = torch.diagonal(full, dim1=2, dim2=3)
    return diagonal.mean(-1) if mode == "trace" else diagonal


def assert_close(actual, expected, rtol=1e-10):
    actual = torch.as_tensor(actual)
    scale = float(expected.abs().max())
    assert actual.shape == expected.shape
    err = float((actual - expected).abs().max())
    assert err <= rtol * scale, f"max error {err:.3g} vs scale {scale:.3g}"


# ------------------------------------------------------------------------------ models
def ntk_mlp():
    """The paper's parametrization, unequal widths, three outputs."""
    return nk.MLP(depth=4, activation="relu", beta=0.1).network(5, width=[7, 4, 6], out_features=3, seed=1,
                                                                 dtype=DT)


def torch_mlp():
    """nn.Linear stack with a flatten prefix, no-bias layer, nested Sequential, trailing activation."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5, bias=False), nn.GELU(),
                         nn.Sequential(nn.Linear(5, 4), nn.Softplus()), nn.Linear(4, 2), nn.Sigmoid()).to(DT)


def erf_standard_mlp():
    return nk.MLP(depth=3, activation="erf", W_std=1.3, b_std=0.4, parametrization="standard").network(
        5, width=[9, 3], out_features=2, seed=3, dtype=DT)


def partly_frozen_mlp():
    net = nk.MLP(depth=3, activation="tanh").network(5, width=[6, 5], out_features=2, seed=4, dtype=DT)
    net[0].weight.requires_grad_(False)
    net[4].bias.requires_grad_(False)
    return net


def small_cnn():
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 2 * 2, 3)).to(DT)


class Residual(nn.Module):
    """conv -> BatchNorm (eval, non-trivial statistics) -> relu, plus a skip connection, then LayerNorm."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(2, 3, 3, padding=1)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)
        self.head = nn.Sequential(nn.Flatten(), nn.LayerNorm(3 * 5 * 5), nn.Linear(3 * 5 * 5, 2))
        self.norm.running_mean.uniform_(-0.5, 0.5)
        self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = torch.relu(self.conv_in(x))
        return self.head(h + torch.relu(self.norm(self.conv(h))))


def residual_net():
    torch.manual_seed(6)
    return Residual().to(DT).eval()


MLPS = {"ntk_mlp": (ntk_mlp, (5,)), "torch_mlp": (torch_mlp, (2, 3)), "erf_standard": (erf_standard_mlp, (5,)),
        "partly_frozen": (partly_frozen_mlp, (5,))}
GENERIC = {"cnn": (small_cnn, (1, 7, 7)), "residual": (residual_net, (2, 5, 5))}


def inputs(shape, n, seed):
    return torch.randn((n, *shape), dtype=DT, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", list(MLPS))
@pytest.mark.parametrize("mode", MODES)
def test_mlp_methods_match_explicit_jacobian(name, mode):
    make, shape = MLPS[name]
    model = make()
    X, Y = inputs(shape, 5, 0), inputs(shape, 4, 1)
    for other in (None, Y):
        expected = explicit_ntk(model, X, other, mode)
        for method in METHODS:
            assert_close(E.empirical_ntk(model, X, other, mode=mode, method=method), expected)
        assert_close(E.empirical_ntk(model, X, other, mode=mode, method="structured", block_size=2), expected)


@pytest.mark.parametrize("name", list(GENERIC))
@pytest.mark.parametrize("mode", MODES)
def test_generic_methods_match_explicit_jacobian(name, mode):
    make, shape = GENERIC[name]
    model = make()
    X, Y = inputs(shape, 4, 0), inputs(shape, 3, 1)
    for other in (None, Y):
        expected = explicit_ntk(model, X, other, mode)
        for method in ("jacobian", "ntk_vp", "auto"):
            assert_close(E.empirical_ntk(model, X, other, mode=mode, method=method), expected)
        assert_close(E.empirical_ntk(model, X, other, mode=mode, method="ntk_vp", block_size=3), expected)


def test_tiny_working_memory_splits_parameters_and_blocks(monkeypatch):
    """With 16 kB of working memory every method must block and group, and still be exact."""
    model, X, Y = ntk_mlp(), inputs((5,), 9, 0), inputs((5,), 7, 1)
    expected = explicit_ntk(model, X, None, "full"), explicit_ntk(model, X, Y, "full")
    monkeypatch.setattr(common, "CPU_WORKING_MEMORY", 16384)
    from ntkit.empirical.generic import jacobian_plan
    problem, _ = common.make_problem(model, X, None, "full", None)
    size, groups = jacobian_plan(problem, None)
    assert size < 9 and len(groups) > 1
    for method in METHODS:
        assert_close(E.empirical_ntk(model, X, method=method), expected[0])
        assert_close(E.empirical_ntk(model, X, Y, method=method), expected[1])


def test_params_override_evaluates_elsewhere():
    model = ntk_mlp()
    X = inputs((5,), 4, 0)
    shifted = {name: p.detach() + 0.3 for name, p in model.named_parameters()}
    other = ntk_mlp()
    with torch.no_grad():
        for name, p in other.named_parameters():
            p.copy_(shifted[name])
    expected = explicit_ntk(other, X, None, "full")
    for method in METHODS:
        assert_close(E.empirical_ntk(model, X, method=method, params=shifted), expected)


def test_mode_relations_symmetry_and_single_output_kernel():
    model, X = ntk_mlp(), inputs((5,), 6, 0)
    full = E.empirical_ntk(model, X)
    assert torch.equal(full, full.permute(1, 0, 3, 2))  # each pair of blocks once, mirrored exactly
    blocked = E.empirical_ntk(model, X, block_size=4)
    assert torch.equal(blocked, blocked.permute(1, 0, 3, 2))
    assert_close(E.empirical_ntk(model, X, mode="trace"), torch.diagonal(full, dim1=2, dim2=3).mean(-1))
    # a Gram matrix: positive semi-definite
    flat = full.permute(0, 2, 1, 3).reshape(18, 18)
    assert float(torch.linalg.eigvalsh(flat).min()) > -1e-10 * float(flat.abs().max())


def test_numpy_in_numpy_out_and_dtype_of_the_model():
    model = nk.MLP(depth=2).network(3, width=8, seed=0)  # float32
    X = np.random.default_rng(0).standard_normal((4, 3))  # float64
    theta = E.empirical_ntk(model, X, mode="trace")
    assert isinstance(theta, np.ndarray) and theta.shape == (4, 4) and theta.dtype == np.float32
    ref = E.empirical_ntk(model.double(), torch.from_numpy(X), mode="trace")
    np.testing.assert_allclose(theta, ref.numpy(), rtol=1e-4)
    one = E.empirical_ntk(model.float(), X[0], mode="full")  # a 1-D input is one sample
    assert one.shape == (1, 1, 1, 1)


def test_auto_picks_structured_where_a_rule_applies_and_a_generic_method_elsewhere():
    assert E.choose_method(ntk_mlp(), inputs((5,), 3, 0)) == "structured"
    assert E.choose_method(torch_mlp(), inputs((2, 3), 3, 0)) == "structured"
    assert E.choose_method(small_cnn(), inputs((1, 7, 7), 3, 0)) == "structured"
    assert E.choose_method(residual_net(), inputs((2, 5, 5), 3, 0)) == "structured"
    rnn = nn.RNN(3, 4, batch_first=True).to(DT)  # no rule: a generic method
    assert E.choose_method(rnn, inputs((5, 3), 3, 0), output=0) in ("jacobian", "ntk_vp")


# ------------------------------------------------------------------------------ bad input
def test_no_trainable_parameters():
    with pytest.raises(ValueError, match="no trainable parameters"):
        E.empirical_ntk(nn.Sequential(nn.ReLU()), torch.randn(3, 2))
    frozen = nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        E.empirical_ntk(frozen, torch.randn(3, 2))


def test_input_shape_the_model_rejects():
    with pytest.raises(ValueError, match="rejected inputs of shape"):
        E.empirical_ntk(nn.Linear(4, 2), torch.randn(3, 5))
    with pytest.raises(ValueError, match="same sample shape"):
        E.empirical_ntk(nn.Linear(4, 2), torch.randn(3, 4), torch.randn(3, 5))


@pytest.mark.parametrize("kwargs, match", [({"mode": "diag"}, "mode must be one of"),
                                           ({"method": "fast"}, "method must be one of"),
                                           ({"block_size": 0}, "block_size must be >= 1"),
                                           ({"params": {"nope": torch.zeros(1)}}, "params has names")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        E.empirical_ntk(nn.Linear(2, 1), torch.randn(3, 2), **kwargs)


def test_training_mode_batchnorm_and_dropout_and_nonfinite_input():
    with pytest.raises(ValueError, match="model.eval"):
        E.empirical_ntk(Residual().train(), torch.randn(2, 2, 5, 5))
    with pytest.raises(ValueError, match="model.eval"):
        E.empirical_ntk(nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5)), torch.randn(2, 2))
    with pytest.raises(ValueError, match="X contains NaN"):
        E.empirical_ntk(nn.Linear(2, 1), torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, or a function f.params, X. given with"):
        E.empirical_ntk(lambda x: x, torch.randn(2, 2))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module or a function"):
        E.empirical_ntk("net", torch.randn(2, 2))


class TiedWeights(nn.Module):
    """Two linear layers sharing one weight Parameter (different modules)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)
        self.b.weight = nn.Parameter(self.a.weight[:2].detach().clone())
        self.c = nn.Linear(3, 2)
        self.c.weight = self.b.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x))) + self.c(x)


def test_shared_parameters_and_a_module_used_twice():
    torch.manual_seed(7)
    layer = nn.Linear(3, 3)
    twice = nn.Sequential(layer, nn.Tanh(), layer).to(DT)  # one module object called twice
    tied = TiedWeights().to(DT)
    tied_stack = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).to(DT)
    tied_stack[2].weight = tied_stack[0].weight
    X = inputs((3,), 4, 0)
    for model in (twice, tied, tied_stack):
        expected = explicit_ntk(model, X, None, "full")
        for method in ("auto", "jacobian", "ntk_vp"):
            assert_close(E.empirical_ntk(model, X, method=method), expected)
        assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())
    assert E.choose_method(twice, X) != "structured"  # no rule for a module called twice
    assert E.choose_method(tied_stack, X, per_layer=True)["0"].startswith("jacobian")  # tied weights: no rule
