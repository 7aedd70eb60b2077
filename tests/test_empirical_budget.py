"""Every empirical-NTK method keeps the working memory `memory=`: it sizes its blocks from it, or raises a
MemoryError before allocating that names the budget and an option that fits.

The peak is measured, not planned: torch's profiler records every allocation and free of a tensor, and their
running sum is the memory the call held at each moment. The result itself (N, N, K, K) is not part of the
working memory and is subtracted.
"""

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import ntkit as nk


def peak_bytes(fn):
    """(the largest number of bytes of tensors alive at once while fn() ran, fn's result)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # a torch without the raw allocation events
        pytest.skip("this torch's profiler does not expose its allocation events")
    held = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        held += nbytes
        peak = max(peak, held)
    return peak, result


class Dense(nn.Module):
    """Two affine maps around a tanh, outside an nn.Sequential: the generic methods."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 200), nn.Linear(200, 5)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def cases():
    torch.manual_seed(0)
    X, images = torch.randn(16, 8, dtype=torch.float64), torch.randn(16, 1, 8, 8, dtype=torch.float64)
    stack = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5)).double()
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).double()
    return {"fully-connected": (stack, X, "structured"), "structured": (cnn, images, "structured"),
            "jacobian": (Dense().double(), X, "jacobian"), "ntk_vp": (Dense().double(), X, "ntk_vp"),
            "auto": (Dense().double(), X, "auto")}  # its checks of the methods on two samples within the budget too


CASES = cases()


@pytest.mark.parametrize("case", list(CASES))
def test_budget_too_small_raises_naming_memory(case):
    model, X, method = CASES[case]
    with pytest.raises(MemoryError, match=r"1\.00 kB.*pass memory="):  # the budget, and the option that fits
        nk.empirical_ntk(model, X, method=method, memory=1000)


@pytest.mark.parametrize("case", list(CASES))
def test_moderate_budget_is_honoured(case):
    model, X, method = CASES[case]
    budget = 400_000  # well below what the default blocks take for 16 samples
    want = nk.empirical_ntk(model, X, method=method)
    peak, got = peak_bytes(lambda: nk.empirical_ntk(model, X, method=method, memory=budget))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))
    assert peak - got.numel() * got.element_size() <= budget


def test_jacobian_block_size_over_budget_names_the_block_that_fits():
    model, X, _ = CASES["jacobian"]
    with pytest.raises(MemoryError, match=r"block_size=64 needs .* memory=500,000 bytes .* block_size=(\d+) or less"
                       ) as info:
        nk.empirical_ntk(model, X, method="jacobian", block_size=64, memory=500_000)
    fits = int(info.value.args[0].split("pass block_size=")[1].split()[0])
    peak, got = peak_bytes(lambda: nk.empirical_ntk(model, X, method="jacobian", block_size=fits, memory=500_000))
    assert peak - got.numel() * got.element_size() <= 500_000
    want = nk.empirical_ntk(model, X, method="jacobian")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))


def test_ntk_vp_message_counts_its_parameter_sized_vectors():
    """ntk_vp keeps K parameter-sized vectors per sample: its MemoryError says so and offers memory= that fits,
    and offers method='jacobian' only where one sample of it fits."""
    model, X, _ = CASES["ntk_vp"]
    with pytest.raises(MemoryError, match=r"2,805 parameters times 5 outputs.*pass memory=(\d[\d,]*) or more") as info:
        nk.empirical_ntk(model, X, method="ntk_vp", memory=100_000)
    assert "method='jacobian'" not in str(info.value)  # one sample of the jacobian method needs 209 kB
    enough = int(str(info.value).split("pass memory=")[1].split()[0].replace(",", ""))
    nk.empirical_ntk(model, X[:2], method="ntk_vp", memory=enough)
