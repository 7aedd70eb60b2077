"""The finite network of an architecture: each layer's torch module, with the widths of its weight layers.

Read from what each layer declares (`weights`, `branches`, `branch_channels`, `module`, `wrap`); no layer is
recognized by its class.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .._checks import check_positive_int
from .base import Layer
from .masking import new_network
from .plan import prefix_of


def hidden_widths(layers: Sequence[Layer], width: int | Sequence[int] | None) -> list[int]:
    """The width of each hidden weight layer, in order, from one width or a list (errors name what is wrong)."""
    hidden = count_hidden(layers, top=True)
    if hidden == 0:
        return []
    if isinstance(width, (list, tuple)):
        if len(width) != hidden:
            raise ValueError(f"width must list {hidden} hidden widths, one per hidden weight layer, got {len(width)}")
        return [check_positive_int(w, "width") for w in width]
    if width is None:
        raise ValueError(f"width is required: this architecture has {hidden} hidden weight layers")
    return [check_positive_int(width, "width")] * hidden


def modules(layers: Sequence[Layer], shape: tuple[int, ...], last_out: int, widths: Iterator[int],
            generator: torch.Generator | None, dtype: torch.dtype, prefix: str = ""
            ) -> tuple[list[nn.Module], tuple[int, ...]]:
    """The finite modules of `layers` on inputs of `shape` (real channel counts); the last weight layer has
    `last_out` outputs, the others take the next of `widths`; a branch's last weight layer has the channel count
    its layer gives (`Layer.branch_channels`: the input's for a Residual)."""
    last = max((i for i, layer in enumerate(layers) if layer.weights), default=-1)
    if not prefix:
        new_network()     # a Mask of an earlier network is not this one's (`ntkit.layers.masking`)
    out_modules = []
    for index, layer in enumerate(layers):
        where = f"layer {prefix}{index}"
        if layer.branches is not None:
            branches = []
            for b, (branch, channels) in enumerate(zip(layer.branches, layer.branch_channels(shape, widths),
                                                       strict=True)):
                inner, out = modules(branch, shape, channels, widths, generator, dtype,
                                     prefix_of(layer, f"{prefix}{index}", b))
                branches.append((nn.Sequential(*inner), out))
            out_modules.append(layer.wrap([module for module, _ in branches]))
            shape, _ = layer.check_branches(shape, [out for _, out in branches], [True] * len(branches), where)
            continue
        out = layer.out_shape(shape, where)
        if layer.weights:
            channels = last_out if index == last else next(widths) * units_per_channel(layers[index + 1:])
            out_modules.append(layer.module(shape, channels, generator, dtype))
            shape = (channels, *out[1:])
        else:
            out_modules.append(layer.module(shape, None, generator, dtype))
            shape = out
    return out_modules, shape


def units_per_channel(after: Sequence[Layer]) -> int:
    """The factor of a hidden weight layer's width: the `width_factor` of the layers after it, up to the next weight
    layer or branching layer (an Unflatten spreads the units over its positions, `width` channels at each)."""
    factor = 1
    for layer in after:
        if layer.weights or layer.branches is not None:
            break
        factor *= layer.width_factor
    return factor


def count_hidden(layers: Sequence[Layer], top: bool) -> int:
    """The weight layers that take a width: all but the last one at each level."""
    weights = sum(1 for layer in layers if layer.weights)
    inner = sum(layer.count_widths() + sum(count_hidden(branch, False) for branch in layer.branches)
                for layer in layers if layer.branches is not None)
    return max(weights - 1, 0) + inner
