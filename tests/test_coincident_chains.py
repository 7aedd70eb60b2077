"""Fully-connected chains whose layers differ, and architectures that start with one: the fused recursion with the
near-pair refinement (`ntkit.layers.fused`, `ntkit.coincident`) against 60-digit arithmetic (mpmath).

Each reference follows the paper's recursion layer by layer (Proposition 1, Theorem 1) with the closed-form maps
written from the angle (ReLU family: Cho and Saul 2009; erf: Williams 1997) and LayerNorm's rescaling by
1 / sqrt((q(x) + eps)(q(y) + eps)), independently of the package. Errors are in units of sqrt(K(x, x) K(y, y)).
Pairs x, y = x + 1e-7 u (and 1e-9 u, and nearly opposite ones) lie within `coincident.NEAR` of +-1 at layer 1:
there the refinement keeps a few roundings per layer, where the plain formulas, layer by layer, keep eps / theta
of an angle theta (the NTK's derivative map has a cone there: 1e-10 to 1e-9 here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import gram
from ntkit.layers import execute
from ntkit.layers.plan import fused_prefix

mpmath = pytest.importorskip("mpmath")

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = torch.finfo(torch.float64).eps


def mp_piecewise(c, q1, q2, a):
    """(E[s(u) s(v)], E[s'(u) s'(v)], E[s(u)^2], E[s(v)^2]) for s(x) = max(x, 0) + a min(x, 0)."""
    pi, a = mpmath.pi, mpmath.mpf(a)
    theta = mpmath.atan2(mpmath.sqrt(max(q1 * q2 - c * c, 0)), c)
    dot = ((1 + a * a) * (pi - theta) + 2 * a * theta) / (2 * pi)
    E = ((1 - a) ** 2 * mpmath.sqrt(q1 * q2) * mpmath.sin(theta) + dot * 2 * pi * c) / (2 * pi)
    return E, dot, (1 + a * a) / 2 * q1, (1 + a * a) / 2 * q2


def mp_erf(c, q1, q2):
    """The same for erf: (2/pi) asin(2c / sqrt((1 + 2 q1)(1 + 2 q2))), (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4c^2)."""
    def arcsine(c, a, b):
        return 2 / mpmath.pi * mpmath.asin(2 * c / mpmath.sqrt((1 + 2 * a) * (1 + 2 * b)))
    dot = 4 / mpmath.pi / mpmath.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * c * c)
    return arcsine(c, q1, q2), dot, arcsine(q1, q1, q1), arcsine(q2, q2, q2)


def mp_kernels(X: np.ndarray, Y: np.ndarray, ops: list[tuple]) -> np.ndarray:
    """(Sigma, Theta) of every pair (X[i], Y[j]), shape (2, N, M), through `ops`: ("linear", W_std, b_std),
    ("piecewise", a), ("erf",), ("layernorm", eps)."""
    out = np.zeros((2, len(X), len(Y)))
    with mpmath.workdps(60):
        for i, x in enumerate(X):
            for j, y in enumerate(Y):
                xs, ys = [mpmath.mpf(float(v)) for v in x], [mpmath.mpf(float(v)) for v in y]
                n = len(xs)
                c = mpmath.fsum(p * q for p, q in zip(xs, ys, strict=True)) / n
                q1, q2 = mpmath.fsum(p * p for p in xs) / n, mpmath.fsum(q * q for q in ys) / n
                t = None
                for op in ops:
                    if op[0] == "linear":
                        w2, b2 = mpmath.mpf(op[1]) ** 2, mpmath.mpf(op[2]) ** 2
                        c, q1, q2 = w2 * c + b2, w2 * q1 + b2, w2 * q2 + b2
                        t = c if t is None else w2 * t + c
                    elif op[0] == "layernorm":
                        scale = 1 / mpmath.sqrt((q1 + op[1]) * (q2 + op[1]))
                        c, t, q1, q2 = c * scale, t * scale, q1 / (q1 + op[1]), q2 / (q2 + op[1])
                    else:
                        E, dot, e1, e2 = mp_piecewise(c, q1, q2, op[1]) if op[0] == "piecewise" else mp_erf(c, q1, q2)
                        c, q1, q2, t = E, e1, e2, t * dot
                out[:, i, j] = float(c), float(t)
    return out


MIXED = (lambda: nk.Sequential(nk.Linear(1.5, 0.0), nk.ReLU(), nk.Linear(0.9, 0.3), nk.Erf(), nk.Linear(1.2, 0.1),
                               nk.LeakyReLU(0.2), nk.Linear()),
         [("linear", 1.5, 0.0), ("piecewise", 0.0), ("linear", 0.9, 0.3), ("erf",), ("linear", 1.2, 0.1),
          ("piecewise", 0.2), ("linear", 1.0, 0.1)])
PREFIX = (lambda: nk.Sequential(nk.Linear(1.3, 0.2), nk.ReLU(), nk.Linear(0.9, 0.3), nk.Abs(), nk.Linear(),
                                nk.LayerNorm(), nk.Erf(), nk.Linear(1.1, 0.1)),
          [("linear", 1.3, 0.2), ("piecewise", 0.0), ("linear", 0.9, 0.3), ("piecewise", -1.0), ("linear", 1.0, 0.1),
           ("layernorm", 1e-5), ("erf",), ("linear", 1.1, 0.1)])


def near_inputs(d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """X (6, d) and Y (6, d): Y's first five rows nearly coincide with X's (1e-7, 1e-9 apart) or nearly oppose them
    (1e-8), its last is a random row."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(6, d, dtype=torch.float64, generator=g)
    u = torch.randn(6, d, dtype=torch.float64, generator=g)
    Y = torch.cat([X[:2] + 1e-7 * u[:2], X[2:4] + 1e-9 * u[2:4], -X[4:5] + 1e-8 * u[4:5], u[5:]])
    return X, Y


