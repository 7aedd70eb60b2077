"""Fuzz suite (hypothesis) over the analytic kernels: every example either returns finite values that agree
with a reference, or raises a `KernelRangeError` (a ValueError) that names the cause and the fix, and only
when the exact values really leave the dtype's range.

Generated: N from 0 to 6 rows (zero, duplicated, collinear and antipodal rows among them), input norms
from 1e-30 to 1e30, W_std and b_std from 1e-3 to 1e3 (b_std also 0), depth up to 100, every activation
(closed forms and quadrature), float32 and float64.

References and tolerances (errors are measured against the Cauchy-Schwarz scale sqrt(K(x, x) K(y, y)) of
each entry, the natural unit of a kernel value; `tolerance` below):
- float32 against the same kernel in float64: 1e-3 (1e-2 for quadrature) plus 3.5e-4 depth (1 + depth / 8) (the
  arc-cosine cone turns a rounding error eps in a correlation into sqrt(eps), 3e-4 in float32, at each layer),
  plus eps q for the non-homogeneous activations at variance q (not sign and step: they depend on the angle
  alone), plus 3e-3 per layer for quadrature past q = 20;
- float64, homogeneous activations without bias: K(a x, b y) = a b K(x, y) exactly, so the kernel of the
  inputs as given against the kernel of the unit-norm inputs, rescaled: 1e-7 plus 3e-8 depth (1 + depth / 8);
- the fused ReLU-family path against the activation's generic closed forms: the same tolerances;
- every result: symmetric where it must be, its diagonal equal to `kernel_diag`, inside Cauchy-Schwarz;
- a quadrature whose 2-D rule cannot resolve the variances is refused (a ValueError naming them) in float32 only
  where float64 refuses it too, and a range error there is judged by an accurate 1-D rule (`resolved_diagonals`).

Hypothesis profiles (tests/conftest.py): the default run is the fast profile; `--hypothesis-profile=slow`
runs many more examples. Every case found so far is kept below as an explicit `@example` (or a parametrized case).
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
from fuzz_support import Calls
from ntkit._range import (
    RESOLUTION_TOL,
    KernelOverflowError,
    KernelRangeError,
    KernelUnderflowError,
    KernelUnderflowWarning,
)
from ntkit.kernels import sigma_diagonals

CLOSED = ["relu", "leaky_relu", "abs", "identity", "erf", "sign", "step", "sin", "cos", "gelu"]
QUADRATURE = ["tanh", "sigmoid", "softplus", "elu", "selu", "silu", "mish", "softsign"]
ANGULAR = ("sign", "step")   # maps that depend on the angle alone
F32 = torch.finfo(torch.float32)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ strategies
log_scale = st.floats(-3, 3).map(lambda e: 10.0**e)
b_stds = st.one_of(st.just(0.0), log_scale, st.just(0.1))
w_stds = st.one_of(log_scale, st.just(1.0))
depths = st.one_of(st.integers(1, 5), st.integers(1, 100))


@st.composite
def inputs(draw, max_rows: int = 6, max_features: int = 4, features: int | None = None) -> np.ndarray:
    """Rows with norms from 1e-30 to 1e30; some rows zero, duplicated, collinear with or opposite to another."""
    n = draw(st.integers(0, max_rows))
    d = draw(st.integers(1, max_features)) if features is None else features
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.standard_normal((n, d))
    same_scale = draw(st.booleans())
    base = draw(st.floats(-30, 30))
    for i in range(n):
        exponent = base if same_scale else draw(st.floats(-30, 30))
        X[i] *= 10.0**exponent / np.linalg.norm(X[i])
        kind = draw(st.sampled_from(["plain", "plain", "zero", "duplicate", "collinear", "antipodal"]))
        if kind == "zero":
            X[i] = 0.0
        elif i and kind != "plain":
            j = draw(st.integers(0, i - 1))
            factor = {"duplicate": 1.0, "antipodal": -1.0}.get(kind) or 10.0 ** draw(st.floats(-3, 3))
            X[i] = factor * X[j]
    return X


def activation_names() -> st.SearchStrategy[str]:
    return st.sampled_from(CLOSED + QUADRATURE)


# ------------------------------------------------------------------------------------------------ helpers
def tolerance(dtype: torch.dtype, activation: str, depth: int, variance: float = 0.0) -> float:
    """Errors allowed against the reference, in units of sqrt(K(x, x) K(y, y)):
    - the arc-cosine cone turns a rounding error eps in a correlation into about sqrt(eps) (3.5e-4 in float32,
      2 sqrt(eps) = 3e-8 in float64) at each layer, even for exactly collinear or antipodal inputs; the angles'
      errors add up over the layers and Theta sums the layers, so the bound is that times depth (1 + depth / 8)
      (measured for antipodal inputs of abs in float64: 3.6e-7 at depth 16, 1.1e-6 at depth 32);
    - the maps of non-homogeneous activations (erf, gelu, quadrature) depend on q1 q2 - c^2 (sin and cos on the
      gap q1 + q2 - 2c), which rounding gets only to eps q1 q2 (eps q): a relative error up to about eps q for the
      largest variance q fed to them (`variance`), which leaves float32 without accuracy at variances past 1e7;
      for sin, cos and erf `ntkit.coincident` carries the gap of pairs near at layer 1 (duplicated, collinear,
      antipodal rows) or at a later layer followed by maps that grow gaps (a zero row and a small one after a
      layer of cos at W_std = 10) without cancellation, so the term stands for the other pairs only (gaps above
      NEAR q, or gaps that no later map grows: their error stays eps q); sign and step depend on the angle alone
      (scale-free), which has no such error;
    - sign and step have a cone that feeds on itself (theta -> sqrt(theta) per layer near correlation 1, and
      for sign near -1), which would leave inputs that differ below the dtype's resolution only eps^(2^-(L-1));
      `ntkit.coincident` recomputes those pairs with the angle carried exactly, so they need nothing more;
    - quadrature adds its own error (about 1e-8 at variances up to 2, 1e-4 up to 20); past variance 20 the maps
      the kernels still admit (`kernels.RESOLUTION_TOL`) keep about 3e-3 per layer."""
    eps = float(torch.finfo(dtype).eps)
    cone = 3.5e-4 if dtype == torch.float32 else 3e-8
    base = 1e-3 if dtype == torch.float32 else 1e-7
    if activation in QUADRATURE:
        base *= 10
        if variance > 20:     # past the variances of the accuracy table: the admitted maps keep about 3e-3
            cone += 3e-3
    if not nk.get_activation(activation).homogeneous and activation not in ANGULAR:
        base += eps * variance
    return base + cone * depth * (1 + depth / 8)


def largest_variance(X64: np.ndarray, arch: nk.MLP) -> float:
    """The largest Sigma^(l)(x, x) fed to an activation map (layers 1 .. L - 1), in float64."""
    diagonals = sigma_diagonals(torch.as_tensor(X64), arch.recursion)[:-1]
    return max((float(q.max()) for q in diagonals if q.numel()), default=0.0)


def cs_scale(K: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """sqrt(K(x, x) K(y, y)) for each entry: the unit kernel errors are measured in."""
    return np.sqrt(np.abs(dx))[:, None] * np.sqrt(np.abs(dy))[None, :]   # no underflow of the product


def justified(X64: np.ndarray, arch: nk.MLP, get: str, dtype: torch.dtype) -> bool:
    """True when the exact diagonals leave `dtype`'s range at some layer (computed in float64): then a range
    error is the right answer. Also true when float64 itself cannot hold them."""
    rec = arch.recursion
    try:
        q = [v.numpy() for v in sigma_diagonals(torch.as_tensor(X64), rec)]
        theta = arch.kernel_diag(X64, get="ntk") if get == "ntk" else None
    except KernelRangeError:
        return True
    except ValueError as error:   # a quadrature that cannot resolve these variances: a 1-D rule that can
        assert "does not resolve" in str(error), str(error)
        q, theta = resolved_diagonals(X64, arch)
        theta = theta if get == "ntk" else None
    info = torch.finfo(dtype)
    top = info.max / 4
    floor = info.tiny * 2.0**24       # below this, float32 keeps too few digits
    norms = (X64 * X64).sum(1)
    if norms.size and norms.max() > top:
        return True
    values = q
    if any(v.size and v.max() > top for v in values):
        return True
    if theta is not None and theta.size and np.max(theta) > top / 100:
        return True
    return any(np.any((v > 0) & (v < floor)) for v in values) or bool(
        np.any((norms > 0) & (norms < floor)) and arch.b_std == 0)


def gaussian_moments(act, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E[sigma(u)^2], E[sigma'(u)^2]) for u ~ N(0, q), each q (float64), by 16-point Gauss-Legendre panels in
    |z| = |u| / sqrt(q) with edges growing geometrically from 1e-4 / sqrt(q) to 40: the panels near 0 resolve a
    derivative that varies on a scale of 1 in u at any variance (tanh' at q = 1e6), which the kernels' 2-D rule
    cannot; written independently of the package's rules (only sigma and sigma' are the activation's own)."""
    nodes, weights = np.polynomial.legendre.leggauss(16)
    first, second = np.full(len(q), math.inf), np.full(len(q), math.inf)   # inf: a variance past float64
    for i, value in enumerate(np.asarray(q, dtype=np.float64)):
        if value == 0:   # u = 0
            zero = torch.zeros(1, dtype=torch.float64)
            first[i], second[i] = float(act(zero)[0]) ** 2, float(act.derivative(zero)[0]) ** 2
        if not 0 < value < math.inf:
            continue
        low = min(1e-4, 1e-4 / math.sqrt(value))
        edges = np.concatenate([[0.0], np.geomspace(low, 40.0, int(math.log2(40.0 / low)) + 2)])
        half = (edges[1:] - edges[:-1])[:, None] / 2
        z = (half * nodes + (edges[1:] + edges[:-1])[:, None] / 2).ravel()
        w = (half * weights).ravel() * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        u = torch.as_tensor(math.sqrt(value) * np.concatenate([z, -z]), dtype=torch.float64)
        f, d = act(u).detach().numpy(), act.derivative(u).detach().numpy()
        w = np.concatenate([w, w])
        first[i], second[i] = float(np.sum(w * f * f)), float(np.sum(w * d * d))
    return first, second


