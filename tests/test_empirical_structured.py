"""The structured rules for the layers of real models against an explicit Jacobian, to float64 precision.

Reference: `explicit_ntk` of test_empirical (one autograd.grad call per sample and output, stacked into J and
contracted). Models: a ResNet block with BatchNorm in eval mode, a 2-layer transformer encoder built from
nn.TransformerEncoderLayer over an nn.Embedding, 1-D and 3-D convolutions (groups, dilation, circular padding),
linear layers on sequences; every mode, X and Y different.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntkit import empirical as E
from test_empirical import assert_close, explicit_ntk, inputs, residual_net

DT = torch.float64
MODES = ["full", "trace", "diagonal"]

pytestmark = pytest.mark.usefixtures("one_thread")


class Encoder(nn.Module):
    """Token ids -> embedding (with a padding index) -> 2 transformer encoder layers -> mean -> linear."""

    def __init__(self, stack: bool = False, d: int = 8):
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Embedding(11, d, padding_idx=0)
        layer = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False) if stack else \
            nn.Sequential(layer, nn.TransformerEncoderLayer(d, 2, 16, dropout=0.1, batch_first=True))
        self.head = nn.Linear(d, 3)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


def ids(n, seed):
    return torch.randint(0, 11, (n, 5), generator=torch.Generator().manual_seed(seed))


def conv1d():
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1, dilation=2, padding_mode="circular"), nn.ReLU(),
                         nn.Conv1d(4, 4, 3, groups=2, stride=2), nn.Flatten(), nn.Linear(4, 2)).to(DT)


def conv3d():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv3d(1, 2, 2), nn.Tanh(), nn.BatchNorm3d(2), nn.Flatten(), nn.LayerNorm(16),
                        nn.Linear(16, 2)).to(DT).eval()
    net[2].running_mean.uniform_(-0.5, 0.5)
    net[2].running_var.uniform_(0.5, 2.0)
    return net


def sequence_mlp():
    torch.manual_seed(6)
    return nn.Sequential(nn.Linear(3, 6), nn.GELU(), nn.Linear(6, 2, bias=False)).to(DT)


MODELS = {"resnet_batchnorm": (residual_net, lambda n, s: inputs((2, 5, 5), n, s)),
          "transformer": (lambda: Encoder().to(DT).eval(), ids),
          "conv1d": (conv1d, lambda n, s: inputs((2, 6), n, s)),
          "conv3d_norms": (conv3d, lambda n, s: inputs((1, 3, 3, 3), n, s)),
          "linear_on_sequences": (sequence_mlp, lambda n, s: inputs((4, 3), n, s))}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", MODES)
def test_structured_rules_match_explicit_jacobian(name, mode):
    make, data = MODELS[name]
    model, X, Y = make(), data(4, 0), data(3, 1)
    plan = E.choose_method(model, X, per_layer=True)
    assert all(v.startswith("structured") for k, v in plan.items() if k != "(other parameters)"), plan
    assert E.choose_method(model, X) == "structured"
    assert_close(E.empirical_ntk(model, X, mode=mode, method="structured"), explicit_ntk(model, X, None, mode), 1e-12)
    assert_close(E.empirical_ntk(model, X, Y, mode=mode), explicit_ntk(model, X, Y, mode), 1e-12)


def test_both_orders_of_every_weight_rule_agree():
    """Force each order on every layer (the cost model picks one) and compare with the Jacobian."""
    from ntkit.empirical import layerwise
    from ntkit.empirical.common import make_problem

    for name in ("resnet_batchnorm", "transformer", "conv1d"):
        make, data = MODELS[name]
        model, X, Y = make(), data(3, 0), data(2, 1)
        expected = explicit_ntk(model, X, Y, "full")
        for order in ("jacobian", "positions"):
            problem, _ = make_problem(model, X, Y, "full", None)
            with E.common.no_fused_attention():
                plan = layerwise.make_plan(problem)
                for site in plan.sites:
                    site.order = order
                cache = layerwise.FeatureCache(plan, problem, 1 << 28)
                rows, cols = slice(0, 3), slice(0, 2)
                theta = layerwise.tile(cache.get("X", rows), cache.get("Y", cols), "full", problem.n_outputs)
            assert_close(theta, expected, 1e-12)


def test_transformer_encoder_in_eval_mode_runs_every_method():
    """torch's fused fast path has no forward-mode derivative: every method returns the right kernel."""
    model = Encoder(stack=True).to(DT).eval()
    X = ids(3, 0)
    expected = explicit_ntk(model, X, None, "trace")
    for method in ("auto", "structured", "jacobian", "ntk_vp"):
        assert_close(E.empirical_ntk(model, X, mode="trace", method=method), expected, 1e-12)
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_integer_numpy_ids_and_output_selector():
    model = Encoder().to(DT).eval()
    X = ids(3, 0)
    expected = explicit_ntk(model, X, None, "trace")
    theta = E.empirical_ntk(model, X.numpy(), mode="trace")
    assert isinstance(theta, np.ndarray)
    assert_close(torch.from_numpy(theta), expected, 1e-12)
    mlp = sequence_mlp()[:1]  # no embedding: integer NumPy inputs are numbers
    counts = np.arange(6).reshape(2, 3)
    assert_close(torch.from_numpy(E.empirical_ntk(mlp, counts)), explicit_ntk(mlp, torch.from_numpy(counts).to(DT),
                                                                               None, "full"), 1e-12)

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            out = self.inner(x)
            return {"logits": out, "features": out.tanh()}

    with pytest.raises(TypeError, match="output="):
        E.empirical_ntk(Pair(), X)
    assert_close(E.empirical_ntk(Pair(), X, mode="trace", output="logits"), expected, 1e-12)
    with pytest.raises(ValueError, match="does not select"):
        E.empirical_ntk(Pair(), X, output="nope")