def layer_by_layer(arch: nk.Sequential, X: torch.Tensor, Y: torch.Tensor) -> np.ndarray:
    """(Sigma, Theta) of `arch` through its plan one layer after the other, no fused chain (no refinement)."""
    steps, need = arch.plan(tuple(X.shape[1:]))
    tiles = execute.layer_tiles(X, Y, False, steps, need, arch.layers, ("nngp", "ntk"), None, "-")
    return np.stack([k.numpy() for k in gram.evaluate(tiles, None)])


def errors(K: np.ndarray, reference: np.ndarray, diagonals: np.ndarray) -> np.ndarray:
    """|K - reference| in units of sqrt(K(x, x) K(y, y)), diagonals (2, N + M) of the reference."""
    n = K.shape[1]
    root = np.sqrt(diagonals)
    return np.abs(K - reference) / (root[:, :n, None] * root[:, None, n:])


@pytest.mark.parametrize("case", [MIXED, PREFIX], ids=["mixed chain", "chain then LayerNorm"])
def test_near_pairs_are_refined_against_high_precision(case) -> None:
    """Near pairs of a chain whose layers differ (fused whole) and of a chain followed by LayerNorm, Erf, Linear
    (fused prefix): a few roundings per layer ((8 + 4 L) eps, as for the paper's network in test_coincident.py),
    where the plain formulas layer by layer are off by more than 100 times that on the NTK."""
    build, ops = case
    arch = build()
    X, Y = near_inputs()
    reference = mp_kernels(X.numpy(), Y.numpy(), ops)
    both = torch.cat([X, Y]).numpy()
    diagonals = np.stack([np.diag(k) for k in mp_kernels(both, both, ops)])
    got = np.stack([k.numpy() for k in arch.kernel(X, Y, get=("nngp", "ntk"))])
    depth = sum(op[0] == "linear" for op in ops)
    bound = (8 + 4 * depth) * EPS
    assert errors(got, reference, diagonals).max() < bound
    plain = errors(layer_by_layer(arch, X, Y), reference, diagonals)
    assert plain[1].max() > 100 * bound


def test_chains_whose_layers_differ_run_fused() -> None:
    """A chain of Linear and closed-form activations with its own settings per layer runs the fused recursion
    (a `Recursion` with one map per later layer); one with a LayerNorm after a chain of 5 layers fuses those 5."""
    rec = MIXED[0]().recursion()
    assert rec is not None and rec.depth == 4
    assert [(m.activation.name, float(m.W_std), float(m.b_std)) for m in rec.steps] == \
        [("relu", 0.9, 0.3), ("erf", 1.2, 0.1), ("leaky_relu(0.2)", 1.0, 0.1)]
    assert (float(rec.W_std), float(rec.b_std)) == (1.5, 0.0)
    assert PREFIX[0]().recursion() is None
    assert fused_prefix(PREFIX[0]().layers) == 5
    assert fused_prefix(nk.Sequential(nk.Linear(), nk.LayerNorm(), nk.ReLU(), nk.Linear()).layers) == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("build", [
    MIXED[0], PREFIX[0],
    lambda: nk.Sequential(nk.Linear(), nk.ReLU(), nk.Linear(b_std=0.0), nk.Residual(nk.Erf(), nk.Linear()),
                          nk.ReLU(), nk.Linear()),
    lambda: nk.Sequential(nk.Linear(0.8, 0.5), nk.Activation("sin"), nk.Linear(1.6), nk.GELU(), nk.Linear(1.1, 0.0))],
    ids=["mixed", "prefix-layernorm", "prefix-residual", "sin-gelu"])
def test_fused_equals_layer_by_layer_away_from_coincidence(build, dtype) -> None:
    """Away from coincident pairs (|rho| < 1 - NEAR at layer 1) the fused path and the layer-by-layer one compute
    the same formulas in another order: equal within eps / sqrt(NEAR) per layer of the Cauchy-Schwarz scale (the
    plain arc-cosine's conditioning there), on X against Y and on the symmetric Gram."""
    arch = build()
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(9, 5, generator=g).to(dtype), torch.randn(7, 5, generator=g).to(dtype)
    tol = 6 * 4 * torch.finfo(dtype).eps / nk.coincident.NEAR[dtype] ** 0.5
    for Yt in (Y, None):
        got = np.stack([k.numpy() for k in arch.kernel(X, Yt, get=("nngp", "ntk"))]).astype(np.float64)
        plain = layer_by_layer(arch, X, X if Yt is None else Yt).astype(np.float64)
        diagonals = np.stack([k.numpy() for k in arch.kernel_diag(torch.cat([X, X if Yt is None else Yt]),
                                                                  get=("nngp", "ntk"))]).astype(np.float64)
        assert errors(got, plain, diagonals).max() < tol