def resolved_diagonals(X64: np.ndarray, arch: nk.MLP) -> tuple[list[np.ndarray], np.ndarray]:
    """The Sigma^(l)(x, x) (l = 1 .. L) and Theta^(L)(x, x) of the paper's recursion (Proposition 1, Theorem 1),
    in float64 with the maps on the diagonal from `gaussian_moments`: the reference where the package's quadrature
    does not resolve the variances (and so refuses them)."""
    rec = arch.recursion
    w2, b2 = float(rec.W_std) ** 2, float(rec.b_std) ** 2
    with np.errstate(over="ignore", invalid="ignore"):
        q = w2 * np.sum(X64 * X64, axis=1) / X64.shape[1] + b2
        diagonals, theta = [q], q
        for _ in range(rec.depth - 1):
            e, e_dot = gaussian_moments(rec.activation, q)
            q = w2 * e + b2
            theta = theta * (w2 * e_dot) + q
            diagonals.append(q)
    return diagonals, theta


def check_refusal_in_float64(X64: np.ndarray, arch: nk.MLP, get: str) -> None:
    """A float32 call refused because the quadrature does not resolve its variances is refused in float64 too (the
    same variances, to rounding), or the float64 map's error is within a factor 2 of the threshold (float32
    diagonals and float32 evaluations of the error move it by a few eps per layer, a factor 2 is generous)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KernelUnderflowWarning)
        try:
            arch.kernel(X64, get=get)
            arch.kernel_diag(X64, get=get)
        except ValueError:   # the same refusal, or a range error
            return
        act = arch.recursion.activation
        diagonals = sigma_diagonals(torch.as_tensor(X64), arch.recursion)[:-1]
    variances = torch.cat([q for q in diagonals if q.numel()]) if diagonals else torch.zeros(0)
    variances = variances[variances > 2.0]
    assert variances.numel(), "float32 refused a quadrature whose float64 variances are all resolved"
    worst = float(act.resolution_error(variances)[:, : 2 if get == "ntk" else 1].max())
    assert worst > RESOLUTION_TOL / 2, f"float32 refused what float64 resolves (error {worst:.2g})"


def check_message(error: Exception, dtype: torch.dtype) -> None:
    """A range error names the kernel, the layer, the dtype's range and a fix."""
    text = str(error)
    assert "layer" in text and str(dtype).removeprefix("torch.") in text, text
    if dtype == torch.float32:
        assert "use float64" in text, text
    assert ("W_std" in text and "norm" in text), text


