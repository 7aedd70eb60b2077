"""Fuzz suite (hypothesis) over the architectures of `ntkit.layers`: convolution and pooling stacks, and fully
connected chains through the layer records. Each example returns finite values that agree with a reference, or
raises a ValueError naming the cause.

References and tolerances (in units of sqrt(K(x, x) K(y, y)), as in `test_fuzz_kernels.py`):
- float32 against the same architecture in float64: 2e-3 plus 1e-3 per layer (the arc-cosine cone, sqrt(eps)
  per layer), plus, with pooling, 1e-5 of the kernel of the same stack without pooling (pooled averages of terms
  of both signs cancel at float32's precision);
- a fully-connected chain with a different W_std and b_std in every layer (the layer records, not the fused
  recursion) against an independent float64 NumPy recursion of the ReLU arc-cosine formulas: 1e-9;
- always: the diagonal of the Gram equals `kernel_diag`, the Gram is symmetric and inside Cauchy-Schwarz.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import ntkit as nk
from ntkit._range import KernelUnderflowWarning

pytestmark = pytest.mark.usefixtures("one_thread")

log_scale = st.floats(-3, 3).map(lambda e: 10.0**e)
ACTIVATIONS = {"relu": nk.ReLU, "erf": nk.Erf, "abs": nk.Abs, "gelu": nk.GELU, "tanh": nk.Tanh}


@st.composite
def conv_problems(draw):
    """A Conv1d stack on (N, C, L) inputs: conv, activation, optional average pooling, conv or not, then
    GlobalAvgPool or Flatten, and a Linear read-out; inputs scaled by 10^(-10 .. 10), some rows zero or repeated."""
    n, channels, length = draw(st.integers(0, 3)), draw(st.integers(1, 2)), draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.standard_normal((n, channels, length)) * 10.0 ** draw(st.floats(-10, 10))
    if n > 1 and draw(st.booleans()):
        X[-1] = X[0] * draw(st.sampled_from([1.0, -1.0, 0.0, 3.0]))
    act = draw(st.sampled_from(sorted(ACTIVATIONS)))
    w, b = draw(log_scale), draw(st.one_of(st.just(0.0), log_scale))
    layers = [nk.Conv1d(draw(st.integers(1, 3)), padding=draw(st.sampled_from(["same", "circular"])), W_std=w,
                        b_std=b), ACTIVATIONS[act]()]
    if length >= 2 and draw(st.booleans()):
        layers.append(nk.AvgPool1d(2))
    if draw(st.booleans()):
        layers += [nk.Conv1d(1, W_std=w, b_std=b), ACTIVATIONS[act]()]
    layers.append(nk.GlobalAvgPool() if draw(st.booleans()) else nk.Flatten())
    layers.append(nk.Linear(W_std=w, b_std=b))
    return nk.Sequential(*layers), X, act


def run(fn):
    """fn(), with any warning other than an announced underflow an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", KernelUnderflowWarning)
        return fn()


@given(problem=conv_problems(), get=st.sampled_from(["ntk", "nngp"]))
@example(problem=(nk.Sequential(nk.Conv1d(1, b_std=0.0), nk.Erf(), nk.GlobalAvgPool(), nk.Linear(b_std=0.0)),
                  np.array([[[12.57302211, -13.21048633]]]), "erf"), get="ntk")   # pooled terms cancel
def test_conv_stacks_are_finite_consistent_and_agree_across_dtypes(problem, get) -> None:
    arch, X, act = problem
    try:
        K64 = run(lambda: arch.kernel(X, get=get))
        d64 = run(lambda: arch.kernel_diag(X, get=get))
    except ValueError as error:   # a range error or a refusal, which must name what is wrong
        assert any(word in str(error) for word in ("range", "resolve", "layer")), str(error)
        return
    assert K64.shape == (len(X), len(X)) and np.isfinite(K64).all(), "a silent inf or NaN in float64"
    np.testing.assert_allclose(K64, K64.T, rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.diag(K64), d64, rtol=1e-9, atol=1e-300)
    root = np.sqrt(np.abs(d64))
    scale = root[:, None] * root[None, :]
    assert np.all(np.abs(K64) <= scale * (1 + 1e-6) + 1e-300)
    X32 = torch.as_tensor(X, dtype=torch.float32)
    try:
        K32 = run(lambda: arch.kernel(X32, get=get)).double().numpy()
    except ValueError as error:
        assert any(word in str(error) for word in ("range", "float32", "layer")), str(error)
        return
    assert np.isfinite(K32).all(), "a silent inf or NaN in float32"
    K64_of_32 = arch.kernel(X32.double(), get=get).numpy()     # the same numbers: only the arithmetic differs
    depth = sum(isinstance(layer, (nk.Conv1d, nk.Linear)) for layer in arch.layers)
    tol = 2e-3 + 1e-3 * depth
    if act in ("erf", "gelu", "tanh"):    # eps q, as for the MLP kernels (test_fuzz_kernels.tolerance)
        tol += 6e-8 * float(np.abs(d64).max(initial=0.0))
    # pooling averages terms of both signs (antipodal positions), which float32 cancels at its own precision: the
    # same stack without pooling gives the size of those terms
    pooled = [layer for layer in arch.layers if isinstance(layer, (nk.GlobalAvgPool, nk.AvgPool1d))]
    slack = 1e-30
    if pooled:
        plain = nk.Sequential(*[nk.Flatten() if isinstance(layer, nk.GlobalAvgPool) else layer
                                for layer in arch.layers if not isinstance(layer, nk.AvgPool1d)])
        slack += 1e-5 * float(np.abs(plain.kernel_diag(X32.double(), get=get).numpy()).max(initial=0.0))
    assert np.all(np.abs(K32 - K64_of_32) <= tol * scale + slack), np.max(np.abs(K32 - K64_of_32) / (scale + 1e-300))


