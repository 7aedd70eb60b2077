"""The finiteness check every input passes (`ntkit._checks.all_finite`): equal to testing each entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ntkit as nk
from ntkit._checks import all_finite

DTYPES = st.sampled_from([np.float16, np.float32, np.float64])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), dtype=DTYPES)
def test_all_finite_equals_entrywise_test(data, dtype) -> None:
    """Any shape, any values: NaN, +-inf, the dtype's largest values (whose sum overflows), subnormals."""
    info = np.finfo(dtype)
    special = st.sampled_from([np.nan, np.inf, -np.inf, float(info.max), -float(info.max), float(info.tiny) / 4, 0.0])
    values = st.one_of(st.floats(width=np.dtype(dtype).itemsize * 8, allow_nan=True, allow_infinity=True), special)
    array = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
                                 elements=values))
    tensor = torch.from_numpy(array)
    assert all_finite(tensor) == bool(np.isfinite(array).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_all_finite_on_sums_that_overflow_or_cancel(dtype) -> None:
    big = torch.finfo(dtype).max
    assert all_finite(torch.full((1000,), big, dtype=dtype))            # the sum is inf, every entry finite
    assert not all_finite(torch.tensor([big, -big, float("inf")], dtype=dtype))
    assert not all_finite(torch.tensor([float("inf"), float("-inf")], dtype=dtype))  # the sum is NaN
    assert not all_finite(torch.tensor([1.0, float("nan")], dtype=dtype))
    assert all_finite(torch.empty(0, 3, dtype=dtype))


def test_non_finite_input_named() -> None:
    X = np.ones((4, 3))
    X[2, 1] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or infinite values"):
        nk.MLP(2).kernel(X)