def underflow_slack(dtype: torch.dtype) -> float:
    """Absolute error allowed where an underflow was announced: values below the smallest normal number come
    back as 0 or with few digits."""
    return torch.finfo(dtype).tiny * 2.0**24


def below_normal(values: list[np.ndarray], dtype: torch.dtype) -> bool:
    """Whether any exact (float64) value lies below `dtype`'s normal range: then a warning is justified."""
    floor = torch.finfo(dtype).tiny * 2.0**24
    return any(np.any((v > 0) & (v < floor)) for v in values)


# ------------------------------------------------------------------------------------------------ the three calls
def test_deep_wide_float32_overflow_is_an_error_naming_layer_and_fix() -> None:
    X = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(KernelOverflowError, match=r"NTK exceeds the float32 range .* at layer 10.*use float64"):
        nk.MLP(depth=10, W_std=100).kernel(X)
    with pytest.raises(KernelOverflowError, match=r"NNGP exceeds the float32 range .* at layer 7.*W_std"):
        nk.MLP(depth=10, W_std=1000).kernel(X)
    K = nk.MLP(depth=10, W_std=100).kernel(X.double())      # float64 holds it (about 6e38)
    assert torch.isfinite(K).all() and 1e38 < float(K.max()) < 1e40
    S = nk.MLP(depth=10, W_std=100).kernel(X, get="nngp")   # the NNGP itself fits in float32 (about 6e37)
    assert torch.isfinite(S).all()
    torch.testing.assert_close(S.double(), nk.MLP(depth=10, W_std=100).kernel(X.double(), get="nngp"), rtol=1e-3,
                               atol=0)