class Tied(nn.Module):
    """A linear layer whose weight is also used outside it (the rule must not be used for it)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(h) + torch.nn.functional.linear(h, self.a.weight[:2])


def test_parameters_used_outside_their_module_fall_back_to_the_jacobian():
    torch.manual_seed(8)
    model, X = Tied().to(DT), inputs((3,), 4, 0)
    plan = E.choose_method(model, X, per_layer=True)
    assert plan["a"].startswith("jacobian") and plan["b"].startswith("structured")
    assert_close(E.empirical_ntk(model, X), explicit_ntk(model, X, None, "full"), 1e-12)


def test_memory_budget_is_checked_before_allocating():
    model, X = residual_net(), inputs((2, 5, 5), 4, 0)
    with pytest.raises(MemoryError, match="working memory of 1.00 kB.*memory="):
        E.empirical_ntk(model, X, memory=1000, method="structured")
    small = E.empirical_ntk(model, X, memory=200_000, method="structured")  # blocks of few samples
    assert_close(small, explicit_ntk(model, X, None, "full"), 1e-12)


class NoForwardAD(torch.autograd.Function):
    """tanh with a backward but no forward-mode derivative (a custom op of the kind torch cannot jvp)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class CustomOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(NoForwardAD.apply(self.a(x)))


def test_a_torch_failure_names_the_module_and_the_method_that_works():
    torch.manual_seed(9)
    model, X = CustomOp().to(DT), inputs((3,), 3, 0)
    with pytest.raises(RuntimeError, match="method='ntk_vp' failed inside torch on CustomOp.*method='structured'"):
        E.empirical_ntk(model, X, method="ntk_vp")
    assert_close(E.empirical_ntk(model, X), explicit_ntk(model, X, None, "full"), 1e-12)


def test_jacobian_memory_budget_names_the_option_that_fits():
    model, X = residual_net(), inputs((2, 5, 5), 4, 0)
    with pytest.raises(MemoryError, match=r"more than memory=1,000 bytes \(1.00 kB\): pass memory="):
        E.empirical_ntk(model, X, memory=1000, method="jacobian")
    assert_close(E.empirical_ntk(model, X, memory=100_000, method="jacobian"), explicit_ntk(model, X, None, "full"))


