"""Planning an architecture: shapes, the layout of spatial covariance each layer keeps, and the fused chains.

Read from what each layer declares (`ntkit.layers.base.Layer`): its shape rule, `need`, `gaussian`, `weights`,
`branch`, `dense_scales` and `elementwise`; no layer is recognized by its class.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..activations import Quadrature, get_activation
from ..kernels import Map, Recursion
from .base import Layer, wider


@dataclass
class Step:
    """One layer of a plan: its shapes and the layout its output must keep (`subs`: the plans of its branches)."""

    layer: Layer
    where: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    out_need: str = "flat"
    subs: list[list[Step]] | None = field(default=None, repr=False)

    @property
    def place(self) -> str:
        """The layer as the range errors name it: "layer 2 (Conv2d)"."""
        return f"{self.where} ({self.layer.name})"

    @property
    def pools(self) -> bool:
        """Whether the step averages over positions (itself, or a layer of one of its branches)."""
        return self.layer.pools or any(s.pools for sub in self.subs or () for s in sub)


def build(layers: Sequence[Layer], shape: tuple[int, ...], prefix: str, gaussian: bool
          ) -> tuple[list[Step], tuple[int, ...], bool]:
    """Forward over the layers: shapes and Gaussianity, validated (errors name the layer)."""
    steps = []
    for index, layer in enumerate(layers):
        where = f"layer {prefix}{index}"
        if layer.branches is not None:   # parallel branches on the input, combined by the layer (Parallel, Residual)
            built = [build(branch, shape, prefix_of(layer, f"{prefix}{index}", b), gaussian)
                     for b, branch in enumerate(layer.branches)]
            out, gaussian = layer.check_branches(shape, [o for _, o, _ in built], [g for _, _, g in built], where)
            steps.append(Step(layer, where, shape, out, subs=[sub for sub, _, _ in built]))
            shape = out
            continue
        out = layer.out_shape(shape, where)
        if layer.weights:  # its channel count is the width: infinite here (0 stands for it)
            out = (0, *out[1:])
        gaussian = layer.gaussian(gaussian, where)
        steps.append(Step(layer, where, shape, out))
        shape = out
    return steps, shape, gaussian


def assign_needs(steps: list[Step], out_need: str) -> str:
    """Backward over a plan: the layout each step's output must keep; returns what the input must have."""
    for step in reversed(steps):
        step.out_need = out_need if len(step.out_shape) > 1 else "flat"
        if step.subs is not None:
            need = step.out_need
            for sub in step.subs:
                need = wider(need, assign_needs(sub, step.out_need))
        else:
            need = step.layer.need(step.out_need)
        out_need = need if len(step.in_shape) > 1 else "flat"
    return out_need


def elements(steps: list[Step], in_need: str, in_shape: tuple[int, ...]) -> int:
    """The largest number of covariance entries one example pair holds along the plan."""
    def size(need: str, shape: tuple[int, ...]) -> int:
        positions = math.prod(shape[1:]) if len(shape) > 1 else 1
        return {"flat": 1, "diag": positions, "full": positions * positions}[need]

    largest, need = size(in_need, in_shape), in_need
    for step in steps:
        for sub in step.subs or ():
            largest = max(largest, elements(sub, need, step.in_shape))
        # a layer works on its input's layout before reducing to its own
        largest = max(largest, size(need, step.out_shape), size(step.out_need, step.out_shape))
        need = step.out_need
    return largest


def all_layers(layers: Sequence[Layer]) -> Iterator[Layer]:
    """The layers and, depth first, those of their branches."""
    for layer in layers:
        yield layer
        for branch in layer.branches or ():
            yield from all_layers(branch)


def prefix_of(layer: Layer, at: str, b: int) -> str:
    """The prefix naming the layers of branch `b` of `layer` (at "layer 2"): "2." when only one branch has layers (a
    Residual), else "2.b." (its branches in order)."""
    with_layers = sum(1 for branch in layer.branches if branch)
    return f"{at}." if with_layers == 1 else f"{at}.{b}."


def fused_recursion(layers: Sequence[Layer]) -> Recursion | None:
    """The `ntkit.kernels.Recursion` of a fully-connected chain that the fused recursion computes: dense weight
    layers (`dense_scales`) alternating with elementwise ones (`elementwise`), dense first and last; else None.
    One nonlinearity and one (W_std, b_std) throughout give the paper's recursion; a chain whose layers differ
    gets one `Map` per weight layer after the first (`Recursion.chain`)."""
    dense = [layer.dense_scales for layer in layers[::2]]
    acts = [layer.elementwise for layer in layers[1::2]]
    if len(layers) % 2 == 0 or any(d is None for d in dense) or any(a is None for a in acts):
        return None
    W_std, b_std = dense[0]
    if all(_same(w, W_std) and _same(b, b_std) for w, b in dense) and all(_same_activation(a, acts[0])
                                                                          for a in acts):
        activation = acts[0] if acts else get_activation("identity")
        return Recursion(activation, len(dense), W_std, b_std)
    return Recursion.chain(W_std, b_std, [Map(act, w, b) for act, (w, b) in zip(acts, dense[1:], strict=True)])


def fused_prefix(layers: Sequence[Layer]) -> int:
    """The number of leading layers that form the longest fully-connected chain with at least one nonlinearity
    (`fused_recursion`; odd, at least 3), 0 when there is none: the composer computes them fused, with the
    near-pair refinement, and runs the layers after them one by one on that record."""
    end = 0
    for index, layer in enumerate(layers):
        if (layer.dense_scales if index % 2 == 0 else layer.elementwise) is None:
            break
        end = index + 1 if index % 2 == 0 else end
    return end if end >= 3 else 0


def _same_activation(a: Any, b: Any) -> bool:
    """The same nonlinearity: one object, or equal closed forms, or quadratures of one function and degree."""
    if a is b:
        return True
    if isinstance(a, Quadrature) or isinstance(b, Quadrature):
        return isinstance(a, Quadrature) and isinstance(b, Quadrature) and a.fn is b.fn and a.degree == b.degree
    return type(a) is type(b) and repr(a) == repr(b)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return float(a) == float(b)