def test_cross_kernel_overflow_is_an_error() -> None:
    """K(X, Y) with Y a copy of X holds the same overflowing diagonal as K(X)."""
    X = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(KernelOverflowError, match="NTK exceeds the float32 range"):
        nk.MLP(depth=10, W_std=100).kernel(X, X.clone())


def test_differentiable_kernel_overflow_is_an_error() -> None:
    X = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(KernelOverflowError, match="NTK exceeds the float32 range"):
        nk.MLP(depth=10, W_std=torch.tensor(100.0, requires_grad=True)).kernel(X)


def test_differentiable_cross_kernel_overflow_is_an_error() -> None:
    X = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(KernelOverflowError, match="NTK exceeds the float32 range"):
        nk.MLP(depth=10, W_std=torch.tensor(100.0, requires_grad=True)).kernel(X, X.clone())


def test_quadrature_refuses_variances_it_cannot_resolve() -> None:
    """tanh's derivative is a bump of width 1 at 0; at variance 4e4 the 2-D rule misses most of E[tanh'(u)^2]: the
    NTK is refused (naming layer, variance and fixes), the NNGP (no derivative) is still given, and accurately."""
    X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 100
    arch = nk.MLP(depth=3, activation="tanh")
    with pytest.raises(ValueError, match=r"does not resolve E\[sigma'\(u\)\^2\] .* layer 2.*erf"):
        arch.kernel(X)
    act = nk.get_activation("tanh")
    errors = act.resolution_error(torch.tensor([1.0, 20.0, 1e4], dtype=torch.float64))
    assert float(errors[:2].max()) < 1e-4 and float(errors[2, 1]) > 0.1
    assert float(errors[:, 0].max()) < 1e-3          # the Sigma map saturates gracefully
    arch.kernel(X, get="nngp")


def test_nearly_coincident_pairs_at_large_variance_are_finite() -> None:
    X = torch.tensor([[1.0, 0.0], [1.0, 1e-2]])
    K = nk.MLP(depth=5, W_std=1000.0, b_std=0.0).kernel(X)    # about 1.6e29, well inside float32
    assert torch.isfinite(K).all()


def test_range_errors_are_value_errors() -> None:
    assert issubclass(KernelOverflowError, ValueError) and issubclass(KernelOverflowError, OverflowError)
    assert issubclass(KernelUnderflowError, ValueError)


def test_underflow_warns_where_zero_is_the_nearest_value_and_raises_where_digits_are_lost() -> None:
    X = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # the exact values (about 1e-600) lie below float64's range: 0 is the nearest float64, so a warning
    with pytest.warns(KernelUnderflowWarning, match=r"NNGP underflows the float64 range at layer \d+: .*W_std"):
        K = nk.MLP(depth=100, W_std=1e-3, b_std=0.0).kernel(X)
    assert torch.equal(K, torch.zeros(4, 4))
    # inputs of norm 1e-25 in float32: x.x rounds to 0 at layer 1, but 9 layers of gain W_std^2 / 2 = 5e5 bring
    # the exact kernel back to about 1e1: an error, naming float64 first
    with pytest.raises(KernelUnderflowError, match=r"underflows the float32 range .* at layer 1, .*: use float64"):
        nk.MLP(depth=10, W_std=1000.0, b_std=0.0).kernel(X.float() * 1e-25)
    K64 = nk.MLP(depth=10, W_std=1000.0, b_std=0.0).kernel(X * 1e-25)
    assert torch.isfinite(K64).all() and float(K64.diagonal().min()) > 1e-2
    # a zero input without bias is exactly zero, not an underflow
    K = nk.MLP(depth=3, b_std=0.0).kernel(torch.zeros(2, 3))
    assert torch.equal(K, torch.zeros(2, 2))


def test_empty_inputs_give_empty_outputs() -> None:
    """N = 0: kernels return empty arrays of the right shape (like NumPy); estimators need at least one row."""
    arch = nk.MLP(depth=3)
    assert arch.kernel(torch.zeros(0, 3)).shape == (0, 0)
    assert arch.kernel(torch.zeros(0, 3), torch.ones(2, 3)).shape == (0, 2)
    assert arch.kernel(np.zeros((2, 3)), np.zeros((0, 3)), get="nngp").shape == (2, 0)
    assert arch.kernel_diag(torch.zeros(0, 3)).shape == (0,)


