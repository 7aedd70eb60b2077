"""SelfAttention's infinite-width kernels against neural-tangents' `stax.GlobalSelfAttention` (parameterization
"ntk"), float64: every attention mechanism, both scalings, positional embeddings NONE / SUM / CONCAT with and without
a decay and in the values, attention as the first layer, on images, a two-block transformer encoder, and padded
sequences of different lengths (masked).

The references are stored in tests/data/nt_references_attention.npz, made by `benchmarks/make_nt_references.py
--attention` with neural-tangents 0.6.5 and JAX in float64; each case lists its architecture, built here with ntkit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import ntkit as nk
from ntkit.layers import SelfAttention
from ntkit.layers.masking import Mask
from test_layers_reference import build as build_plain

DATA = np.load(Path(__file__).parent / "data" / "nt_references_attention.npz")
CASES = json.loads(str(DATA["cases"]))
#: the decay functions of the cases, as in benchmarks/make_nt_references.py (POS_EMB_DECAYS)
DECAYS = {"exp4": lambda d: math.e ** (-d / 4), "power": lambda d: (1.0 + d) ** -1.5}


def attention(opts: dict) -> SelfAttention:
    opts = dict(opts)
    decay = opts.pop("decay", None)
    return SelfAttention(pos_emb_decay_fn=None if decay is None else DECAYS[decay], **opts)


def build(spec: list) -> list:
    """The ntkit layers of a case: attention here, residual branches built by this function (they may hold
    attention), every other kind as tests/test_layers_reference.py builds it."""
    layers = []
    for entry in spec:
        kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
        if kind == "attention":
            layers.append(attention(opts))
        elif kind == "residual":
            layers.append(nk.Residual(*build(opts)))
        else:
            layers.extend(build_plain([entry]))
    return layers


def relative_error(ours, reference) -> float:
    return float(np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_neural_tangents(name):
    """NNGP and NTK, K(X, X) and K(X, Y), to 1e-10 of the kernel's scale (float64 rounding through a few layers:
    measured below 1e-13); the Gram's diagonal is kernel_diag."""
    padded = "pad" in CASES[name]        # zero vectors after each length: masked (stax: mask_constant=0)
    arch = nk.Sequential(*([Mask()] if padded else []), *build(CASES[name]["layers"]))
    X, Y = DATA[f"{name}/X"], DATA[f"{name}/Y"]
    nngp_xy, ntk_xy = arch.kernel(X, Y, get=("nngp", "ntk"))
    nngp_xx, ntk_xx = arch.kernel(X, get=("nngp", "ntk"))
    for ours, key in ((nngp_xy, "nngp_xy"), (ntk_xy, "ntk_xy")):
        assert relative_error(ours, DATA[f"{name}/{key}"]) < 1e-10, key
    # off the diagonal to 1e-10; on it neural-tangents takes arccos of a correlation of 1 - 1e-16 in the ReLU after
    # attention, whose rounding moves the maps by about sqrt(1e-16): the diagonal more loosely
    off = ~np.eye(len(X), dtype=bool)
    for ours, key in ((nngp_xx, "nngp_xx"), (ntk_xx, "ntk_xx")):
        reference = DATA[f"{name}/{key}"]
        assert relative_error(np.asarray(ours)[off], reference[off]) < 1e-10, key
        assert relative_error(np.diag(ours), np.diag(reference)) < 1e-7, key
    np.testing.assert_allclose(arch.kernel_diag(X), np.diag(ntk_xx), rtol=1e-12)


def test_the_references_cover_every_setting():
    """Each mechanism, both scalings, each embedding type, decays and val_pos_emb appear in the stored cases."""
    seen = set()
    for case in CASES.values():
        for entry in case["layers"] + [e for c in case["layers"] if c[0] == "residual" for e in c[1]]:
            if entry[0] == "attention":
                o = entry[1]
                seen |= {o.get("attention_mechanism", "SOFTMAX"), f"scaling={o.get('linear_scaling', True)}",
                         o.get("pos_emb_type", "NONE"), f"decay={o.get('decay')}", f"val={o.get('val_pos_emb')}"}
    assert {"SOFTMAX", "IDENTITY", "ABS", "RELU", "scaling=True", "scaling=False", "NONE", "SUM", "CONCAT",
            "decay=exp4", "decay=power", "decay=None", "val=True"} <= seen
