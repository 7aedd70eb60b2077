"""Reference kernels from neural-tangents' `stax` for the layer tests (tests/data/nt_references.npz).

Run with the python of an environment that has neural-tangents 0.6.5 (and JAX, float64 enabled here):

    NT_PYTHON benchmarks/make_nt_references.py [--out tests/data/nt_references.npz]
    NT_PYTHON benchmarks/make_nt_references.py --activations    # tests/data/nt_references_activations.npz

Each case is an architecture written as a small list (the tests build the same one with ntkit from it), small
inputs X (N, C, *S) and Y (M, C, *S) in ntkit's NCHW layout (transposed to NHWC for stax), and stax's NNGP and
NTK (parameterization="ntk") for K(X, X) and K(X, Y). The test suite needs no JAX.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

jax.config.update("jax_enable_x64", True)

#: degree of stax.ElementwiseNumerical (Gauss-Hermite, per axis) for activations without a closed form
NUMERICAL_DEGREE = 200

CASES = {
    # strides, "valid" padding, a non-square image, a non-square kernel; only the positions' diagonal is needed
    "conv_flatten_strided": {
        "shape": [2, 7, 6],
        "layers": [["conv", {"k": [3, 3], "s": [2, 1], "padding": "same", "W": 1.3, "b": 0.2}], ["relu"],
                   ["conv", {"k": [2, 3], "s": [1, 2], "padding": "valid", "W": 1.0, "b": 0.1}], ["relu"],
                   ["flatten"], ["dense", {"W": 0.9, "b": 0.3}]],
    },
    # circular padding, average pooling with strides, global average pooling, closed-form erf and gelu
    "conv_circular_pool": {
        "shape": [2, 6, 5],
        "layers": [["conv", {"k": [3, 3], "s": [1, 1], "padding": "circular", "W": 1.0, "b": 0.1}], ["erf"],
                   ["avgpool", {"k": [2, 2], "s": [1, 2]}],
                   ["conv", {"k": [3, 2], "s": [1, 1], "padding": "same", "W": 1.2, "b": 0.0}], ["gelu"],
                   ["gap"], ["dense", {"W": 1.0, "b": 0.1}]],
    },
    # strided "same" and "valid" convolutions where every pair of positions is kept (pooling follows)
    "strided_pool": {
        "shape": [1, 7, 8],
        "layers": [["conv", {"k": [3, 3], "s": [2, 2], "padding": "same", "W": 1.0, "b": 0.1}], ["relu"],
                   ["conv", {"k": [2, 2], "s": [2, 1], "padding": "valid", "W": 1.1, "b": 0.2}], ["relu"],
                   ["conv", {"k": [3, 3], "s": [1, 2], "padding": "same", "W": 1.0, "b": 0.1}], ["erf"],
                   ["avgpool", {"k": [1, 2], "s": [1, 1]}], ["gap"], ["dense", {"W": 1.0, "b": 0.1}]],
    },
    # LayerNorm over channels, a residual block (pre-activation: the skip is Gaussian), pooling after it
    "residual_layernorm": {
        "shape": [3, 5, 6],
        "layers": [["conv", {"k": [3, 3], "s": [1, 1], "padding": "same", "W": 1.0, "b": 0.1}],
                   ["layernorm", {"eps": 1e-5}],
                   ["residual", [["relu"],
                                 ["conv", {"k": [3, 3], "s": [1, 1], "padding": "same", "W": 1.0, "b": 0.1}],
                                 ["relu"],
                                 ["conv", {"k": [3, 3], "s": [1, 1], "padding": "circular", "W": 0.8, "b": 0.2}]]],
                   ["relu"], ["avgpool", {"k": [2, 2], "s": [2, 2]}], ["flatten"], ["dense", {"W": 1.0, "b": 0.1}]],
    },
    # 1-D convolutions and tanh (no closed form: quadrature here, stax.ElementwiseNumerical there)
    "conv1d_tanh": {
        "shape": [2, 9],
        "layers": [["conv", {"k": [3], "s": [1], "padding": "same", "W": 1.0, "b": 0.1}], ["tanh"],
                   ["avgpool", {"k": [2], "s": [2]}],
                   ["conv", {"k": [3], "s": [1], "padding": "circular", "W": 1.5, "b": 0.2}], ["tanh"],
                   ["flatten"], ["dense", {"W": 1.0, "b": 0.1}]],
    },
    # a fully-connected chain with different scales and LayerNorm (not the fused MLP path)
    "dense_mixed": {
        "shape": [5],
        "layers": [["dense", {"W": 1.5, "b": 0.2}], ["erf"], ["dense", {"W": 1.0, "b": 0.1}],
                   ["layernorm", {"eps": 1e-5}], ["relu"], ["dense", {"W": 0.7, "b": 0.5}], ["relu"],
                   ["dense", {"W": 1.0, "b": 0.0}]],
    },
}


def _mlp(activation: list, W: float = 1.0, b: float = 0.1) -> list:
    """Linear, activation, Linear, activation, Linear (three weight layers) with one scale throughout."""
    dense = ["dense", {"W": W, "b": b}]
    return [dense, activation, dense, activation, dense]


#: fully-connected networks with each closed-form nonlinearity of stax that the cases above do not use, written
#: to a separate file (tests/data/nt_references_activations.npz, `--activations`); "unit_norm": inputs scaled to
#: |x|^2 = dimension (Hermite: stax assumes pre-activations of unit variance, which W = 1, b = 0 then keep)
ACTIVATION_CASES = {
    "exp": {"shape": [5], "layers": _mlp(["exp", {"a": 0.8, "b": 0.6}], W=0.9)},
    "gaussian": {"shape": [5], "layers": _mlp(["gaussian", {"a": 1.2, "b": -0.7}], W=1.1)},
    "gaussian_positive_b": {"shape": [5], "layers": _mlp(["gaussian", {"a": 0.7, "b": 0.2}], W=0.5)},
    "rbf": {"shape": [5], "layers": _mlp(["rbf", {"gamma": 0.8}], W=1.2)},
    **{f"monomial_{n}": {"shape": [5], "layers": _mlp(["monomial", {"degree": n}], W=0.7)} for n in range(6)},
    # one activation: stax's RectifiedMonomial divides by sin(theta), NaN for a point with itself, which a second
    # activation would spread to every pair (its diagonals are not compared)
    **{f"rectified_monomial_{n}": {"shape": [5], "layers": _mlp(["rectified_monomial", {"degree": n}], W=0.9)[2:]}
       for n in range(6)},
    "polynomial": {"shape": [5], "layers": _mlp(["polynomial", {"coef": [0.5, -1.0, 0.3, 0.2]}], W=0.8)},
    **{f"hermite_{n}": {"shape": [5], "unit_norm": True, "layers": _mlp(["hermite", {"degree": n}], W=1.0, b=0.0)}
       for n in range(1, 6)},
    "abrelu": {"shape": [5], "layers": _mlp(["abrelu", {"a": -0.4, "b": 1.3}])},
    "abrelu_negative_b": {"shape": [5], "layers": _mlp(["abrelu", {"a": 0.5, "b": -2.0}], W=0.8)},
}

#: the stax layers of the nonlinearities in ACTIVATION_CASES, by name
STAX_ACTIVATIONS = {"exp": "Exp", "gaussian": "Gaussian", "rbf": "Rbf", "monomial": "Monomial",
                    "rectified_monomial": "RectifiedMonomial", "polynomial": "Polynomial", "hermite": "Hermite",
                    "abrelu": "ABRelu"}


def stax_layers(spec: list) -> list:
    layers = []
    for entry in spec:
        kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
        if kind == "conv":
            layers.append(stax.Conv(1, tuple(opts["k"]), tuple(opts["s"]), opts["padding"].upper(), W_std=opts["W"],
                                    b_std=opts["b"], parameterization="ntk"))
        elif kind == "dense":
            layers.append(stax.Dense(1, W_std=opts["W"], b_std=opts["b"], parameterization="ntk"))
        elif kind == "relu":
            layers.append(stax.Relu())
        elif kind == "erf":
            layers.append(stax.Erf())
        elif kind == "gelu":
            layers.append(stax.Gelu(approximate=False))
        elif kind == "tanh":
            layers.append(stax.ElementwiseNumerical(jnp.tanh, deg=NUMERICAL_DEGREE))
        elif kind == "avgpool":
            layers.append(stax.AvgPool(tuple(opts["k"]), tuple(opts["s"]), "VALID"))
        elif kind == "gap":
            layers.append(stax.GlobalAvgPool())
        elif kind == "flatten":
            layers.append(stax.Flatten())
        elif kind == "layernorm":
            layers.append(stax.LayerNorm(axis=-1, eps=opts["eps"]))
        elif kind in STAX_ACTIVATIONS:
            layers.append(getattr(stax, STAX_ACTIVATIONS[kind])(**opts))
        elif kind == "residual":
            branch = stax.serial(*stax_layers(opts))
            layers.append(stax.serial(stax.FanOut(2), stax.parallel(branch, stax.Identity()), stax.FanInSum()))
        else:
            raise ValueError(kind)
    return layers


def channels_last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1) if x.ndim > 2 else x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="the file to write (default: tests/data/nt_references.npz, "
                                                    "or nt_references_activations.npz with --activations)")
    parser.add_argument("--activations", action="store_true",
                        help="the MLP cases of ACTIVATION_CASES (a separate file) instead of CASES")
    args = parser.parse_args()
    data = Path(__file__).resolve().parents[1] / "tests" / "data"
    out = args.out or str(data / ("nt_references_activations.npz" if args.activations else "nt_references.npz"))
    cases = ACTIVATION_CASES if args.activations else CASES
    arrays = {"cases": np.array(json.dumps(cases)), "numerical_degree": np.array(NUMERICAL_DEGREE)}
    rng = np.random.default_rng(0)
    for name, case in cases.items():
        X = rng.standard_normal((4, *case["shape"]))
        Y = rng.standard_normal((3, *case["shape"]))
        if case.get("unit_norm"):
            X, Y = (Z * np.sqrt(Z[0].size / (Z**2).reshape(len(Z), -1).sum(1)).reshape(-1, *[1] * (Z.ndim - 1))
                    for Z in (X, Y))
        kernel_fn = stax.serial(*stax_layers(case["layers"]))[2]
        xx = kernel_fn(channels_last(X), None, ("nngp", "ntk"))
        xy = kernel_fn(channels_last(X), channels_last(Y), ("nngp", "ntk"))
        arrays.update({f"{name}/X": X, f"{name}/Y": Y, f"{name}/nngp_xx": np.asarray(xx.nngp),
                       f"{name}/ntk_xx": np.asarray(xx.ntk), f"{name}/nngp_xy": np.asarray(xy.nngp),
                       f"{name}/ntk_xy": np.asarray(xy.ntk)})
        print(f"{name}: K(X, X) {np.asarray(xx.ntk).shape}, ntk[0, 1] = {float(xx.ntk[0, 1]):.12g}")
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({Path(out).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
