"""The by-layer path of the structured empirical NTK: taps on the layers' outputs, and the blocks' memory.

The by-layer path (trace and diagonal modes) reads each layer's output cotangents from hooks on the outputs
of one batched forward pass. In-place operations after a layer (an in-place ReLU), layers that start the graph
on their own (two branches from the input) and layers whose output never reaches the outputs must all give
the right cotangents; the reference is torch.func's Jacobian contraction (method="jacobian"), another algorithm.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkit.empirical import bylayer, empirical_ntk


class TwoBranches(nn.Module):
    """Two convolutions on the input (two layers start the graph), an in-place ReLU after each, a BatchNorm
    followed by an in-place ReLU, and a layer whose output is computed but not used."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3)
        self.b = nn.Conv2d(2, 3, 3, bias=False)
        self.norm = nn.BatchNorm2d(3)
        self.unused = nn.Linear(4, 2)
        self.head = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = torch.relu_(self.a(x))
        right = torch.relu_(self.norm(self.b(x)))
        self.unused(x[:, 0, 0, :4])
        return self.head((left * right + left).flatten(1))


def model() -> nn.Module:
    torch.manual_seed(0)
    net = TwoBranches().double().eval()
    with torch.no_grad():
        net.norm.running_mean.uniform_(-0.5, 0.5)
        net.norm.running_var.uniform_(0.5, 2.0)
        net.norm.weight.uniform_(0.5, 1.5)
        net.norm.bias.uniform_(-0.5, 0.5)
    return net


@pytest.mark.parametrize("mode", ["trace", "diagonal"])
@pytest.mark.parametrize("cross", [False, True])
def test_taps_give_the_cotangents_through_in_place_ops_and_branches(monkeypatch, mode: str, cross: bool) -> None:
    net = model()
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(5, 2, 6, 6, dtype=torch.float64, generator=generator)
    Y = torch.randn(3, 2, 6, 6, dtype=torch.float64, generator=generator) if cross else None
    calls = []
    original = bylayer.bylayer_ntk

    def spy(plan, problem, *args):
        calls.append(problem.X.shape[0])
        return original(plan, problem, *args)

    monkeypatch.setattr(bylayer, "bylayer_ntk", spy)
    ours = empirical_ntk(net, X, Y, mode=mode, method="structured", progress=False)
    assert X.shape[0] in calls  # the whole problem went by layer
    reference = empirical_ntk(net, X, Y, mode=mode, method="jacobian", progress=False)
    assert ours.shape == reference.shape
    # float64 rounding of sums over a few hundred products
    assert float((ours - reference).abs().max()) <= 1e-12 * float(reference.abs().max())


def test_a_block_size_over_the_budget_is_refused_naming_one_that_fits() -> None:
    net = model()
    X = torch.randn(40, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with pytest.raises(MemoryError, match=r"block_size=40 needs .* pass block_size=(\d+) or less") as info:
        empirical_ntk(net, X, mode="full", method="structured", block_size=40, memory=200_000, progress=False)
    fits = int(info.value.args[0].split("pass block_size=")[1].split(" ")[0])
    assert 1 <= fits < 40
    ours = empirical_ntk(net, X, mode="full", method="structured", block_size=fits, memory=200_000, progress=False)
    reference = empirical_ntk(net, X, mode="full", method="jacobian", progress=False)
    assert float((ours - reference).abs().max()) <= 1e-12 * float(reference.abs().max())


def test_inputs_prepared_rows_by_rows_give_the_same_kernel(monkeypatch) -> None:
    """With nothing prepared beforehand and a share of the memory of a few numbers, every convolution's
    patches are formed a row at a time: the kernel is the explicit one all the same."""
    net = model()
    X = torch.randn(7, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    original = bylayer.kept

    def nothing_prepared(plan, problem, budget):
        found = original(plan, problem, budget)
        return None if found is None else (set(), found[1])

    calls = []
    site_grads = bylayer._site_grads

    def spy(site, a, g, with_weight, prepared, numbers):
        calls.append(bylayer._patch_rows(site, numbers) if site.kind == "conv" else None)
        return site_grads(site, a, g, with_weight, prepared, numbers)

    monkeypatch.setattr(bylayer, "kept", nothing_prepared)
    monkeypatch.setattr(bylayer, "PREPARED_SHARE", 10**12)
    monkeypatch.setattr(bylayer, "_site_grads", spy)
    ours = empirical_ntk(net, X, mode="trace", method="structured", progress=False)
    assert 1 in calls  # the convolutions' patches went one row at a time
    reference = empirical_ntk(net, X, mode="trace", method="jacobian", progress=False)
    assert float((ours - reference).abs().max()) <= 1e-12 * float(reference.abs().max())


@pytest.mark.parametrize("mode", ["trace", "diagonal"])
@pytest.mark.parametrize("cross", [False, True])
def test_the_by_layer_sum_in_chunks_is_the_whole_sum(mode: str, cross: bool) -> None:
    """Chunks of 3 samples (7 and 5 samples: uneven last chunks), each pair of chunks by layer, mirrored when
    Y is None: the explicit kernel (torch.func's Jacobian contraction)."""
    from ntkit.empirical.common import make_problem
    from ntkit.empirical.plan import make_plan

    net = model()
    generator = torch.Generator().manual_seed(4)
    X = torch.randn(7, 2, 6, 6, dtype=torch.float64, generator=generator)
    Y = torch.randn(5, 2, 6, 6, dtype=torch.float64, generator=generator) if cross else None
    problem, _ = make_problem(net, X, Y, mode, None)
    plan = make_plan(problem)
    assert bylayer.chunk_rows(plan, problem, 1 << 30) >= 7  # everything fits in one chunk at 1 GiB
    ours = bylayer.chunked_ntk(plan, problem, False, 1 << 30, 3)
    reference = empirical_ntk(net, X, Y, mode=mode, method="jacobian", progress=False)
    assert ours.shape == reference.shape
    assert float((ours - reference).abs().max()) <= 1e-12 * float(reference.abs().max())
    if not cross:
        assert torch.equal(ours, ours.transpose(0, 1))  # mirrored: exactly symmetric
