"""The cases of neural-tangents references for branching layers, graphs, sum pooling, Dropout, N-D layers, transposed
convolutions and the standard parametrization (BRANCH_CASES, `--branches`) and for finite widths, images as graphs and
circular transposed convolutions (WIDTH_CASES, `--widths`): architectures as small lists, read by
benchmarks/make_nt_references.py (which builds them with stax) and by the tests (which build them with ntkit).
"""

from __future__ import annotations

#: Parallel with each combination (a branch is a list of layers, [] the identity), Aggregate over graphs given with
#: each example (weighted, with self-loops), sum pooling, Dropout, 3-D convolutions and pooling, the standard
#: parametrization, transposed convolutions (tests/data/nt_references_branches.npz, `--branches`)
BRANCH_CASES = {
    "sum_dense": {"shape": [5], "layers": [
        ["dense", {"W": 1.2, "b": 0.1}],
        ["parallel", {"combine": "sum", "branches": [[["dense", {"W": 0.8, "b": 0.2}]],
                                                     [["relu"], ["dense", {"W": 1.0, "b": 0.1}]],
                                                     [["erf"], ["dense", {"W": 1.3, "b": 0.0}]]]}],
        ["relu"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "concat_dense": {"shape": [4], "layers": [
        ["dense", {"W": 1.0, "b": 0.1}],
        ["parallel", {"combine": "concat", "branches": [[["relu"], ["dense", {"W": 1.0, "b": 0.1}]],
                                                        [["erf"], ["dense", {"W": 1.4, "b": 0.3}]],
                                                        [["dense", {"W": 0.9, "b": 0.0}]]]}],
        ["dense", {"W": 1.0, "b": 0.1}], ["relu"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "concat_conv_strided_proportions": {"shape": [2, 7, 6], "layers": [
        ["conv", {"k": [3, 3], "s": [1, 1], "padding": "same", "W": 1.0, "b": 0.1}],
        ["parallel", {"combine": "concat", "proportions": [1, 2], "branches": [
            [["relu"], ["conv", {"k": [3, 3], "s": [2, 2], "padding": "same", "W": 1.2, "b": 0.1, "out": 1}]],
            [["erf"], ["conv", {"k": [2, 3], "s": [2, 2], "padding": "same", "W": 1.0, "b": 0.2, "out": 2}]]]}],
        ["avgpool", {"k": [2, 2], "s": [1, 1]}], ["flatten"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "product_conv1d_identity": {"shape": [2, 6], "layers": [
        ["conv", {"k": [3], "s": [1], "padding": "same", "W": 1.0, "b": 0.1}],
        ["parallel", {"combine": "product", "branches": [
            [], [["relu"], ["conv", {"k": [3], "s": [1], "padding": "circular", "W": 1.1, "b": 0.2}]],
            [["conv", {"k": [2], "s": [1], "padding": "same", "W": 0.9, "b": 0.1}]]]}],
        ["gap"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "sum_conv_identity_pool": {"shape": [1, 5, 5], "layers": [
        ["conv", {"k": [3, 3], "s": [1, 1], "padding": "same", "W": 1.0, "b": 0.1}],
        ["parallel", {"combine": "sum", "branches": [
            [], [["relu"], ["conv", {"k": [3, 3], "s": [1, 1], "padding": "same", "W": 1.0, "b": 0.1}]],
            [["erf"], ["conv", {"k": [1, 3], "s": [1, 1], "padding": "circular", "W": 0.7, "b": 0.0}]]]}],
        ["relu"], ["sumpool", {"k": [2, 2], "s": [1, 2]}], ["gap"], ["dense", {"W": 1.0, "b": 0.1}]]},
    # a graph network (GNTK): aggregate, node-wise dense (a 1x1 convolution), ReLU; sum readout
    "gntk": {"shape": [3, 6], "graph": True, "layers": [
        ["aggregate"], ["conv", {"k": [1], "s": [1], "padding": "same", "W": 1.0, "b": 0.1}], ["relu"],
        ["aggregate"], ["conv", {"k": [1], "s": [1], "padding": "same", "W": 1.2, "b": 0.0}], ["relu"],
        ["aggregate"], ["gsp"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "gntk_parallel_flatten": {"shape": [2, 5], "graph": True, "layers": [
        ["conv", {"k": [1], "s": [1], "padding": "same", "W": 1.0, "b": 0.1}],
        ["parallel", {"combine": "sum", "branches": [
            [], [["relu"], ["aggregate"], ["conv", {"k": [1], "s": [1], "padding": "same", "W": 1.0, "b": 0.1}]]]}],
        ["erf"], ["aggregate"], ["flatten"], ["dense", {"W": 1.0, "b": 0.1}]]},
    # Dropout (keep rate; the kernel of train mode), on the positions' diagonal and with every pair of positions
    "dropout_dense": {"shape": [4], "layers": [
        ["dense", {"W": 1.0, "b": 0.1}], ["relu"], ["dropout", {"rate": 0.7}], ["dense", {"W": 1.2, "b": 0.1}],
        ["erf"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "dropout_conv_pool": {"shape": [1, 4, 5], "layers": [
        ["conv", {"k": [3, 3], "s": [1, 1], "padding": "same", "W": 1.0, "b": 0.1}], ["relu"],
        ["dropout", {"rate": 0.6}], ["conv", {"k": [2, 2], "s": [1, 1], "padding": "valid", "W": 1.0, "b": 0.1}],
        ["relu"], ["avgpool", {"k": [2, 2], "s": [1, 1]}], ["gap"], ["dense", {"W": 1.0, "b": 0.1}]]},
    # 3-D convolutions (strided, "valid", circular) and pooling
    "conv3d_pools": {"shape": [2, 4, 5, 3], "layers": [
        ["conv", {"k": [3, 3, 2], "s": [1, 1, 1], "padding": "same", "W": 1.1, "b": 0.1}], ["relu"],
        ["avgpool", {"k": [2, 2, 1], "s": [1, 1, 1]}],
        ["conv", {"k": [2, 2, 2], "s": [1, 2, 1], "padding": "valid", "W": 1.0, "b": 0.2}], ["erf"],
        ["sumpool", {"k": [2, 1, 1], "s": [1, 1, 1]}], ["flatten"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "conv3d_circular_strided": {"shape": [1, 5, 4, 4], "layers": [
        ["conv", {"k": [3, 2, 3], "s": [2, 1, 2], "padding": "circular", "W": 1.0, "b": 0.1}], ["relu"],
        ["conv", {"k": [2, 2, 2], "s": [1, 1, 1], "padding": "same", "W": 1.3, "b": 0.0}], ["relu"],
        ["flatten"], ["dense", {"W": 1.0, "b": 0.1}]]},
    # the standard parametrization: the same NNGP (its NTK depends on the finite widths: not compared)
    "standard_dense": {"shape": [5], "nngp_only": True, "layers": [
        ["dense", {"W": 1.3, "b": 0.2, "param": "standard"}], ["relu"],
        ["dense", {"W": 0.9, "b": 0.1, "param": "standard"}], ["relu"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "standard_conv": {"shape": [2, 5, 4], "nngp_only": True, "layers": [
        ["conv", {"k": [3, 3], "s": [1, 2], "padding": "same", "W": 1.2, "b": 0.1, "param": "standard"}], ["relu"],
        ["avgpool", {"k": [2, 2], "s": [1, 1]}], ["flatten"], ["dense", {"W": 1.0, "b": 0.1, "param": "standard"}]]},
    # transposed convolutions (XLA's output sizes), strided, with a kernel smaller than the stride, pooled
    "convtranspose_1d": {"shape": [2, 5], "layers": [
        ["convtranspose", {"k": [3], "s": [2], "padding": "valid", "W": 1.2, "b": 0.1}], ["relu"],
        ["convtranspose", {"k": [2], "s": [1], "padding": "same", "W": 1.0, "b": 0.2}], ["erf"],
        ["flatten"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "convtranspose_2d_pool": {"shape": [1, 3, 4], "layers": [
        ["conv", {"k": [2, 2], "s": [1, 1], "padding": "same", "W": 1.0, "b": 0.1}], ["relu"],
        ["convtranspose", {"k": [3, 2], "s": [2, 2], "padding": "same", "W": 1.1, "b": 0.1}], ["relu"],
        ["convtranspose", {"k": [1, 2], "s": [2, 3], "padding": "valid", "W": 0.9, "b": 0.0}], ["relu"],
        ["avgpool", {"k": [2, 2], "s": [2, 2]}], ["gap"], ["dense", {"W": 1.0, "b": 0.1}]]},
}


def _std(kind: str, n_in: int, out: int, b: float | None = 0.1, W: float = 1.0, **conv) -> list:
    """A weight layer in the standard parametrization with `out` finite channels; "in": the finite fan-in channels
    (the `out` of the weight layer before, times the positions a Flatten joins), which ntkit's layer takes."""
    return [kind, {"W": W, "b": b, "param": "standard", "out": out, "in": n_in, **conv}]


#: the standard parametrization's NTK at finite widths (each weight layer's "out"; b None: no bias), Aggregate over
#: the positions of images (graphs whose nodes are pixels, adjacency (H, W, H, W)), transposed convolutions with
#: circular padding (tests/data/nt_references_widths.npz, `--widths`)
WIDTH_CASES = {
    "standard_dense": {"shape": [5], "layers": [
        _std("dense", 5, 7, b=0.2, W=1.3), ["relu"], _std("dense", 7, 11, b=None, W=0.9), ["erf"],
        _std("dense", 11, 1, b=0.1)]},
    "standard_after_ntk": {"shape": [4], "layers": [
        ["dense", {"W": 1.1, "b": 0.1, "out": 3}], ["relu"], _std("dense", 3, 6, b=0.0), ["relu"],
        ["dense", {"W": 1.0, "b": 0.2, "out": 1}]]},
    "standard_conv_flatten": {"shape": [2, 5, 4], "layers": [
        _std("conv", 2, 3, W=1.2, k=[3, 3], s=[1, 2], padding="same"), ["relu"],
        _std("conv", 3, 4, b=None, k=[2, 2], s=[1, 1], padding="valid"), ["relu"], ["flatten"],
        _std("dense", 16, 1, b=0.1)]},
    "standard_conv_pool": {"shape": [2, 6, 5], "layers": [
        _std("conv", 2, 3, k=[3, 3], s=[1, 1], padding="same"), ["relu"], ["avgpool", {"k": [2, 2], "s": [1, 1]}],
        _std("conv", 3, 5, W=0.8, b=0.3, k=[2, 3], s=[1, 1], padding="circular"), ["erf"], ["gap"],
        _std("dense", 5, 1, b=None)]},
    "standard_conv1d_first_bias_free": {"shape": [3, 7], "layers": [
        _std("conv", 3, 2, b=None, k=[3], s=[2], padding="circular"), ["relu"], ["gap"],
        _std("dense", 2, 1, b=0.1, W=1.4)]},
    "aggregate_image": {"shape": [2, 3, 4], "graph": True, "layers": [
        ["aggregate"], ["conv", {"k": [1, 1], "s": [1, 1], "padding": "same", "W": 1.0, "b": 0.1}], ["relu"],
        ["aggregate"], ["conv", {"k": [2, 2], "s": [1, 1], "padding": "circular", "W": 1.2, "b": 0.1}], ["relu"],
        ["aggregate"], ["gsp"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "aggregate_volume_flatten": {"shape": [1, 2, 3, 2], "graph": True, "layers": [
        ["conv", {"k": [1, 1, 1], "s": [1, 1, 1], "padding": "same", "W": 1.0, "b": 0.1}], ["erf"],
        ["aggregate"], ["conv", {"k": [1, 1, 1], "s": [1, 1, 1], "padding": "same", "W": 0.9, "b": 0.2}],
        ["relu"], ["aggregate"], ["flatten"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "convtranspose_circular_1d": {"shape": [2, 5], "layers": [
        ["convtranspose", {"k": [3], "s": [2], "padding": "circular", "W": 1.2, "b": 0.1}], ["relu"],
        ["convtranspose", {"k": [5], "s": [1], "padding": "circular", "W": 1.0, "b": 0.2}], ["erf"],
        ["flatten"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "convtranspose_circular_2d_pool": {"shape": [1, 3, 2], "layers": [
        ["convtranspose", {"k": [4, 1], "s": [1, 3], "padding": "circular", "W": 1.0, "b": 0.1}], ["relu"],
        ["convtranspose", {"k": [2, 5], "s": [2, 2], "padding": "circular", "W": 1.1, "b": 0.0}], ["relu"],
        ["avgpool", {"k": [2, 2], "s": [1, 1]}], ["gap"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "convtranspose_circular_small_input": {"shape": [2, 1, 2], "layers": [
        ["convtranspose", {"k": [3, 7], "s": [1, 2], "padding": "circular", "W": 1.0, "b": 0.1}], ["relu"],
        ["flatten"], ["dense", {"W": 1.0, "b": 0.1}]]},
    "standard_convtranspose": {"shape": [2, 4], "layers": [
        _std("convtranspose", 2, 3, W=1.2, k=[3], s=[2], padding="same"), ["relu"],
        _std("convtranspose", 3, 4, b=None, k=[2], s=[1], padding="circular"), ["relu"], ["flatten"],
        _std("dense", 32, 1, b=0.1)]},
    "standard_tokenwise": {"shape": [3, 5], "layers": [
        _std("token", 3, 4, W=1.1), ["relu"], _std("token", 4, 6, b=None), ["erf"], ["gap"],
        _std("dense", 6, 1, b=0.2)]},
}
