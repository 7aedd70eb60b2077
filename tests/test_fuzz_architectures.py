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
from hypothesis import event, example, given
from hypothesis import strategies as st

import ntkit as nk
from fuzz_support import Calls
from ntkit._range import (
    RESOLUTION_TOL,
    KernelOverflowError,
    KernelRangeError,
    KernelUnderflowError,
    KernelUnderflowWarning,
)
from ntkit.layers import execute

pytestmark = pytest.mark.usefixtures("one_thread")

log_scale = st.floats(-3, 3).map(lambda e: 10.0**e)
F32 = torch.finfo(torch.float32)
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
@example(problem=(nk.Sequential(nk.Conv1d(1, b_std=0.0), nk.Tanh(), nk.GlobalAvgPool(), nk.Linear(b_std=0.0)),
                  np.array([[[12.57302211, -13.21048633]]]), "tanh"), get="ntk")   # ... and quadrature's SigmaDot
@example(problem=(nk.Sequential(nk.Conv1d(1, W_std=100.0, b_std=0.0), nk.Tanh(), nk.Flatten(),
                                nk.Linear(W_std=100.0, b_std=0.0)),
                  np.array([[[1257.30221093, -1321.04863291]], [[6404.22650443, 1049.00117153]]]), "tanh"),
         get="ntk")   # variances of 1e10: the quadrature missed E[tanh'(u)^2] silently (K(x, y) 250 K(x, x))
@example(problem=(nk.Sequential(nk.Conv1d(1, W_std=100.0, b_std=100.0), nk.Tanh(), nk.Flatten(),
                                nk.Linear(W_std=100.0, b_std=100.0)),
                  np.array([[[0.00012573, -0.0001321]], [[0.00064042, 0.0001049]]]), "tanh"),
         get="nngp")   # quadrature at variance 1e4: K(x, y) past K(x, x) by 5e-6
@example(problem=(nk.Sequential(nk.Conv1d(1, W_std=1000.0, b_std=0.0), nk.Erf(), nk.GlobalAvgPool(),
                                nk.Linear(W_std=1000.0, b_std=0.0)),
                  np.array([[[81646.89611207, -85786.47166326]], [[415878.70564322, 68120.20922938]]]), "erf"),
         get="ntk")   # eps q of 1 in float64: K(x, y) past Cauchy-Schwarz
@example(problem=(nk.Sequential(nk.Conv1d(1, W_std=100.0, b_std=0.0), nk.Erf(), nk.Conv1d(1, W_std=100.0, b_std=0.0),
                                nk.Erf(), nk.Flatten(), nk.Linear(W_std=100.0, b_std=0.0)),
                  np.array([[[0.35877341, 1.51067731]], [[-1.78633124, 1.68661351]]]), "erf"),
         get="ntk")   # the second erf at q = 1e4 near correlation -1: 3e-2 in float32 (sqrt(eps) q)
@example(problem=(nk.Sequential(nk.Conv1d(1, W_std=100.0, b_std=0.0), nk.Tanh(), nk.AvgPool1d(2),
                                nk.Conv1d(1, W_std=100.0, b_std=0.0), nk.Tanh(), nk.Flatten(),
                                nk.Linear(W_std=100.0, b_std=0.0)),
                  np.array([[[0.12573022, -0.13210486]]]), "tanh"), get="ntk")   # the stack without pooling refused