# ------------------------------------------------------------------------------------------------ the fuzz tests
@given(X=inputs(), activation=activation_names(), depth=depths, W_std=w_stds, b_std=b_stds,
       get=st.sampled_from(["ntk", "nngp"]))
@example(X=np.random.default_rng(0).standard_normal((20, 5)), activation="relu", depth=10, W_std=100.0, b_std=0.1,
         get="ntk")
@example(X=np.random.default_rng(0).standard_normal((20, 5)), activation="relu", depth=10, W_std=1000.0, b_std=0.1,
         get="ntk")
@example(X=np.array([[1e10]]), activation="sign", depth=2, W_std=1.0, b_std=0.0, get="ntk")  # angle: q^2 overflowed
@example(X=np.array([[1.0], [10.0]]), activation="erf", depth=2, W_std=1000.0, b_std=1.0, get="ntk")  # eps q
@example(X=np.array([[10.0], [10.0000001]]), activation="erf", depth=3, W_std=1000.0, b_std=0.0, get="ntk")
@example(X=np.array([[1e-20, 0.0], [0.0, 1e-20]]), activation="gelu", depth=3, W_std=1.0, b_std=0.0, get="nngp")
@example(X=np.array([[1e20]]), activation="relu", depth=2, W_std=1e-3, b_std=0.0, get="ntk")  # x.x overflows
@example(X=np.array([[1e20]]), activation="tanh", depth=2, W_std=1.0, b_std=0.0, get="ntk")   # and unresolved
@example(X=np.array([[3.40094972e-01, -9.40391094e-01], [4.52742378e-08, -8.91641374e-08]]), activation="relu",
         depth=2, W_std=1.0, b_std=0.0, get="ntk")
@example(X=np.array([[0.22824727, 0.91869853, 0.32232933], [0.22824727, 0.91869853, 0.32232933],
                    [-0.24542543, 0.95868613, -0.14383068]]), activation="sign", depth=3, W_std=1.0, b_std=0.0,
         get="ntk")   # duplicated rows of sign: the rounding of their correlation grew to 1e-2 by layer 3
@example(X=np.array([[0.6894138, -0.72436774], [6.89413798, -7.24367735]]), activation="sign", depth=4, W_std=1.0,
         b_std=0.0, get="ntk")   # collinear but for rounding: the projection lost the angle (1e-8), sign grows it
@example(X=np.array([[6.89413798e-01, -7.24367735e-01], [9.86849108e-01, 1.61644169e-01],
                    [-8.28835595e09, 5.59492231e09], [8.09114508e-13, 5.87651013e-13]]), activation="sign", depth=2,
         W_std=1.0, b_std=0.0, get="ntk")   # variances 1e20 and 1e-24 scaled together in `angle`: 1e-45, few digits
@example(X=np.array([[3e14, -7e14, 5e14], [3.00000003e14, -7.0000014e14, 5e14]]), activation="sign", depth=6,
         W_std=1.0, b_std=0.1, get="ntk")   # a near pair at variance 3e29: q1 q2 overflows float32
@example(X=np.array([[1e15, 0.0], [1e15, 1e10]]), activation="relu", depth=4, W_std=1.0, b_std=0.0,
         get="ntk")   # the determinant overflowed float32 (variance 5e29): the fast values were kept
@example(X=np.array([[1.0], [-1e-19]]), activation="relu", depth=2, W_std=1.0, b_std=0.0, get="ntk")  # few digits
@example(X=np.array([[2.26937877e08, -9.73909236e08], [9.72575344e08, 2.32588048e08],
                    [2.26937877e08, -9.73909236e08]]), activation="sin", depth=2, W_std=1.0, b_std=0.0,
         get="ntk")   # a duplicated pair with c past q by rounding: exp(c - q) = inf
@example(X=np.array([[1e-5], [0.0]]), activation="sign", depth=3, W_std=1.0, b_std=0.1, get="ntk")  # sign's cone
@example(X=np.array([[1.0]]), activation="tanh", depth=21, W_std=1000.0, b_std=0.0,
         get="ntk")   # the NTK (3e60) overflows float32, but the rule cannot resolve tanh' at q = 1e6 to show it
@example(X=np.array([[1e-4], [0.0]]), activation="cos", depth=5, W_std=10.0, b_std=1.0,
         get="ntk")   # the layer-1 gap q1 + q2 - 2c = 1e-6 lost 12% in float32; W^2 E[sin^2] = 50 grows it per layer
@example(X=np.array([[1e-4], [0.0]]), activation="cos", depth=10, W_std=10.0, b_std=0.0,
         get="ntk")   # far at layer 1 (q2 = 0), 7.5e-11 apart at layer 2 (variance 100): lost in float32, then x50
