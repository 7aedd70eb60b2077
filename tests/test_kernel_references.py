"""Stored kernels: every architecture's NNGP, NTK and diagonal against values saved in tests/data/kernel_references.npz.

The values were computed by this library in float64 before its kernel paths were merged into one recursion, and
pin the results of every MLP activation and of convolution, pooling, residual and LayerNorm stacks (X != Y and the
symmetric Gram). The three pooling stacks' entries were stored again when the ReLU family's maps on layer records
stopped using a fused multiply-add for q1 q2 - c^2 (it left an angle of 1e-8 at a position paired with itself: their
NTK diagonals moved by 1e-10 to 6e-10, to the exact values). Regenerate them (only on purpose) with
`python tests/test_kernel_references.py`.

Tolerances: the closed forms are a few roundings per layer (1e-12 relative to the Gram's largest entry covers any
BLAS summation order); for the activations without a closed form the stored values carry the error of the
degree-20 quadrature they were made with (3e-8 relative on tanh's NTK diagonal here, against scipy's adaptive
integration), which a more accurate rule removes: 1e-7.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit as nk

PATH = Path(__file__).parent / "data" / "kernel_references.npz"
CLOSED = ["relu", "leaky_relu", "abs", "identity", "erf", "sign", "step", "sin", "cos", "gelu"]
QUADRATURE = ["tanh", "sigmoid", "softplus", "elu", "selu", "silu", "mish", "softsign"]


def _layers() -> dict:
    """name -> (architecture builder, input shape per example, uses quadrature)."""
    archs = {}
    for act in CLOSED + QUADRATURE:
        archs[f"mlp_{act}"] = (lambda a=act: nk.MLP(depth=3, activation=a, beta=0.2, W_std=1.3), (5,),
                               act in QUADRATURE)
    archs["mlp_relu_deep"] = (lambda: nk.MLP(depth=6, beta=0.1), (3,), False)
    archs["seq_mixed_scales"] = (lambda: nk.Sequential(nk.Linear(W_std=1.5, b_std=0.0), nk.ReLU(),
                                                       nk.Linear(W_std=0.9, b_std=0.3), nk.Erf(), nk.Linear()),
                                 (4,), False)
    archs["seq_fc_layernorm"] = (lambda: nk.Sequential(nk.Linear(), nk.LayerNorm(), nk.GELU(), nk.Linear()),
                                 (4,), False)
    archs["conv_flatten"] = (lambda: nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.Conv2d(3, stride=2), nk.ReLU(),
                                                   nk.Flatten(), nk.Linear()), (2, 5, 5), False)
    archs["conv_pool_residual"] = (lambda: nk.Sequential(
        nk.Conv2d(3), nk.LayerNorm(), nk.Residual(nk.ReLU(), nk.Conv2d(3)), nk.ReLU(), nk.AvgPool2d(2),
        nk.Conv2d(2, padding="circular"), nk.Erf(), nk.GlobalAvgPool(), nk.Linear(W_std=1.2)), (1, 4, 4), False)
    archs["conv1d_layernorm_gap"] = (lambda: nk.Sequential(
        nk.Conv1d(3, padding="circular", b_std=0.0), nk.LayerNorm(), nk.Tanh(), nk.Conv1d(2, padding="valid"),
        nk.LeakyReLU(0.2), nk.GlobalAvgPool(), nk.Linear()), (2, 6), True)
    archs["conv_avgpool_flatten"] = (lambda: nk.Sequential(
        nk.Conv2d(2, stride=1, padding="valid"), nk.Abs(), nk.AvgPool2d(2, stride=1), nk.Flatten(),
        nk.Linear(), nk.Activation("sin"), nk.Linear()), (1, 4, 5), False)
    archs["residual_fc"] = (lambda: nk.Sequential(nk.Linear(), nk.Residual(nk.ReLU(), nk.Linear(b_std=0.0)),
                                                  nk.ReLU(), nk.Linear()), (3,), False)
    return archs


ARCHS = _layers()


def _inputs(name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(sum(map(ord, name)))
    return generator.standard_normal((5, *shape)), generator.standard_normal((3, *shape))


def compute(name: str, X: np.ndarray, Y: np.ndarray) -> dict[str, np.ndarray]:
    """The stored quantities of one architecture on X (5, *shape) and Y (3, *shape), float64."""
    arch = ARCHS[name][0]()
    Xt, Yt = torch.as_tensor(X), torch.as_tensor(Y)
    out = {}
    out["nngp_xy"], out["ntk_xy"] = (t.numpy() for t in arch.kernel(Xt, Yt, get=("nngp", "ntk")))
    out["nngp_xx"], out["ntk_xx"] = (t.numpy() for t in arch.kernel(Xt, get=("nngp", "ntk")))
    out["ntk_only_xy"] = arch.kernel(Xt, Yt, get="ntk").numpy()
    out["nngp_diag"], out["ntk_diag"] = (t.numpy() for t in arch.kernel_diag(Xt, get=("nngp", "ntk")))
    return out


def generate() -> None:
    arrays, cases = {}, []
    for name, (_, shape, _) in ARCHS.items():
        X, Y = _inputs(name, shape)
        arrays[f"{name}/X"], arrays[f"{name}/Y"] = X, Y
        for key, value in compute(name, X, Y).items():
            arrays[f"{name}/{key}"] = value
        cases.append(name)
    np.savez_compressed(PATH, cases=json.dumps(cases), **arrays)


@pytest.fixture(scope="module")
def stored():
    return np.load(PATH)


@pytest.mark.parametrize("name", list(ARCHS))
def test_kernels_equal_the_stored_values(name, stored):
    X, Y = stored[f"{name}/X"], stored[f"{name}/Y"]
    got = compute(name, X, Y)
    quadrature = ARCHS[name][2]
    for key, value in got.items():
        want = stored[f"{name}/{key}"]
        scale = float(np.abs(want).max())
        tol = (1e-7 if quadrature else 1e-12) * scale
        np.testing.assert_allclose(value, want, rtol=0, atol=tol, err_msg=f"{name}: {key}")


if __name__ == "__main__":
    generate()
