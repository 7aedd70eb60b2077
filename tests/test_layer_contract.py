"""The contract every layer and every registered nonlinearity passes, without tests of its own.

Each case puts one layer in a small architecture. For each: the finite module's output shape is the layer's
`out_shape`; `describe()` changes with every setting (a stored Gram's fingerprint depends on it); the kernel's
diagonal is `kernel_diag`, exactly on the tiled path and to the pair formulas' accuracy on the pair path; float32
agrees with float64; the empirical NTK of wide finite networks converges to the kernel (Monte Carlo, within its
standard error); and where neural-tangents has the layer, the stored references cover it
(tests/data/nt_references.npz, compared by tests/test_layers_reference.py).

A new layer adds one entry to `LAYER_CASES`; a new registered nonlinearity is picked up from the registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.activations import registry
from ntkit.layers import Layer
from ntkit.layers.aggregate import AggregateModule, GraphSequential, split

f64 = torch.float64


@dataclass
class Case:
    """One layer in context: `make(**settings)` builds it, `context(layer)` the architecture around it, on inputs of
    `shape` per example; `variants`: for each setting, another value (describe() must change); `nt`: the kind of
    neural-tangents' stax layer it corresponds to (None: none)."""

    make: Callable[..., Layer]
    context: Callable[[Layer], nk.Sequential]
    shape: tuple[int, ...]
    settings: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)
    nt: str | None = None
    monte_carlo: bool = False       # in the default run (the others are marked slow)
    nugget: bool = False            # the kernel jumps where an example meets itself (Dropout's independent masks)


def flat(layer: Layer) -> nk.Sequential:
    return nk.Sequential(nk.Linear(W_std=1.2, b_std=0.2), layer, nk.Linear())


def dense_first(layer: Layer) -> nk.Sequential:
    return nk.Sequential(layer, nk.ReLU(), nk.Linear())


def conv1d(*middle: Layer, end: Layer | None = None) -> nk.Sequential:
    return nk.Sequential(nk.Conv1d(2, b_std=0.2), *middle, end or nk.Flatten(), nk.Linear())


def conv2d(*middle: Layer, end: Layer | None = None) -> nk.Sequential:
    return nk.Sequential(nk.Conv2d(2, b_std=0.2), *middle, end or nk.Flatten(), nk.Linear())


def _decay(d):
    """A positional embeddings' decay with distance (SelfAttention's pos_emb_decay_fn)."""
    return (1.0 + d) ** -1.0


