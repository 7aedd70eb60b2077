"""`Parallel`: several branches on one input, combined by a sum, a concatenation along channels or a product.

neural-tangents writes these `FanOut(n), parallel(*branches), FanInSum() | FanInConcat() | FanInProd()`. Each
branch is a tuple of layers, `()` the identity. With infinitely many channels the branches are independent (each has
weight layers of its own), so (branches i = 1..n with records Sigma_i, Theta_i)

    "sum":      Sigma' = sum_i Sigma_i,                Theta' = sum_i Theta_i
    "concat":   Sigma' = sum_i p_i Sigma_i / sum_i p_i, Theta' = sum_i p_i Theta_i / sum_i p_i
    "product":  Sigma' = prod_i Sigma_i,               Theta' = sum_i Theta_i prod_{j != i} Sigma_j

where p_i is branch i's share of the concatenated channels (`proportions`). A sum needs branches of mean zero: each
branch but the identity ends with a weight layer (pooling, Flatten or LayerNorm may follow it). The output of a
concatenation or a product is not Gaussian: a weight layer must come before the next nonlinearity. `Residual` is
`Parallel((), branch)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .._checks import check_choice, check_positive_int
from .base import Layer, LayerError
from .plan import build
from .record import Record

COMBINE = ("sum", "concat", "product")
Branch = Layer | Sequence[Layer]


class Parallel(Layer):
    """Branches on one input, combined: Parallel((nk.Conv2d(1),), (nk.Conv2d(3), nk.ReLU(), nk.Conv2d(3)),
    combine="concat").

    Args:
        *branches: each a layer, a sequence of layers or an `nk.Sequential` (a branch of its layers); () is the
            identity (sum and product only, at most once).
        combine: "sum" (neural-tangents' FanInSum), "concat" (FanInConcat along channels) or "product" (FanInProd).
        proportions: "concat" only: positive integers, the channel counts of the branches in the finite network are
            proportions[i] * width (default: equal).
    """

    def __init__(self, *branches: Branch, combine: str = "sum", proportions: Sequence[int] | None = None):
        self.combine = check_choice(combine, "combine", COMBINE)
        if len(branches) < 2:
            raise LayerError(f"Parallel needs at least two branches, got {len(branches)}")
        self.parts: tuple[tuple[Layer, ...], ...] = tuple(_branch(b, i) for i, b in enumerate(branches))
        if proportions is None:
            self.proportions = (1,) * len(self.parts)
        else:
            if self.combine != "concat":
                raise ValueError(f"proportions is for combine='concat' only, got combine={combine!r}")
            if len(proportions) != len(self.parts):
                raise ValueError(f"proportions must have one entry per branch ({len(self.parts)}), got "
                                 f"{len(proportions)}")
            self.proportions = tuple(check_positive_int(p, "proportions") for p in proportions)
        identities = sum(1 for part in self.parts if not part)
        if identities and self.combine == "concat":
            raise LayerError("Parallel(combine='concat'): a branch is the identity; concatenate a branch with a weight "
                             "layer (its share of the channels must be a width)")
        if identities > 1:
            raise LayerError(f"Parallel(combine={self.combine!r}) has {identities} identity branches; at most one "
                             f"(the inputs are not independent of each other)")

    @property
    def branches(self) -> tuple[tuple[Layer, ...], ...]:
        return self.parts

    def describe(self) -> str:
        parts = ", ".join("(" + ", ".join(layer.describe() for layer in part) + ("," if len(part) == 1 else "") + ")"
                          for part in self.parts)
        extra = "" if self.combine != "concat" else f", proportions={self.proportions}"
        return f"Parallel({parts}, combine={self.combine!r}{extra})"

    # --------------------------------------------------------------------------------- shapes
    def out_shape(self, shape, where):
        outs = [build(part, shape, "", True)[1] for part in self.parts]
        return self.check_branches(shape, outs, [True] * len(outs), where)[0]

    def check_branches(self, shape, outs, gaussians, where):
        for part, out in zip(self.parts, outs, strict=True):
            if len(out) != len(outs[0]) or out[1:] != outs[0][1:]:
                raise LayerError(f"{self.name} ({where}): its branches give the shapes per example "
                                 f"{', '.join(_positions(o) for o in outs)}; combine={self.combine!r} needs the same "
                                 f"positions" + ("" if self.combine == "concat" else " and rank"))
            if part and self.combine == "sum" and not ends_with_weights(part):
                raise LayerError(self._end_message(where))
            if part and self.combine == "product" and not any(_has_weights(layer) for layer in part):
                raise LayerError(f"{self.name} ({where}): each branch of a product needs a weight layer (Linear or "
                                 f"Conv), so that the branches are independent in the limit")
        if len(shape) > 1 and len(outs[0]) == 1:     # flat outputs no longer show the positions they came from
            raise LayerError(f"{self.name} ({where}): its branches end flat (Flatten or global pooling) on inputs "
                             f"with positions; combine them before flattening")
        if self.combine == "concat":
            return (sum(out[0] for out in outs), *outs[0][1:]), False
        channels = next((o[0] for part, o in zip(self.parts, outs, strict=True) if not part), outs[0][0])
        gaussian = all(gaussians) if self.combine == "sum" else False
        return (channels, *outs[0][1:]), gaussian

    def _end_message(self, where: str) -> str:
        return (f"{self.name} ({where}): each branch of a sum must end with a Linear or Conv layer (pooling, "
                f"Flatten or LayerNorm may follow it), so that the branches have mean zero and are independent in "
                f"the limit")

    # --------------------------------------------------------------------------------- kernels
    def merge(self, records: list[Record]) -> Record:
        first = records[0]
        if self.combine == "sum":
            sigma = _total([r.sigma for r in records])
            theta = None if first.theta is None else _total([r.theta for r in records])
        elif self.combine == "concat":
            sigma = _average([r.sigma for r in records], self.proportions)
            theta = None if first.theta is None else _average([r.theta for r in records], self.proportions)
        else:
            sigma, theta = _product(records)
        return Record(sigma, theta, first.layout, first.nbatch, first.spatial)

    # --------------------------------------------------------------------------------- finite network
    def count_widths(self) -> int:
        return 0 if any(not part for part in self.parts) else 1

    def branch_channels(self, shape: tuple[int, ...], widths: Iterator[int]) -> list[int]:
        if self.count_widths() == 0:           # with the identity: the input's channel count
            return [shape[0]] * len(self.parts)
        width = next(widths)
        return [p * width for p in self.proportions]

    def wrap(self, branches: list[nn.Module]) -> nn.Module:
        return ParallelModule(branches, self.combine)


def _branch(branch: Branch, index: int) -> tuple[Layer, ...]:
    layers = getattr(branch, "layers", None) if not isinstance(branch, (Layer, list, tuple)) else None
    if layers is not None:
        branch = layers
    part = (branch,) if isinstance(branch, Layer) else tuple(branch) if isinstance(branch, (list, tuple)) else None
    if part is None:
        raise TypeError(f"branch {index} of Parallel must be an ntkit layer, a sequence of them or () for the "
                        f"identity, got {type(branch).__name__}")
    for position, layer in enumerate(part):
        if not isinstance(layer, Layer):
            raise TypeError(f"layer {position} of branch {index} of Parallel must be an ntkit layer, got "
                            f"{type(layer).__name__}")
    return part


def _has_weights(layer: Layer) -> bool:
    return layer.weights or any(_has_weights(inner) for part in layer.branches or () for inner in part)


def ends_with_weights(layers: Sequence[Layer]) -> bool:
    """Whether the last weight layer is followed only by layers that keep their input odd in its weights (pooling,
    Flatten, LayerNorm: `Layer.odd_preserving`): then the branch has mean zero and is independent of the others in the
    limit."""
    for layer in reversed(layers):
        if layer.weights:
            return True
        if not layer.odd_preserving:
            return False
    return False


def _positions(shape: tuple[int, ...]) -> str:
    return "(d,)" if len(shape) == 1 else f"(C, {', '.join(map(str, shape[1:]))})"


def _total(ts: list[torch.Tensor]) -> torch.Tensor:
    out = ts[0] + ts[1]
    for t in ts[2:]:
        out = out + t
    return out


def _average(ts: list[torch.Tensor], proportions: tuple[int, ...]) -> torch.Tensor:
    """The mean of `ts` weighted by the proportions (neural-tangents' rule: a plain mean when they are equal)."""
    if all(p == proportions[0] for p in proportions):
        return _total(ts) / len(ts)
    return _total([t * p for t, p in zip(ts, proportions, strict=True)]) / math.fsum(proportions)


def _product(records: list[Record]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """prod_i Sigma_i and sum_i Theta_i prod_{j != i} Sigma_j (in neural-tangents' order)."""
    sigma = records[0].sigma
    theta = records[0].theta
    for r in records[1:]:
        if theta is not None:
            theta = theta * r.sigma + sigma * r.theta
        sigma = sigma * r.sigma
    return sigma, theta


class ParallelModule(nn.Module):
    """The branches on one input (an empty nn.Sequential is the identity), summed, concatenated along channels
    (dim 1) or multiplied."""

    def __init__(self, branches: list[nn.Module], combine: str):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.combine == "concat":
            return torch.cat(outs, dim=1)
        out = outs[0]
        for o in outs[1:]:
            out = out + o if self.combine == "sum" else out * o
        return out

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}"