@example(X=np.array([[1e-6], [1e-4]]), activation="erf", depth=8, W_std=10.0, b_std=10.0,
         get="ntk")   # a gap of 1e-6 at variance 100, below float32's resolution, grown by chaos (was 1.2x the tol)
@example(X=np.array([[954.30518, -609.85142, -309.867], [969.53627, -452.35957, -483.74057],
                    [-954.30518, 609.85142, 309.867], [-954.30518, 609.85142, 309.867]]), activation="cos",
         depth=5, W_std=1.0, b_std=0.1747, get="ntk")   # duplicated rows at variance 5e5: the gap eps q from X @ X.T
def test_float32_kernel_agrees_with_float64_or_raises(X, activation, depth, W_std, b_std, get) -> None:
    """Gram and diagonal in float32: finite and within `tolerance` of float64, or a range error only if justified."""
    check_float32_against_float64(X, activation, depth, W_std, b_std, get)


@pytest.mark.parametrize("X, activation", [
    (np.array([[1.0], [-1.0], [1e-6], [1.0], [1e-4], [1.0]]), "tanh"),   # found by the slow profile
    (np.array([[1e-6], [1e-4]]), "tanh")])   # without the float64 recomputation: off by 0.1 of the diagonal
def test_float32_near_pairs_of_activations_without_the_carried_gap(X, activation) -> None:
    """Rows 1e-6 and 1e-4 under b_std = 10 have Sigma^(1) = 100 + 1e-10 and 100 + 1e-6, a gap of 1e-6 below float32's
    resolution at 100 (8e-6), so float32 alone treats them as one input; at W_std = 10 these maps grow a gap by about
    W^2 E[sigma'(u)^2] > 1 per layer (chaos), and by layer 8 the exact correlation is 0.895, float32's 1. The
    activations that carry the gap (ReLU family, sign, step, sin, cos, erf) get it to 1e-7 (tests/test_coincident.py);
    for the others (gelu, quadrature) the near pairs of a float32 block are recomputed in float64."""
    check_float32_against_float64(X, activation, 8, 10.0, 10.0, "ntk")


def check_float32_against_float64(X, activation, depth, W_std, b_std, get) -> None:
    """The body of `test_float32_kernel_agrees_with_float64_or_raises`."""
    run = Calls()
    arch = nk.MLP(depth=depth, activation=activation, W_std=W_std, b_std=b_std)
    X32 = torch.as_tensor(X, dtype=torch.float32)
    X64 = X32.double().numpy()             # the same numbers, so only the arithmetic differs
    try:
        K = run(lambda: arch.kernel(X32, get=get)).double().numpy()
        d = run(lambda: arch.kernel_diag(X32, get=get)).double().numpy()
    except KernelRangeError as error:
        check_message(error, torch.float32)
        assert justified(X64, arch, get, torch.float32), f"needless range error: {error}"
        return
    except ValueError as error:
        assert activation in QUADRATURE and "does not resolve" in str(error) and "layer" in str(error), str(error)
        check_refusal_in_float64(X64, arch, get)
        return
    assert K.shape == (len(X), len(X)) and d.shape == (len(X),)
    assert np.isfinite(K).all() and np.isfinite(d).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KernelUnderflowWarning)
        K64 = arch.kernel(X64, get=get)
        d64 = arch.kernel_diag(X64, get=get)
        variance = largest_variance(X64, arch)
    slack = 1e-30
    floor = np.abs(d64)
    if run.underflowed:   # values below the normal range, and the kernel between them and others, keep few digits
        assert below_normal([q.numpy() for q in sigma_diagonals(torch.as_tensor(X64), arch.recursion)],
                            torch.float32), "needless underflow warning"
        slack = underflow_slack(torch.float32)
        floor = np.maximum(floor, slack)
    scale = cs_scale(K64, floor, floor)
    tol = tolerance(torch.float32, activation, depth, variance)

    assert np.all(np.abs(K - K64) <= tol * scale + slack), np.max(np.abs(K - K64) / (scale + 1e-300))
    assert np.all(np.abs(d - d64) <= tol * np.abs(d64) + slack)