LAYER_CASES: dict[str, Case] = {
    "Linear": Case(nk.Linear, dense_first, (3,), {"W_std": 1.3, "b_std": 0.2},
                   {"W_std": 0.7, "b_std": 0.0, "in_channels": 3}, nt="dense", monte_carlo=True),
    "Conv1d": Case(nk.Conv1d, lambda c: nk.Sequential(c, nk.ReLU(), nk.Flatten(), nk.Linear()), (2, 6),
                   {"kernel_size": 3, "stride": 2, "padding": "circular"},
                   {"kernel_size": 2, "stride": 1, "padding": "valid", "W_std": 1.5, "b_std": 0.3,
                    "in_channels": 2}, nt="conv"),
    "Conv2d": Case(nk.Conv2d, lambda c: nk.Sequential(c, nk.Erf(), nk.Flatten(), nk.Linear()), (1, 4, 5),
                   {"kernel_size": (2, 3), "padding": "valid"},
                   {"kernel_size": 3, "stride": 2, "padding": "same", "W_std": 0.8, "b_std": 0.0,
                    "in_channels": 1}, nt="conv", monte_carlo=True),
    "AvgPool1d": Case(nk.AvgPool1d, lambda p: conv1d(nk.ReLU(), p), (1, 6), {"kernel_size": 2},
                      {"kernel_size": 3, "stride": 1}, nt="avgpool"),
    "AvgPool2d": Case(nk.AvgPool2d, lambda p: conv2d(nk.ReLU(), p), (1, 4, 4), {"kernel_size": 2, "stride": 1},
                      {"kernel_size": 3, "stride": 2}, nt="avgpool"),
    "GlobalAvgPool": Case(nk.GlobalAvgPool, lambda p: conv2d(nk.ReLU(), end=p), (1, 3, 3), nt="gap"),
    "Flatten": Case(nk.Flatten, lambda f: conv1d(nk.Abs(), end=f), (1, 5), nt="flatten"),
    "LayerNorm": Case(nk.LayerNorm, lambda n: conv1d(n, nk.ReLU(), end=nk.GlobalAvgPool()), (2, 5), {"eps": 1e-5},
                      {"eps": 1e-3}, nt="layernorm"),
    "Residual": Case(lambda **s: nk.Residual(nk.ReLU(), nk.Linear(**s)),
                     lambda r: nk.Sequential(nk.Linear(), r, nk.ReLU(), nk.Linear()), (3,), {"b_std": 0.1},
                     {"b_std": 0.4, "W_std": 0.5}, nt="residual", monte_carlo=True),
    "Residual_conv": Case(lambda **s: nk.Residual(nk.ReLU(), nk.Conv1d(3, **s)),
                          lambda r: conv1d(r, nk.ReLU(), end=nk.GlobalAvgPool()), (1, 5), {"b_std": 0.1},
                          {"b_std": 0.4}, nt="residual"),
    "Parallel": Case(lambda **s: nk.layers.Parallel(nk.Linear(W_std=1.1), (nk.ReLU(), nk.Linear(b_std=0.3)), **s),
                     lambda p: nk.Sequential(nk.Linear(), p, nk.Linear()), (3,), {"combine": "product"},
                     {"combine": "sum"}, monte_carlo=True, nt="parallel"),
    "Parallel_concat": Case(lambda **s: nk.layers.Parallel((nk.Erf(), nk.Conv1d(3)), (nk.ReLU(), nk.Conv1d(2)),
                                                           combine="concat", **s),
                            lambda p: conv1d(p, nk.AvgPool1d(2), end=nk.Flatten()), (1, 6), {"proportions": (1, 2)},
                            {"proportions": (2, 1)}, nt="parallel"),
    "Parallel_sum_conv": Case(lambda **s: nk.layers.Parallel((), (nk.ReLU(), nk.Conv2d(3, **s)), nk.Conv2d(1)),
                              lambda p: conv2d(p, nk.ReLU(), end=nk.GlobalAvgPool()), (1, 4, 3), {"b_std": 0.1},
                              {"b_std": 0.3}, nt="parallel"),
    "SumPool1d": Case(nk.layers.SumPool1d, lambda p: conv1d(nk.ReLU(), p), (1, 6), {"kernel_size": 2},
                      {"kernel_size": 3, "stride": 1}, nt="sumpool"),
    "SumPool2d": Case(nk.layers.SumPool2d, lambda p: conv2d(nk.ReLU(), p), (1, 4, 4), {"kernel_size": 2, "stride": 1},
                      {"kernel_size": 3, "stride": 2}, nt="sumpool"),
    "GlobalSumPool": Case(nk.layers.GlobalSumPool, lambda p: conv2d(nk.ReLU(), end=p), (1, 3, 3), nt="gsp"),
    # graphs: per example the features (2, 4) then a 4 x 4 (weighted) adjacency
    "Aggregate": Case(nk.layers.Aggregate, lambda a: nk.Sequential(nk.Conv1d(1, b_std=0.2), a, nk.ReLU(), a,
                                                                    nk.layers.GlobalSumPool(), nk.Linear()), (6, 4),
                      monte_carlo=True, nt="aggregate"),
    "Dropout": Case(nk.layers.Dropout, lambda d: nk.Sequential(nk.Linear(), nk.ReLU(), d, nk.Linear()), (3,),
                    {"rate": 0.8}, {"rate": 0.5, "mode": "test"}, nugget=True, nt="dropout"),
    "Dropout_conv": Case(nk.layers.Dropout, lambda d: conv1d(nk.ReLU(), d, nk.Conv1d(2), end=nk.GlobalAvgPool()),
                         (1, 5), {"rate": 0.7}, {"rate": 0.9}, nugget=True, nt="dropout"),
    "Conv3d": Case(nk.layers.Conv3d, lambda c: nk.Sequential(c, nk.ReLU(), nk.Flatten(), nk.Linear()), (1, 3, 4, 3),
                   {"kernel_size": (2, 3, 2), "padding": "valid"},
                   {"kernel_size": 3, "stride": 2, "padding": "same", "W_std": 0.8, "b_std": 0.0, "in_channels": 1},
                   nt="conv"),
    "AvgPool3d": Case(nk.layers.AvgPool3d, lambda p: nk.Sequential(nk.layers.Conv3d(2), nk.ReLU(), p, nk.Flatten(),
                                                                    nk.Linear()), (1, 3, 3, 2),
                      {"kernel_size": (2, 2, 1), "stride": 1}, {"kernel_size": (2, 1, 2)}, nt="avgpool"),
    "SumPool3d": Case(nk.layers.SumPool3d, lambda p: nk.Sequential(nk.layers.Conv3d(2), nk.ReLU(), p, nk.Flatten(),
                                                                    nk.Linear()), (1, 3, 3, 2),
                      {"kernel_size": (2, 2, 1), "stride": 1}, {"kernel_size": (2, 1, 2)}, nt="sumpool"),
    "ConvTranspose1d": Case(nk.layers.ConvTranspose1d, lambda c: nk.Sequential(c, nk.ReLU(), nk.Flatten(), nk.Linear()),
                            (2, 4), {"kernel_size": 3, "stride": 2, "padding": "valid"},
                            {"kernel_size": 2, "stride": 3, "padding": "same", "W_std": 1.5, "b_std": 0.3,
                             "in_channels": 2}, monte_carlo=True, nt="convtranspose"),
    "ConvTranspose2d": Case(nk.layers.ConvTranspose2d, lambda c: conv2d(c, nk.ReLU(), end=nk.GlobalAvgPool()),
                            (1, 3, 2), {"kernel_size": (3, 2), "stride": 2},
                            {"kernel_size": 1, "stride": 1, "padding": "valid", "W_std": 0.8, "b_std": 0.0,
                             "in_channels": 1}, nt="convtranspose"),
    "SelfAttention": Case(nk.layers.SelfAttention, lambda a: conv1d(a, nk.ReLU(), end=nk.GlobalAvgPool()), (2, 4),
                          {"b_std": 0.1, "pos_emb_type": "sum"},
                          {"n_heads": 2, "W_key_std": 1.5, "W_value_std": 0.5, "W_query_std": 0.7, "W_out_std": 1.2,
                           "b_std": 0.3, "attention_mechanism": "relu", "pos_emb_type": "concat",
                           "pos_emb_p_norm": 1.0, "pos_emb_decay_fn": _decay, "W_pos_emb_std": 0.5,
                           "val_pos_emb": True}),
    "Mask": Case(nk.layers.Mask, lambda m: nk.Sequential(m, nk.Conv1d(1, b_std=0.2),
                                                        nk.Residual(nk.layers.SelfAttention(b_std=0.1)), nk.ReLU(),
                                                        nk.GlobalAvgPool(), nk.Linear()), (2, 4)),
    "TokenLinear": Case(nk.layers.TokenLinear, lambda t: nk.Sequential(t, nk.ReLU(), nk.GlobalAvgPool(), nk.Linear()),
                        (2, 4), {"W_std": 1.3, "b_std": 0.2}, {"W_std": 0.7, "b_std": 0.0, "in_channels": 2}),
    "Unflatten": Case(nk.layers.Unflatten, lambda u: nk.Sequential(nk.Linear(W_std=1.2, b_std=0.2), u, nk.ReLU(),
                                                                   nk.Conv2d(2), nk.Flatten(), nk.Linear()),
                      (3,), {"spatial": (2, 3)}, {"spatial": (3, 2)}),
}

