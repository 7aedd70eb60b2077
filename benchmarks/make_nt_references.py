"""Reference kernels from neural-tangents' `stax` for the layer tests (tests/data/nt_references.npz).

Run with the python of an environment that has neural-tangents 0.6.5 (and JAX, float64 enabled here):

    NT_PYTHON benchmarks/make_nt_references.py [--out tests/data/nt_references.npz]
    NT_PYTHON benchmarks/make_nt_references.py --activations    # tests/data/nt_references_activations.npz
    NT_PYTHON benchmarks/make_nt_references.py --attention      # tests/data/nt_references_attention.npz
    NT_PYTHON benchmarks/make_nt_references.py --branches       # tests/data/nt_references_branches.npz
    NT_PYTHON benchmarks/make_nt_references.py --widths         # tests/data/nt_references_widths.npz

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

from nt_reference_cases import BRANCH_CASES, WIDTH_CASES  # noqa: E402

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


def _block(att: dict) -> list:
    """A transformer block on sequences: Residual(SelfAttention), LayerNorm, Residual(token-wise MLP), LayerNorm."""
    token = ["conv", {"k": [1], "s": [1], "padding": "same", "W": 1.0, "b": 0.1}]
    return [["residual", [["attention", att]]], ["layernorm", {"eps": 1e-5}],
            ["residual", [token, ["relu"], token]], ["layernorm", {"eps": 1e-5}]]


def _attention(att: dict, shape: list | None = None, first: bool = False, end: str = "gap") -> dict:
    """Token-wise Linear (a 1x1 convolution), SelfAttention, ReLU, pooling or flattening, Linear."""
    dims = len(shape or [2, 5]) - 1
    token = ["conv", {"k": [1] * dims, "s": [1] * dims, "padding": "same", "W": 1.1, "b": 0.1}]
    layers = ([] if first else [token]) + [["attention", att], ["relu"], [end], ["dense", {"W": 1.0, "b": 0.1}]]
    return {"shape": shape or [2, 5], "layers": layers}


#: SelfAttention in every setting stax computes (tests/data/nt_references_attention.npz, `--attention`); "decay":
#: a pos_emb_decay_fn by name (POS_EMB_DECAYS, the same functions in the tests)
ATTENTION_CASES = {
    "softmax": _attention({}),
    "softmax_bias_scales": _attention({"n_heads": 2, "W_key_std": 1.3, "W_query_std": 0.7, "W_value_std": 1.2,
                                       "W_out_std": 0.9, "b_std": 0.2}),
    "softmax_sum": _attention({"pos_emb_type": "SUM", "W_pos_emb_std": 0.8, "b_std": 0.1}),
    "softmax_sum_values_decay": _attention({"pos_emb_type": "SUM", "val_pos_emb": True, "decay": "exp4"}),
    "softmax_concat_decay": _attention({"pos_emb_type": "CONCAT", "decay": "power", "pos_emb_p_norm": 1.0,
                                        "W_pos_emb_std": 1.3}),
    "relu_concat_values": _attention({"attention_mechanism": "RELU", "pos_emb_type": "CONCAT", "val_pos_emb": True,
                                      "decay": "exp4", "b_std": 0.3}),
    "abs_sum_values": _attention({"attention_mechanism": "ABS", "pos_emb_type": "SUM", "val_pos_emb": True,
                                  "decay": "power", "W_key_std": 0.8}),
    "identity": _attention({"attention_mechanism": "IDENTITY", "b_std": 0.1}, end="flatten"),
    "identity_sqrt": _attention({"attention_mechanism": "IDENTITY", "linear_scaling": False, "W_key_std": 0.9,
                                 "b_std": 0.1}),
    "identity_sqrt_sum": _attention({"attention_mechanism": "IDENTITY", "linear_scaling": False,
                                     "pos_emb_type": "SUM", "decay": "exp4"}, end="flatten"),
    "identity_sqrt_concat_values": _attention({"attention_mechanism": "IDENTITY", "linear_scaling": False,
                                               "pos_emb_type": "CONCAT", "val_pos_emb": True, "b_std": 0.2}),
    "softmax_first": _attention({"b_std": 0.1}, first=True),
    "identity_sqrt_first_sum": _attention({"attention_mechanism": "IDENTITY", "linear_scaling": False,
                                           "pos_emb_type": "SUM", "W_pos_emb_std": 0.5}, first=True),
    "softmax_image_sum_decay": _attention({"pos_emb_type": "SUM", "decay": "exp4", "W_key_std": 1.5},
                                          shape=[2, 3, 4]),
    "transformer_2_blocks": {"shape": [3, 6], "layers": [
        ["conv", {"k": [1], "s": [1], "padding": "same", "W": 1.0, "b": 0.1}],
        *_block({"b_std": 0.1}), *_block({"b_std": 0.1, "pos_emb_type": "SUM", "W_pos_emb_std": 0.5}),
        ["gap"], ["dense", {"W": 1.0, "b": 0.1}]]},
}

#: padded sequences (`pad`: the lengths of X's and Y's examples; the positions after them are zero vectors, masked by
#: stax's mask_constant=0 and by ntkit's Mask layer)
MASKED_CASES = {
    "masked_softmax_sum": {**_attention({"pos_emb_type": "SUM", "b_std": 0.1}, shape=[2, 6]),
                           "pad": [[6, 4, 2, 5], [3, 6, 1]]},
    "masked_relu_concat_values": {**_attention({"attention_mechanism": "RELU", "pos_emb_type": "CONCAT",
                                                "val_pos_emb": True, "decay": "exp4"}, shape=[2, 6]),
                                  "pad": [[5, 6, 3, 4], [2, 6, 4]]},
    "masked_identity_sqrt_sum": {**_attention({"attention_mechanism": "IDENTITY", "linear_scaling": False,
                                               "pos_emb_type": "SUM", "b_std": 0.1}, shape=[2, 6]),
                                 "pad": [[6, 3, 5, 2], [4, 6, 1]]},
    "masked_transformer": {"shape": [3, 7], "pad": [[7, 5, 3, 6], [2, 7, 4]], "layers": [
        ["conv", {"k": [1], "s": [1], "padding": "same", "W": 1.0, "b": 0.1}],
        *_block({"b_std": 0.1, "pos_emb_type": "SUM", "W_pos_emb_std": 0.5}), *_block({"b_std": 0.1}),
        ["gap"], ["dense", {"W": 1.0, "b": 0.1}]]},
}
ATTENTION_CASES.update(MASKED_CASES)

#: the positional embeddings' covariance as a function of the distance |p - q|_p^p (jnp or torch alike)
POS_EMB_DECAYS = {"exp4": lambda d: 2.718281828459045 ** (-d / 4), "power": lambda d: (1.0 + d) ** -1.5}


def _stax_attention(opts: dict):
    opts = dict(opts)
    decay = opts.pop("decay", None)
    return stax.GlobalSelfAttention(1, 1, 1, opts.pop("n_heads", 1), b_std=opts.pop("b_std", None),
                                    pos_emb_decay_fn=None if decay is None else POS_EMB_DECAYS[decay], **opts)


def stax_layers(spec: list) -> list:
    layers = []
    for entry in spec:
        kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
        if kind == "conv":
            layers.append(stax.Conv(opts.get("out", 1), tuple(opts["k"]), tuple(opts["s"]), opts["padding"].upper(),
                                    W_std=opts["W"], b_std=opts["b"], parameterization=opts.get("param", "ntk")))
        elif kind in ("dense", "token"):     # token: stax.Dense at every position (ntkit's TokenLinear)
            layers.append(stax.Dense(opts.get("out", 1), W_std=opts["W"], b_std=opts["b"],
                                     parameterization=opts.get("param", "ntk")))
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
        elif kind == "attention":
            layers.append(_stax_attention(opts))
        elif kind in BRANCH_KINDS:
            layers.append(_stax_branching(kind, opts))
        elif kind == "residual":
            branch = stax.serial(*stax_layers(opts))
            layers.append(stax.serial(stax.FanOut(2), stax.parallel(branch, stax.Identity()), stax.FanInSum()))
        else:
            raise ValueError(kind)
    return layers


BRANCH_KINDS = ("parallel", "aggregate", "gsp", "sumpool", "dropout", "convtranspose")




def _stax_branching(kind: str, opts: dict):
    if kind == "aggregate":
        return stax.Aggregate()
    if kind == "gsp":
        return stax.GlobalSumPool()
    if kind == "sumpool":
        return stax.SumPool(tuple(opts["k"]), tuple(opts["s"]), "VALID")
    if kind == "dropout":
        return stax.Dropout(opts["rate"], mode="train")
    if kind == "convtranspose":
        return stax.ConvTranspose(opts.get("out", 1), tuple(opts["k"]), tuple(opts["s"]), opts["padding"].upper(),
                                  W_std=opts["W"], b_std=opts["b"], parameterization=opts.get("param", "ntk"))
    branches = [stax.serial(*stax_layers(b)) if b else stax.Identity() for b in opts["branches"]]
    fan_in = {"sum": stax.FanInSum(), "concat": stax.FanInConcat(), "product": stax.FanInProd()}[opts["combine"]]
    return stax.serial(stax.FanOut(len(branches)), stax.parallel(*branches), fan_in)


def _graphs(rng: np.random.Generator, n: int, shape: list) -> tuple[np.ndarray, np.ndarray]:
    """n graphs whose nodes are the positions shape[1:]: features (n, *shape), adjacency (n, *S, *S) with self-loops
    and weights in [0.5, 1.5]."""
    S = tuple(shape[1:])
    V = int(np.prod(S))
    A = (rng.random((n, V, V)) < 0.4) * rng.uniform(0.5, 1.5, (n, V, V)) + np.eye(V)
    return rng.standard_normal((n, *shape)), A.reshape(n, *S, *S)


def channels_last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1) if x.ndim > 2 else x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="the file to write (default: tests/data/nt_references.npz, "
                                                    "or nt_references_activations.npz with --activations)")
    parser.add_argument("--activations", action="store_true",
                        help="the MLP cases of ACTIVATION_CASES (a separate file) instead of CASES")
    parser.add_argument("--attention", action="store_true",
                        help="the SelfAttention cases of ATTENTION_CASES (nt_references_attention.npz)")
    parser.add_argument("--branches", action="store_true",
                        help="the cases of BRANCH_CASES: Parallel, Aggregate, sum pooling (nt_references_branches.npz)")
    parser.add_argument("--widths", action="store_true",
                        help="the cases of WIDTH_CASES: the standard parametrization's NTK, Aggregate over images, "
                             "circular transposed convolutions (nt_references_widths.npz)")
    args = parser.parse_args()
    data = Path(__file__).resolve().parents[1] / "tests" / "data"
    which = "attention" if args.attention else "activations" if args.activations else \
        "branches" if args.branches else "widths" if args.widths else None
    out = args.out or str(data / (f"nt_references_{which}.npz" if which else "nt_references.npz"))
    cases = {"attention": ATTENTION_CASES, "activations": ACTIVATION_CASES, "branches": BRANCH_CASES,
             "widths": WIDTH_CASES, None: CASES}[which]
    arrays = {"cases": np.array(json.dumps(cases)), "numerical_degree": np.array(NUMERICAL_DEGREE)}
    rng = np.random.default_rng(0)
    for name, case in cases.items():
        X = rng.standard_normal((4, *case["shape"]))
        Y = rng.standard_normal((3, *case["shape"]))
        if case.get("unit_norm"):
            X, Y = (Z * np.sqrt(Z[0].size / (Z**2).reshape(len(Z), -1).sum(1)).reshape(-1, *[1] * (Z.ndim - 1))
                    for Z in (X, Y))
        kernel_fn = stax.serial(*stax_layers(case["layers"]))[2]
        if case.get("graph"):      # ntkit's graph inputs: the features (C, V), then the V x V adjacency
            (X, A), (Y, B) = (_graphs(rng, len(Z), case["shape"]) for Z in (X, Y))
            xx = kernel_fn(channels_last(X), None, ("nngp", "ntk"), pattern=(A, A))
            xy = kernel_fn(channels_last(X), channels_last(Y), ("nngp", "ntk"), pattern=(A, B))
            flat = [Z.reshape(len(Z), -1, *Z.shape[1 + (Z.ndim - 1) // 2:]) for Z in (A, B)]    # (n, P, *S)
            X, Y = np.concatenate([X, flat[0]], axis=1), np.concatenate([Y, flat[1]], axis=1)
        else:
            masking = {}
            if "pad" in case:    # zero vectors after each example's length, masked
                for Z, lengths in zip((X, Y), case["pad"], strict=True):
                    for z, length in zip(Z, lengths, strict=True):
                        z[:, length:] = 0.0
                masking = {"mask_constant": 0.0}
            xx = kernel_fn(channels_last(X), None, ("nngp", "ntk"), **masking)
            xy = kernel_fn(channels_last(X), channels_last(Y), ("nngp", "ntk"), **masking)
        arrays.update({f"{name}/X": X, f"{name}/Y": Y, f"{name}/nngp_xx": np.asarray(xx.nngp),
                       f"{name}/ntk_xx": np.asarray(xx.ntk), f"{name}/nngp_xy": np.asarray(xy.nngp),
                       f"{name}/ntk_xy": np.asarray(xy.ntk)})
        print(f"{name}: K(X, X) {np.asarray(xx.ntk).shape}, ntk[0, 1] = {float(xx.ntk[0, 1]):.12g}")
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({Path(out).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