# ------------------------------------------------------------------------------ bad input
class Counter(nn.Module):
    """A module whose forward pass writes a buffer (a call counter)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return self.lin(x)


def test_bad_models():
    with pytest.raises(ValueError, match="taken in eval mode: call model.eval"):
        E.empirical_ntk(residual_net().train(), inputs((2, 5, 5), 2, 0))
    no_stats = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match="without running statistics"):
        E.empirical_ntk(no_stats, torch.randn(3, 2))
    counter = Counter()
    with pytest.raises(ValueError, match=r"changes its buffers \['calls'\]"):
        E.empirical_ntk(counter, torch.randn(3, 2))
    assert float(counter.calls) == 0  # restored
    with pytest.raises(TypeError, match="complex parameters are not supported"):
        E.empirical_ntk(nn.Linear(2, 1, dtype=torch.complex64), torch.randn(3, 2))
    with pytest.raises(TypeError, match="output must be an index, a key or a function"):
        E.empirical_ntk(nn.Linear(2, 1), torch.randn(3, 2), output=1.5)


def test_tracker_records_in_eval_mode_and_restores_training_flags():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2)).to(DT)
    model[1].running_mean.uniform_(-0.5, 0.5)
    X = inputs((3,), 5, 0)
    model.train()
    model[3].eval()  # a flag set by hand survives
    tracker = E.NTKTracker(model, X)
    theta = tracker.record(0)
    assert model.training and model[1].training and not model[3].training
    model.eval()
    assert_close(theta, explicit_ntk(model, X, None, "trace"), 1e-12)


class KeywordCall(nn.Module):
    """A linear layer called with a keyword argument (its forward hook sees no positional input)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(input=x)))


def test_a_layer_called_by_keyword_goes_to_the_jacobian():
    torch.manual_seed(13)
    model, X = KeywordCall().to(DT), inputs((3,), 3, 0)
    plan = E.choose_method(model, X, per_layer=True)
    assert plan["a"].startswith("jacobian") and plan["b"].startswith("structured")
    assert_close(E.empirical_ntk(model, X, mode="trace"), explicit_ntk(model, X, None, "trace"), 1e-12)


class GradCounter(nn.Module):
    """A module that writes a buffer only when gradients are enabled (as in the methods' derivative passes)."""

    def __init__(self, when_grad: bool = True):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.when_grad = when_grad
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        if torch.is_grad_enabled() == self.when_grad:
            self.calls += 1
        return self.lin(x)


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian", "ntk_vp"])
def test_buffers_written_only_with_gradients_on_are_caught(method):
    """The probe runs the model with and without gradients: a buffer written in either is refused with the buffer
    check's message (not a raw torch error from inside a transform), and restored."""
    for when_grad in (True, False):
        counter = GradCounter(when_grad)
        with pytest.raises(ValueError, match=r"changes its buffers \['calls'\]"):
            E.empirical_ntk(counter, torch.randn(3, 2), method=method)
        assert float(counter.calls) == 0  # restored
    counter = GradCounter()
    with pytest.raises(ValueError, match=r"changes its buffers \['calls'\]"):
        E.empirical_kernel_tiles(counter, torch.randn(3, 2))
    assert float(counter.calls) == 0


# ------------------------------------------------------------------------------ a two-stage ResNet
class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x)); the skip a strided 1x1 convolution with BatchNorm when the
    shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity() if stride == 1 and cin == cout else \
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.skip(x))


def two_stage_resnet():
    """Stem, a stage of 4 channels at 8x8, a stage of 6 channels at 4x4 (strided, projected skip), global average
    pool, Linear head with 3 outputs; BatchNorm in eval mode with random statistics and affine parameters."""
    torch.manual_seed(14)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        BasicBlock(4, 4, 1), BasicBlock(4, 6, 2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).to(DT).eval()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return net