def _other(value):
    """Another value of a setting: the next integer, a float a quarter larger (or 0.25 for 0), the other bool, a
    sequence one element longer."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, tuple):
        return (*value, 0.25)
    if isinstance(value, int):
        return value + 1
    return value * 1.25 if value else 0.25


#: every registered nonlinearity, as an Activation layer between two Linear layers (its settings from the registry)
ACTIVATION_CASES: dict[str, Case] = {
    name: Case(lambda e=entry, **s: nk.Activation(e.build(nk.activations.DEFAULT_DEGREE, **s)), flat, (3,),
               dict(entry.params), {key: _other(value) for key, value in entry.params},
               nt=name if name in ("relu", "erf", "gelu", "tanh") else None, monte_carlo=name == "relu")
    for name, entry in registry.REGISTRY.items()
}
CASES = {**LAYER_CASES, **{f"activation_{name}": case for name, case in ACTIVATION_CASES.items()}}


def build(case: Case) -> nk.Sequential:
    return case.context(case.make(**case.settings))


def inputs(case: Case, n: int = 4, dtype: torch.dtype = f64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, *case.shape, generator=generator, dtype=f64).to(dtype)


@pytest.mark.parametrize("name", list(CASES))
def test_out_shape_is_the_finite_modules_output_shape(name):
    case = CASES[name]
    arch = build(case)
    net = arch.network(case.shape, width=5, seed=0, dtype=f64)
    x = inputs(case, 2)
    steps, _ = arch.plan(case.shape)
    assert len(net) == len(steps)
    adjacency = None
    if isinstance(net, GraphSequential):   # graphs: the layers see the node features, Aggregate the adjacency too
        x, adjacency = split(x)
    for index, (module, step) in enumerate(zip(net, steps, strict=True)):
        shape = tuple(x.shape[1:])
        with torch.no_grad():
            x = module(x, adjacency) if isinstance(module, AggregateModule) else module(x)
        expected = step.layer.out_shape(shape, f"layer {index}")
        if step.layer.weights or step.layer.branches:  # its channel count is a width (or out_features for the last)
            assert tuple(x.shape[2:]) == tuple(expected[1:]) and len(x.shape) == len(expected) + 1, (index, step)
        else:
            assert tuple(x.shape[1:]) == tuple(expected), (index, step)
    assert x.shape == (2, 1)


@pytest.mark.parametrize("name", list(CASES))
def test_describe_changes_with_every_setting(name):
    case = CASES[name]
    base = case.make(**case.settings)
    seen = {base.describe()}
    assert case.make(**case.settings).describe() == base.describe()       # the same settings, the same text
    for key, value in case.variants.items():
        other = case.make(**{**case.settings, key: value})
        assert other.describe() not in seen, f"{name}: describe() does not change with {key}"
        seen.add(other.describe())
        X = inputs(case)
        if build(case).describe() != case.context(other).describe():
            assert build(case).kernel_tiles(X).fingerprint() != case.context(other).kernel_tiles(X).fingerprint()


def test_every_registered_nonlinearity_describes_itself_apart():
    texts = [nk.Activation(entry.build(nk.activations.DEFAULT_DEGREE)).describe()
             for entry in registry.REGISTRY.values()]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_diagonal_is_kernel_diag(name):
    """The Gram's diagonal (the tiled path's exact one) equals kernel_diag bitwise; the pair formulas at a point with
    itself (one block of X against a copy, no overwrite) agree to their accuracy there: sqrt(eps) for the maps with
    a cone at coincidence (the ReLU family, sign, step), eps per layer for the smooth ones."""
    case = CASES[name]
    arch = build(case)
    X = inputs(case)
    for get in ("nngp", "ntk"):
        K, diag = arch.kernel(X, get=get), arch.kernel_diag(X, get=get)
        assert torch.equal(K.diagonal(), diag)
    if case.nugget:     # two examples that are equal are not the same example: the pair formulas give the limit
        return
    sigma, theta = arch.block(X, X.clone(), True)
    sx, tx = arch.kernel_diag(X, get=("nngp", "ntk"))
    torch.testing.assert_close(sigma.diagonal(), sx, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(theta.diagonal(), tx, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_float32_agrees_with_float64(name):
    """Rounding of float32 (eps 6e-8) over a few layers, amplified at most by sqrt at a cone: 1e-4 of the scale."""
    case = CASES[name]
    arch = build(case)
    X, Y = inputs(case), inputs(case, 3, seed=1)
    for get in ("nngp", "ntk"):
        exact = arch.kernel(X, Y, get=get)
        single = arch.kernel(X.float(), Y.float(), get=get)
        assert single.dtype == torch.float32
        torch.testing.assert_close(single.double(), exact, rtol=1e-4, atol=1e-4 * float(exact.abs().max()))


def _monte_carlo(name: str) -> None:
    """The empirical NTK averaged over S networks of width n against the kernel (Theorem 1): within 5 standard
    errors of the mean, plus the O(1/n) finite-width bias (allowed 2 / n of the kernel's scale)."""
    case = CASES[name]
    arch = build(case)
    X = inputs(case, 3)
    K = arch.kernel(X)
    width, samples = 256, 12
    values = torch.stack([nk.empirical_ntk(arch.network(case.shape, width=width, seed=s, dtype=f64), X,
                                           mode="trace", method="jacobian") for s in range(samples)])
    mean, stderr = values.mean(0), values.std(0) / samples**0.5
    allowed = 5 * stderr + 2.0 / width * float(K.abs().max())
    assert bool(((mean - K).abs() <= allowed).all()), ((mean - K).abs() / allowed).max()


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.monte_carlo])
def test_wide_networks_converge_to_the_kernel(name):
    _monte_carlo(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not c.monte_carlo and not c.nugget])