@given(X=inputs(), data=st.data(), activation=activation_names(), depth=depths, W_std=w_stds, b_std=b_stds,
       get=st.sampled_from(["ntk", "nngp"]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_cross_kernel_is_finite_or_raises(X, data, activation, depth, W_std, b_std, get, dtype) -> None:
    """K(X, Y) with separate inputs: finite and inside Cauchy-Schwarz with the diagonals, or a range error."""
    run = Calls()
    Y = data.draw(inputs(features=X.shape[1]), label="Y")
    arch = nk.MLP(depth=depth, activation=activation, W_std=W_std, b_std=b_std)
    Xt, Yt = torch.as_tensor(X, dtype=dtype), torch.as_tensor(Y, dtype=dtype)
    try:
        K = run(lambda: arch.kernel(Xt, Yt, get=get)).double().numpy()
        dx = run(lambda: arch.kernel_diag(Xt, get=get)).double().numpy()
        dy = run(lambda: arch.kernel_diag(Yt, get=get)).double().numpy()
    except KernelRangeError as error:
        check_message(error, dtype)
        return
    except ValueError as error:
        assert activation in QUADRATURE and "does not resolve" in str(error), str(error)
        return
    assert K.shape == (len(X), len(Y)) and np.isfinite(K).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KernelUnderflowWarning)
        variance = max(largest_variance(X, arch), largest_variance(Y, arch))
    tol = tolerance(dtype, activation, depth, variance)
    if run.underflowed:   # diagonals below the normal range came back with few digits
        floor = underflow_slack(dtype)
        dx, dy = np.maximum(np.abs(dx), floor), np.maximum(np.abs(dy), floor)
    assert np.all(np.abs(K) <= (1 + tol) * cs_scale(K, dx, dy) + 1e-30)


@given(X=inputs(), activation=st.sampled_from(["relu", "leaky_relu", "abs", "identity"]), depth=depths,
       W_std=w_stds)
@example(X=np.array([[10.0]]), activation="relu", depth=39, W_std=0.01)   # K(x, x)^2 underflows: compare roots
@example(X=np.array([[0.001]]), activation="relu", depth=66, W_std=10.0**2.5)   # the unit input's kernel overflows
@example(X=np.array([[1.0], [1.0]]), activation="relu", depth=29, W_std=1000.0)   # sqrt(q1 q2) overflowed: NaN
@example(X=np.array([[6.89413798, -7.24367735], [-6.89413798, 7.24367735]]), activation="abs", depth=16,
         W_std=1.0)   # antipodal inputs of abs: correlation 1 from layer 2, the cone at every layer
@example(X=np.array([[6.89413798, -7.24367735], [-6.89413798, 7.24367735]]), activation="abs", depth=32,
         W_std=1.0)   # ... adding up over 32 layers (1.1e-6)
@example(X=np.array([[1.0, 0.0], [1.0, 1e-4]]), activation="relu", depth=29, W_std=1000.0)   # variances past 1e154
@example(X=np.array([[1e100, 0.0], [1e100, 1e95]]), activation="abs", depth=3, W_std=1.0)   # variance 5e199
@example(X=np.array([[1e10], [-1.0], [1.0], [1.0]]), activation="relu", depth=2,
         W_std=1.0)   # collinear rows of norms 1e10 and 1: 3e-7 in float64 before the shorter vector was projected
def test_float64_homogeneous_kernels_scale_exactly(X, activation, depth, W_std) -> None:
    """Without bias, K(a x, b y) = a b K(x, y): the kernel of inputs of any norm equals the kernel of the unit
    inputs times the norms, in float64 (or a range error if it leaves float64's range)."""
    arch = nk.MLP(depth=depth, activation=activation, W_std=W_std, b_std=0.0)
    run = Calls()
    norms = np.linalg.norm(X, axis=1)
    units = X / np.where(norms > 0, norms, 1.0)[:, None]
    try:
        K = run(lambda: arch.kernel(X))
        d = run(lambda: arch.kernel_diag(X))
    except KernelRangeError as error:
        check_message(error, torch.float64)
        assert justified(X, arch, "ntk", torch.float64), f"needless range error: {error}"
        return
    try:
        reference = Calls()(lambda: arch.kernel(units))
    except KernelRangeError:
        return   # the unit inputs' kernel leaves float64's range although these (smaller) inputs' does not
    if run.underflowed:   # values below float64's normal range came back as 0: the exact ones must be that small
        with np.errstate(divide="ignore"):
            log_diag = np.log10(np.diag(reference)) + 2 * np.log10(np.where(norms > 0, norms, 1.0))
        assert np.any((norms > 0) & (log_diag < np.log10(torch.finfo(torch.float64).tiny) + 8)), \
            "needless underflow warning"
        return
    outer = norms[:, None] * norms[None, :]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        unit_scale = cs_scale(reference, np.diag(reference), np.diag(reference))
        assert np.all(np.abs(K / np.where(outer > 0, outer, 1.0) - np.where(outer > 0, reference, 0.0))
                      <= tolerance(torch.float64, activation, depth) * unit_scale + 1e-300)
    np.testing.assert_allclose(d, np.diag(K), rtol=1e-12, atol=0)


@given(X=inputs(max_rows=4), activation=st.sampled_from(["relu", "leaky_relu", "abs"]), depth=st.integers(1, 30),
       W_std=w_stds, b_std=b_stds, dtype=st.sampled_from([torch.float32, torch.float64]))
@example(X=np.array([[1.0], [-1.0]]), activation="abs", depth=20, W_std=1.0, b_std=0.0, dtype=torch.float32)  # cone
@example(X=np.array([[1e-19], [-1e-19]]), activation="relu", depth=2, W_std=1.0, b_std=0.0,
         dtype=torch.float32)   # `angle` scaled a subnormal variance by 2^149 = inf
@example(X=np.array([[1.0], [-1e-19]]), activation="relu", depth=2, W_std=1.0, b_std=0.0,
         dtype=torch.float32)   # a subnormal diagonal next to a normal one: few digits in their kernel
@example(X=np.array([[1.0, 0.0], [1.0, 1e-2]]), activation="relu", depth=5, W_std=1000.0, b_std=0.0,
         dtype=torch.float32)
@example(X=np.array([[6.89413798e-13, -7.24367735e-13], [9.86849108e-13, 1.61644169e-13]]), activation="relu",
         depth=2, W_std=1.0, b_std=0.0, dtype=torch.float32)   # near pairs judged from q1x q1y, which underflowed
def test_fused_path_matches_generic_formulas(X, activation, depth, W_std, b_std, dtype) -> None:
    """The fused ReLU-family path against the activation's own closed forms (the differentiable path)."""
    arch = nk.MLP(depth=depth, activation=activation, W_std=W_std, b_std=b_std)
    Xt = torch.as_tensor(X, dtype=dtype)
    run = Calls()
    try:
        fused = run(lambda: arch.kernel(Xt))
        generic = run(lambda: arch.kernel(Xt.clone().requires_grad_(True))).detach()
    except KernelRangeError as error:
        check_message(error, dtype)
        return
    assert torch.isfinite(fused).all() and torch.isfinite(generic).all()
    d = run(lambda: arch.kernel_diag(Xt)).double().numpy()
    if run.underflowed:   # diagonals below the normal range came back with few digits
        d = np.maximum(np.abs(d), underflow_slack(dtype))
    scale = cs_scale(None, d, d)
    tol = tolerance(dtype, activation, depth)
    slack = 1e-300
    diff = np.abs(fused.double().numpy() - generic.double().numpy())

    assert np.all(diff <= tol * scale + slack), np.max(diff / (scale + 1e-300))


@given(activation=activation_names(), exponent=st.floats(-1, 1), dtype=st.sampled_from([torch.float32, torch.float64]))
@example(activation="sign", exponent=0.6, dtype=torch.float32)     # q^2 overflowed in `angle`: NaN
@example(activation="erf", exponent=0.6, dtype=torch.float32)      # (1 + 2 q1)(1 + 2 q2) overflowed
@example(activation="gelu", exponent=0.3, dtype=torch.float32)     # q1 q2 (1 + q1)(1 + q2) overflowed
@example(activation="step", exponent=-0.6, dtype=torch.float32)    # q1 q2 > 0 underflowed to False
@example(activation="softsign", exponent=0.4557755896193092, dtype=torch.float32)   # unresolved SigmaDot
def test_activation_maps_are_finite_where_their_inputs_are(activation, exponent, dtype) -> None:
    """The Sigma and SigmaDot maps on the diagonal and off it (c = +-q, c = 0.5 q) at variances q across the
    dtype's range (below half its largest value, above its smallest normal): finite, and inside
    Cauchy-Schwarz (|E[s(u)s(v)]| <= E[s(u)^2])."""
    info = torch.finfo(dtype)
    span = math.log10(info.max / 2) if exponent > 0 else -math.log10(info.tiny)
    q = 10.0 ** (0.99 * exponent * span)
    act = nk.get_activation(activation)
    qt = torch.tensor([q, q, q], dtype=dtype)
    c = torch.tensor([q, -q, 0.5 * q], dtype=dtype)
    if not math.isfinite(float(qt[0])):
        return
    e_phi, e_dphi = act.sigma_both(c, qt, qt)
    diag_phi, diag_dphi = act.sigma_diag(qt[:1]), act.sigma_dot_diag(qt[:1])
    for value in (e_phi, e_dphi, diag_phi, diag_dphi):
        assert torch.isfinite(value).all(), (activation, q, value)
    if activation in QUADRATURE and float(act.resolution_error(qt[:1]).max()) > RESOLUTION_TOL:
        return   # the rule cannot see this activation's derivative at this spread: the kernels refuse it
    tol = 1e-2 if activation in QUADRATURE else 1e-3
    assert torch.all(e_phi.abs() <= diag_phi * (1 + tol) + 1e-30 * q)
    assert torch.all(e_dphi.abs() <= diag_dphi * (1 + tol) + 1e-30)