@example(problem=(nk.Sequential(nk.Conv1d(1, W_std=1000.0, b_std=0.0), nk.Erf(), nk.GlobalAvgPool(),
                                nk.Linear(W_std=1000.0, b_std=0.0)),
                  np.array([[[1.25730221, -1.32104863]]]), "erf"), get="nngp")   # pooled terms at eps q, q = 1.6e6
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
    # inside Cauchy-Schwarz up to the maps' errors (quadrature's are admitted up to RESOLUTION_TOL), and with pooling
    # up to float64's cancellation of the averaged terms
    error = map_error(arch, torch.as_tensor(X), act, torch.float64)
    inside = 1e-6 + error + (RESOLUTION_TOL if act == "tanh" else 0.0)
    slack = (1e-12 + error) * pooled_size(arch, torch.as_tensor(X), get)
    assert np.all(np.abs(K64) <= scale * (1 + inside) + slack + 1e-300)
    X32 = torch.as_tensor(X, dtype=torch.float32)
    try:
        K32 = run(lambda: arch.kernel(X32, get=get)).double().numpy()
    except ValueError as error:
        assert any(word in str(error) for word in ("range", "float32", "layer")), str(error)
        return
    assert np.isfinite(K32).all(), "a silent inf or NaN in float32"
    K64_of_32 = arch.kernel(X32.double(), get=get).numpy()     # the same numbers: only the arithmetic differs
    tol, slack = float32_tolerance(arch, X32.double(), get, act)
    assert np.all(np.abs(K32 - K64_of_32) <= tol * scale + 1e-30 + slack), \
        np.max(np.abs(K32 - K64_of_32) / (scale + 1e-300))


def float32_tolerance(arch: nk.Sequential, X64: torch.Tensor, get: str, act: str) -> tuple[float, float]:
    """(tol, slack): a float32 kernel may differ from the float64 one on the same numbers by tol sqrt(K(x, x) K(y, y))
    + slack.
    - tol: 2e-3 plus 1e-3 per weight layer (the arc-cosine cone, sqrt(eps) per layer), plus `map_error`;
    - slack, with pooling: pooled averages of terms of both signs (antipodal positions) cancel at float32's
      precision, so the size of those terms (`pooled_size`) times 1e-5, 1e-4 for quadrature (its float32 SigmaDot
      keeps about 5e-5 at variances past 20), plus `map_error`."""
    depth = sum(layer.weights for layer in arch.layers)
    error = map_error(arch, X64, act, torch.float32)
    slack = ((1e-4 if act == "tanh" else 1e-5) + error) * pooled_size(arch, X64, get)
    return 2e-3 + 1e-3 * depth + error, slack


def map_error(arch: nk.Sequential, X64: torch.Tensor, act: str, dtype: torch.dtype) -> float:
    """The relative error in `dtype` of the maps of erf, gelu and tanh at the largest variance q they are fed: they
    depend on q1 q2 - c^2, which they get only to about c^2 times c's relative error: eps q (as for the MLP kernels,
    `test_fuzz_kernels.tolerance`), and sqrt(eps) q after another such activation, whose c near correlation +-1
    keeps only sqrt(eps) (the asin's cone)."""
    if act not in ("erf", "gelu", "tanh"):
        return 0.0
    _, q = exact_diagonals(arch, X64, False)
    largest = max((float(v.max()) for v in q if v.size), default=0.0)
    eps = float(torch.finfo(dtype).eps)
    activations = sum(isinstance(layer, nk.Activation) for layer in arch.layers)
    return (math.sqrt(eps) if activations > 1 else eps) * largest


def pooled_size(arch: nk.Sequential, X64: torch.Tensor, get: str) -> float:
    """With pooling, the size of the terms it averages: the diagonal of the same stack without pooling (in float64,
    `exact_diagonals`); else 0."""
    if not len(X64) or not any(isinstance(layer, (nk.GlobalAvgPool, nk.AvgPool1d)) for layer in arch.layers):
        return 0.0
    plain = nk.Sequential(*[nk.Flatten() if isinstance(layer, nk.GlobalAvgPool) else layer
                            for layer in arch.layers if not isinstance(layer, nk.AvgPool1d)])
    final = exact_diagonals(plain, X64, get == "ntk")[0][-1]    # unchecked: its variances may be refused
    values = final.theta if get == "ntk" and final.theta is not None else final.sigma
    return float(np.abs(values.numpy()).max(initial=0.0))


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


def test_conv_stack_past_the_float32_range_is_refused_naming_the_layer() -> None:
    """Exact variances of about 1e41 after the second convolution: past float32, inside float64."""
    arch = nk.Sequential(nk.Conv1d(3, W_std=1000.0), nk.ReLU(), nk.Conv1d(3, W_std=1000.0), nk.ReLU(),
                         nk.GlobalAvgPool(), nk.Linear(W_std=1000.0))
    X = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0)) * 1e15
    with pytest.raises(KernelOverflowError, match=r"NNGP exceeds the float32 range .* at layer 2 \(Conv1d\) .*"
                                                  r"use float64, or a smaller W_std \(the largest is 1000"):
        arch.kernel(X)
    with pytest.raises(KernelOverflowError, match="at layer 2"):
        arch.kernel_diag(X)
    K = arch.kernel(X.double())
    assert torch.isfinite(K).all() and float(K.max()) > 1e45


