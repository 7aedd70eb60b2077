"""The layers' infinite-width kernels against neural-tangents' `stax` (parameterization="ntk"), float64.

The reference values are stored in tests/data/nt_references.npz, made by benchmarks/make_nt_references.py with
neural-tangents 0.6.5 and JAX in float64; each case lists its architecture, which is built here with ntkit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit as nk

DATA = np.load(Path(__file__).parent / "data" / "nt_references.npz")
CASES = json.loads(str(DATA["cases"]))
#: quadrature degree of our tanh: its maps are accurate to about 1e-12 at these variances (activations.quadrature)
TANH_DEGREE = 40


def build(spec: list) -> list:
    layers = []
    for entry in spec:
        kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
        if kind == "conv":
            conv = nk.Conv1d if len(opts["k"]) == 1 else nk.Conv2d
            layers.append(conv(opts["k"], opts["s"], opts["padding"], W_std=opts["W"], b_std=opts["b"]))
        elif kind == "dense":
            layers.append(nk.Linear(W_std=opts["W"], b_std=opts["b"]))
        elif kind == "relu":
            layers.append(nk.ReLU())
        elif kind == "erf":
            layers.append(nk.Erf())
        elif kind == "gelu":
            layers.append(nk.GELU())
        elif kind == "tanh":
            layers.append(nk.Tanh(quadrature_degree=TANH_DEGREE))
        elif kind == "avgpool":
            pool = nk.AvgPool1d if len(opts["k"]) == 1 else nk.AvgPool2d
            layers.append(pool(opts["k"], opts["s"]))
        elif kind == "gap":
            layers.append(nk.GlobalAvgPool())
        elif kind == "flatten":
            layers.append(nk.Flatten())
        elif kind == "layernorm":
            layers.append(nk.LayerNorm(eps=opts["eps"]))
        elif kind == "residual":
            layers.append(nk.Residual(*build(opts)))
        else:
            raise ValueError(kind)
    return layers


def assert_close(ours: np.ndarray, reference: np.ndarray, rtol: float, diagonal: bool = True) -> None:
    scale = np.abs(reference).max()
    mask = np.ones(reference.shape, dtype=bool) if diagonal else ~np.eye(*reference.shape, dtype=bool)
    error = np.abs(ours - reference)[mask].max() / scale
    assert error < rtol, f"max relative error {error:.2e}"


def check_against_references(arch, data, name: str, names: tuple[str, ...]) -> None:
    """`arch`'s kernels `names` against neural-tangents' stored `data[name/...]`: cross kernels to 1e-10 of the scale;
    on X itself off the diagonal to 1e-10, the diagonal to 1e-7 (neural-tangents takes the arc-cosine of a
    correlation rounded near 1: sqrt(eps) in the ReLU maps) and equal to kernel_diag."""
    X, Y = data[f"{name}/X"], data[f"{name}/Y"]
    for ours, get in zip(arch.kernel(X, Y, get=names), names, strict=True):
        assert_close(ours, data[f"{name}/{get}_xy"], 1e-10)
    for ours, get in zip(arch.kernel(X, get=names), names, strict=True):
        assert_close(ours, data[f"{name}/{get}_xx"], 1e-10, diagonal=False)
        assert_close(np.diag(ours), np.diag(data[f"{name}/{get}_xx"]), 1e-7)
        np.testing.assert_allclose(arch.kernel_diag(X, get=get), np.diag(ours), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_neural_tangents(name):
    arch = nk.Sequential(*build(CASES[name]["layers"]))
    X, Y = DATA[f"{name}/X"], DATA[f"{name}/Y"]
    nngp_xy, ntk_xy = arch.kernel(X, Y, get=("nngp", "ntk"))
    nngp_xx, ntk_xx = arch.kernel(X, get=("nngp", "ntk"))
    # tanh: stax's Gauss-Hermite rule of degree 200 against our quadrature of degree 40 (measured: 2e-13 here)
    rtol = 1e-10
    for ours, key in ((nngp_xy, "nngp_xy"), (ntk_xy, "ntk_xy")):
        assert_close(ours, DATA[f"{name}/{key}"], rtol)
    # off the diagonal to rtol; on it neural-tangents takes arccos of a correlation of 1 - 1e-16, whose rounding
    # moves the ReLU maps by about sqrt(1e-16): compare the diagonal more loosely
    for ours, key in ((nngp_xx, "nngp_xx"), (ntk_xx, "ntk_xx")):
        assert_close(ours, DATA[f"{name}/{key}"], rtol, diagonal=False)
        assert_close(np.diag(ours), np.diag(DATA[f"{name}/{key}"]), 1e-7)  # measured: up to 7e-9
    # the exact diagonal and the Gram's diagonal agree
    np.testing.assert_allclose(arch.kernel_diag(X), np.diag(ntk_xx), rtol=1e-12)


def test_tiles_of_any_size_give_the_same_gram():
    name = "residual_layernorm"
    arch = nk.Sequential(*build(CASES[name]["layers"]))
    X = torch.as_tensor(DATA[f"{name}/X"])
    whole = arch.kernel(X, tile=64)
    for tile in (1, 3):
        torch.testing.assert_close(arch.kernel(X, tile=tile), whole, rtol=1e-13, atol=1e-15)