@pytest.mark.parametrize("mode", MODES)
def test_two_stage_resnet_on_every_path(mode, monkeypatch):
    """The structured rules on a multi-stage ResNet against the explicit Jacobian, X != Y and X alone; the by-layer
    path (taken in trace and diagonal mode when it fits the working memory) and the block path (forced with
    block_size, or taken under a smaller memory budget) agree with it."""
    from ntkit.empirical import bylayer, layerwise

    model, X, Y = two_stage_resnet(), inputs((2, 8, 8), 4, 0), inputs((2, 8, 8), 3, 1)
    plan = E.choose_method(model, X, per_layer=True)
    assert len(plan) == 13 and all(v.startswith("structured") for v in plan.values()), plan  # 6 convs, 6 norms, head
    rows = []  # the samples of X of each by-layer call (auto may first try a method on two samples)
    real = bylayer.bylayer_ntk
    monkeypatch.setattr(layerwise.bylayer, "bylayer_ntk",
                        lambda plan, problem, *a: rows.append(problem.X.shape[0]) or real(plan, problem, *a))
    for Z in (Y, None):
        expected = explicit_ntk(model, X, Z, mode)
        assert_close(E.empirical_ntk(model, X, Z, mode=mode), expected, 1e-12)
        assert (4 in rows) == (mode != "full")  # by layer in trace and diagonal mode
        rows.clear()
        assert_close(E.empirical_ntk(model, X, Z, mode=mode, block_size=2), expected, 1e-12)
        assert 4 not in rows  # block_size takes the block path
    # a budget below the by-layer path's need for X and Y (about 380 kB here) but above the block path's (290 kB)
    assert_close(E.empirical_ntk(model, X, Y, mode=mode, memory=340_000), explicit_ntk(model, X, Y, mode), 1e-12)


# ------------------------------------------------------------------------------ the cost model
class TwoOrders(nn.Module):
    """A convolution over a long signal with few channels (the jacobian order is cheaper) and a linear layer on a
    short sequence of wide features (the positions order is cheaper)."""

    def __init__(self):
        super().__init__()
        self.long = nn.Conv1d(1, 2, 3)   # 30 positions, 3 inputs and 2 outputs per position
        self.short = nn.Linear(30, 12)   # 2 positions (the channels), 30 -> 12 features
        self.head = nn.Linear(24, 2)

    def forward(self, x):
        h = torch.tanh(self.short(torch.tanh(self.long(x.unsqueeze(1)))))  # (B, 2, 12)
        return self.head(h.flatten(1))


def test_the_cost_model_picks_the_cheaper_order_and_both_agree():
    from ntkit.empirical import layerwise, rules
    from ntkit.empirical.common import make_problem

    torch.manual_seed(15)
    model, X, Y = TwoOrders().to(DT), inputs((32,), 4, 0), inputs((32,), 3, 1)
    report = E.choose_method(model, X, Y, mode="full", per_layer=True)
    assert report["long"] == "structured conv (jacobian order)", report
    assert report["short"] == "structured linear (positions order)", report
    problem, _ = make_problem(model, X, Y, "full", None)
    plan = layerwise.make_plan(problem)
    sites = {site.key: site for site in plan.sites}
    for key, order in (("long", "jacobian"), ("short", "positions")):  # the estimates (rules.costs) say so
        cost = rules.costs(sites[key], 4, 3, 2, "full")
        assert min(cost, key=cost.__getitem__) == order and sites[key].order == order
    expected = explicit_ntk(model, X, Y, "full")
    chosen = layerwise.layerwise_ntk(problem, None, False, plan=plan)
    sites["long"].order, sites["short"].order = "positions", "jacobian"
    swapped = layerwise.layerwise_ntk(problem, None, False, plan=plan)
    assert_close(chosen, expected, 1e-12)
    assert_close(swapped, expected, 1e-12)
    assert_close(swapped, chosen, 1e-12)