def test_wide_networks_converge_to_the_kernel_slow(name):
    _monte_carlo(name)


def test_neural_tangents_references_cover_every_layer_it_has():
    kinds: set[str] = set()

    def walk(spec: list) -> None:
        for entry in spec:
            kinds.add(entry[0])
            if entry[0] == "residual":
                walk(entry[1])
            if entry[0] == "parallel":
                for branch in entry[1]["branches"]:
                    walk(branch)

    for path in sorted((Path(__file__).parent / "data").glob("nt_references*.npz")):
        for case in json.loads(str(np.load(path)["cases"])).values():
            walk(case["layers"])
    wanted = {case.nt for case in CASES.values() if case.nt is not None}
    assert wanted <= kinds, f"no stored neural-tangents reference for {sorted(wanted - kinds)}"


def test_the_contract_covers_every_layer_class():
    """Every public layer class of ntkit.layers has a case (a new layer must add one)."""
    import ntkit.layers as L

    classes = {name for name in L.__all__ if isinstance(getattr(L, name), type) and issubclass(getattr(L, name), Layer)}
    short_forms = {entry.layer for entry in registry.REGISTRY.values() if entry.layer}
    covered = {name.split("_")[0] for name in LAYER_CASES} | short_forms | {"Activation", "Layer", "Sequential"}
    assert classes <= covered, f"layers without a contract case: {sorted(classes - covered)}"