def test_conv_stack_underflow_warns_or_raises_as_the_exact_values_say() -> None:
    """Inputs of norm 1e-22 in float32: x.x (1e-44) is below the normal range. Three layers of W_std = 1000 bring
    the exact kernel back to about 1e-27, inside the range: an error naming the input. With W_std = 1e-3 the exact
    kernel (about 1e-62) is below the range itself: a warning, and zeros. With a bias it does not matter."""
    X = torch.randn(3, 2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e-22

    def stack(w: float, b: float) -> nk.Sequential:
        return nk.Sequential(nk.Conv1d(3, W_std=w, b_std=b), nk.ReLU(), nk.Conv1d(3, W_std=w, b_std=b), nk.ReLU(),
                             nk.Flatten(), nk.Linear(W_std=w, b_std=b))

    with pytest.raises(KernelUnderflowError, match=r"underflows the float32 range .* at the input, .*use float64"):
        stack(1000.0, 0.0).kernel(X.float())
    K64 = stack(1000.0, 0.0).kernel(X)
    assert 1e-30 < float(K64.diagonal().min()) and float(K64.max()) < 1e-20
    with pytest.warns(KernelUnderflowWarning, match=r"underflows the float32 range at the input: .*W_std"):
        K = stack(1e-3, 0.0).kernel(X.float())
    assert torch.equal(K, torch.zeros(3, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        K = stack(1000.0, 0.1).kernel(X.float())
    torch.testing.assert_close(K.double(), stack(1000.0, 0.1).kernel(X), rtol=1e-3, atol=0)   # the cone


# ------------------------------------------------------------------------------------- across the dtypes' range


@st.composite
def range_problems(draw):
    """A layer stack whose weight layers each draw their own W_std (1e-3 .. 1e3) and b_std (0 or 1e-3 .. 1e3; or none
    has a bias), on inputs whose examples have norms from 1e-30 to 1e30 (one scale for all, or one each; often past
    1e15 or below 1e-15; some examples zero, repeated or opposite), in float32 or float64. Convolutions (Conv1d,
    optional Residual branch and LayerNorm, an activation, optional AvgPool1d and a second Conv1d, then GlobalAvgPool
    or Flatten) or dense layers (Linear, optional Residual and LayerNorm, up to three activations), then a Linear
    read-out."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    act = draw(st.sampled_from(["relu", "abs", "erf", "gelu"]))
    Act = ACTIVATIONS[act]

    no_bias = draw(st.booleans())     # else each layer draws b_std = 0 or 1e-3 .. 1e3

    def weights() -> dict:
        return {"W_std": draw(log_scale), "b_std": 0.0 if no_bias else draw(st.one_of(st.just(0.0), log_scale))}

    if draw(st.booleans()):
        shape: tuple[int, ...] = (draw(st.integers(1, 2)), draw(st.integers(2, 4)))
        layers = [nk.Conv1d(draw(st.integers(1, 3)), padding=draw(st.sampled_from(["same", "circular"])),
                            **weights())]
        if draw(st.booleans()):
            layers.append(nk.Residual(Act(), nk.Conv1d(1, **weights())))
        if draw(st.booleans()):
            layers.append(nk.LayerNorm())
        layers.append(Act())
        if draw(st.booleans()):
            layers.append(nk.AvgPool1d(2))
        if draw(st.booleans()):
            layers += [nk.Conv1d(1, **weights()), Act()]
        layers.append(nk.GlobalAvgPool() if draw(st.booleans()) else nk.Flatten())
    else:
        shape = (draw(st.integers(1, 3)),)
        layers = [nk.Linear(**weights())]
        if draw(st.booleans()):
            layers.append(nk.Residual(Act(), nk.Linear(**weights())))
        if draw(st.booleans()):
            layers.append(nk.LayerNorm())
        layers.append(Act())
        for _ in range(draw(st.integers(0, 2))):
            layers += [nk.Linear(**weights()), Act()]
    layers.append(nk.Linear(**weights()))
    n = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.standard_normal((n, *shape))
    exponents = st.one_of(st.floats(-30, 30), st.floats(-30, -15), st.floats(15, 30))
    base = draw(exponents)
    same_scale = draw(st.booleans())
    for i in range(n):
        X[i] *= 10.0 ** (base if same_scale else draw(exponents)) / np.linalg.norm(X[i])
        kind = draw(st.sampled_from(["plain", "plain", "zero", "repeat", "opposite"]))
        if kind == "zero":
            X[i] = 0.0
        elif i and kind != "plain":
            X[i] = X[draw(st.integers(0, i - 1))] * (1.0 if kind == "repeat" else -1.0)
    return nk.Sequential(*layers), torch.as_tensor(X, dtype=dtype), act


def check_message(error: Exception, dtype: torch.dtype) -> None:
    """A range error names the kernel, the layer, the dtype's range and a fix."""
    text = str(error)
    assert "layer" in text and str(dtype).removeprefix("torch.") in text, text
    if dtype == torch.float32:
        assert "use float64" in text, text
    assert "W_std" in text and "norm" in text, text


def exact_diagonals(arch: nk.Sequential, X64: torch.Tensor, want_ntk: bool) -> tuple[list, list[np.ndarray]]:
    """Every layer's diagonals in float64 (the input's x.x / C first) and the variances fed to the activations and
    LayerNorm: the self pass of the implementation, in float64, without its range checks."""
    steps, need = arch.plan(tuple(X64.shape[1:]))
    q, _, _, diagonals = execute.self_pass(X64, steps, need, want_ntk, len(X64) or 1)
    return diagonals, [v.numpy() for v in q]


def justified(error: Exception, arch: nk.Sequential, X64: torch.Tensor, get: str, dtype: torch.dtype) -> bool:
    """Whether the exact (float64) diagonals leave `dtype`'s range: past finfo.max / 64 for an overflow (HEADROOM 2,
    and a pooled mean sums up to 25 positions before it divides), or positive below tiny 2^24 (few digits left) for an
    underflow."""
    diagonals, _ = exact_diagonals(arch, X64, get == "ntk")
    info = torch.finfo(dtype)
    values = [d.sigma.numpy() for d in diagonals] + [d.theta.numpy() for d in diagonals if d.theta is not None]
    if isinstance(error, KernelOverflowError):
        return any(v.size and np.max(v) > info.max / 64 for v in values)
    return any(np.any((v > 0) & (v < info.tiny * 2.0**24)) for v in values)


@given(problem=range_problems(), get=st.sampled_from(["ntk", "nngp"]))
@example(problem=(nk.Sequential(nk.Conv1d(1, W_std=1000.0, b_std=0.0), nk.Abs(), nk.GlobalAvgPool(),
                                nk.Linear(W_std=1000.0, b_std=0.0)),
                  torch.tensor([[[12573022.10933933, -13210486.32913019]]]), "abs"), get="ntk")   # q1 q2 was inf
@example(problem=(nk.Sequential(nk.Conv1d(1, W_std=0.001, b_std=0.0), nk.Abs(), nk.Flatten(),
                                nk.Linear(W_std=0.001, b_std=0.0)),
                  torch.tensor([[[3.45584192e-08, 8.21618144e-08]], [[3.30437076e-08, -1.30315723e-07]]]), "abs"),
         get="ntk")   # q1 q2 was subnormal: a kernel of the wrong sign
@example(problem=(nk.Sequential(nk.Conv1d(1, b_std=0.0), nk.Erf(), nk.AvgPool1d(2),
                                nk.Conv1d(1, W_std=100.0, b_std=0.0), nk.Erf(), nk.Flatten(), nk.Linear(b_std=0.0)),
                  torch.tensor([[[6894138.0, -7243677.5]]]), "erf"), get="ntk")   # a pooled variance below 0: NaN
@example(problem=(nk.Sequential(nk.Conv1d(1, b_std=0.0), nk.Abs(), nk.Conv1d(1, b_std=0.0), nk.Abs(),
                                nk.GlobalAvgPool(), nk.Linear(b_std=0.0)),
                  torch.tensor([[[6.8941, -7.2437]], [[9.8685, 1.6164]]], dtype=torch.float64), "abs"),
         get="ntk")   # Cauchy-Schwarz holds to the cone's sqrt(eps), not to 1e-9
def test_layer_stacks_across_the_range_agree_with_float64_or_refuse(problem, get) -> None:
    """Each example returns a finite Gram (symmetric, its diagonal `kernel_diag`'s, the cross kernel against the
    first half of the examples the same to the tolerance) that in float32 agrees with the same stack in float64 on
    the same numbers (`float32_tolerance`; in float64: inside Cauchy-Schwarz); or raises a `KernelRangeError` naming
    layer, dtype and fix, only where the exact diagonals leave the dtype's range; or warns `KernelUnderflowWarning`
    only where exact values lie below the normal range, which then may come back as 0 (an absolute slack of
    tiny 2^24)."""
    arch, X, act = problem
    dtype = X.dtype
    X64 = X.double()
    calls = Calls()
    try:
        K = calls(lambda: arch.kernel(X, get=get)).double().numpy()
        d = calls(lambda: arch.kernel_diag(X, get=get)).double().numpy()
    except KernelRangeError as error:
        event(f"{type(error).__name__} in {dtype}")
        check_message(error, dtype)
        assert justified(error, arch, X64, get, dtype), f"needless range error: {error}"
        return
    event(f"{'underflow warning' if calls.underflowed else 'values'} in {dtype}")
    assert np.isfinite(K).all() and np.isfinite(d).all(), "a silent inf or NaN"
    np.testing.assert_array_equal(K, K.T)
    np.testing.assert_array_equal(np.diag(K), d)
    info = torch.finfo(dtype)
    diagonals, _ = exact_diagonals(arch, X64, get == "ntk")
    slack = 1e-30 if dtype == torch.float32 else 1e-300
    if calls.underflowed:
        values = [t.sigma.numpy() for t in diagonals]
        assert any(np.any((v > 0) & (v < info.tiny * 2.0**24)) for v in values), "needless underflow warning"
        slack = info.tiny * 2.0**24
    # the kernel against the first half of the examples (none for one example): the tiles of a cross kernel
    half = len(X) // 2
    cross = calls(lambda: arch.kernel(X, X[:half], get=get)).double().numpy()
    if dtype == torch.float64:   # no wider reference: inside Cauchy-Schwarz, as in the test above
        error = map_error(arch, X64, act, dtype)
        root = np.sqrt(np.maximum(np.abs(d), slack))
        allowed = root[:, None] * root[None, :] * (1e-6 + error) + (1e-12 + error) * pooled_size(arch, X64, get) + slack
        assert np.all(np.abs(K) <= root[:, None] * root[None, :] + allowed)
        assert np.all(np.abs(cross - K[:, :half]) <= allowed[:, :half])
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KernelUnderflowWarning)
        K64 = arch.kernel(X64, get=get).numpy()
        d64 = arch.kernel_diag(X64, get=get).numpy()
    root = np.sqrt(np.maximum(np.abs(d64), slack))
    scale = root[:, None] * root[None, :]
    tol, pooled = float32_tolerance(arch, X64, get, act)
    slack += pooled
    assert np.all(np.abs(K - K64) <= tol * scale + slack), np.max(np.abs(K - K64) / scale)
    assert np.all(np.abs(cross - K64[:, :half]) <= tol * scale[:, :half] + slack)


def test_an_underflow_warning_points_at_the_users_call() -> None:
    """The warning names the caller's line (not a line inside ntkit), for the MLP and for a layer stack."""
    X = torch.tensor([[1e-200], [1.0]], dtype=torch.float64)
    stack = nk.Sequential(nk.Linear(b_std=0.0), nk.ReLU(), nk.Linear(b_std=0.0), nk.ReLU(), nk.Linear(b_std=0.0))
    for arch in (nk.MLP(4, b_std=0.0), stack):
        with pytest.warns(KernelUnderflowWarning) as record:
            arch.kernel(X)
        assert {w.filename for w in record} == {__file__}