def relu_reference(X: np.ndarray, ws: list[float], bs: list[float]) -> np.ndarray:
    """Theta of Linear(ws[0], bs[0]), ReLU, Linear(ws[1], bs[1]), ..., by the arc-cosine formulas in NumPy (float64):
    Sigma' = w^2 sqrt(q1 q2) (sin t + (pi - t) cos t) / (2 pi) + b^2, SigmaDot = w^2 (pi - t) / (2 pi)."""
    sigma = ws[0] ** 2 * (X @ X.T) / X.shape[1] + bs[0] ** 2
    theta = sigma.copy()
    for w, b in zip(ws[1:], bs[1:], strict=True):
        q = np.diag(sigma).copy()
        root = np.sqrt(np.outer(q, q))
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.clip(np.where(root > 0, sigma / root, 1.0), -1.0, 1.0)
        t = np.arccos(cos)
        np.fill_diagonal(t, 0.0)
        dot = w**2 * (math.pi - t) / (2 * math.pi)
        sigma = w**2 * root * (np.sin(t) + (math.pi - t) * cos) / (2 * math.pi) + b**2
        theta = theta * dot + sigma
    return theta


@given(depth=st.integers(2, 6), data=st.data())
@example(depth=2, data=None)
def test_fully_connected_records_match_the_arc_cosine_recursion(depth, data) -> None:
    """A chain with a different W_std and b_std in each layer goes through the layer records (not the fused MLP
    recursion); its NTK against the formulas of the paper's ReLU network, written out in NumPy."""
    if data is None:
        ws, bs, X = [1.0, 2.0], [0.1, 0.0], np.array([[1.0, 0.5], [-0.3, 2.0], [0.0, 0.0]])
    else:
        ws = [data.draw(st.floats(0.3, 3.0)) for _ in range(depth)]
        bs = [data.draw(st.one_of(st.just(0.0), st.floats(0.01, 1.0))) for _ in range(depth)]
        n, d = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
        X = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).standard_normal((n, d))
    layers = []
    for index, (w, b) in enumerate(zip(ws, bs, strict=True)):
        layers.append(nk.Linear(W_std=w, b_std=b))
        if index < len(ws) - 1:
            layers.append(nk.ReLU())
    arch = nk.Sequential(*layers)
    K = arch.kernel(X)
    reference = relu_reference(X, ws, bs)
    root = np.sqrt(np.abs(np.diag(reference)))
    scale = root[:, None] * root[None, :]
    # the cone: where two rows are collinear the arccos of a rounded cosine costs sqrt(eps) per layer
    assert np.all(np.abs(K - reference) <= (1e-9 + 3e-8 * depth) * scale + 1e-300), \
        np.max(np.abs(K - reference) / (scale + 1e-300))


def test_conv_stack_past_sqrt_of_the_float32_range_agrees_with_float64() -> None:
    """Variances of 1.6e20 at the activation: their product (2.7e40) is past float32's range, the kernel (3.3e26) is
    not. The maps scale the variances instead of multiplying them."""
    arch = nk.Sequential(nk.Conv1d(1, W_std=1000.0, b_std=0.0), nk.Abs(), nk.GlobalAvgPool(),
                         nk.Linear(W_std=1000.0, b_std=0.0))
    X = torch.tensor([[[12573022.10933933, -13210486.32913019]]], dtype=torch.float32)
    K = arch.kernel(X)
    reference = arch.kernel(X.double())
    assert 1e26 < float(reference) < 1e27
    torch.testing.assert_close(K.double(), reference, rtol=1e-3, atol=0)


def test_conv_stack_of_tiny_variances_agrees_with_float64() -> None:
    """Variances of 1e-20: their product (1e-40) is below float32's normal range, the kernel (1.2e-26) is not."""
    arch = nk.Sequential(nk.Conv1d(1, W_std=0.001, b_std=0.0), nk.Abs(), nk.Flatten(),
                         nk.Linear(W_std=0.001, b_std=0.0))
    X = np.array([[[3.45584192e-08, 8.21618144e-08]], [[3.30437076e-08, -1.30315723e-07]]])
    K32 = arch.kernel(torch.tensor(X, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(K32, arch.kernel(X), rtol=1e-3)     # float32 gave -3.1e-26 for 1.2e-26
