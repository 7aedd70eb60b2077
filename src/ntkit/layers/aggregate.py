"""`Aggregate`: message passing over a graph given with each example (Du et al. 2019, Graph Neural Tangent Kernel).

A graph of V nodes with C features per node travels as one example of shape (C + V, V): its features (C, V), then
its V x V adjacency, A[i, j] the weight of the edge from node i to node j (`graphs` builds them, from dense
adjacencies or from edge lists). An architecture with an `Aggregate` reads its inputs so; the other layers see the
features (C, V) only, the nodes as positions: `Conv1d(1)` is a node-wise Linear, `GlobalSumPool` a sum readout.
The layer replaces each node by the weighted sum of its predecessors, h'[:, j] = sum_i h[:, i] A[i, j], so (no
parameters; neural-tangents' `stax.Aggregate` with implementation="DENSE")

    Sigma'(x, y) = A_x^T Sigma(x, y) A_y,        Theta'(x, y) = A_x^T Theta(x, y) A_y

on the node-by-node covariance: O(V^3) per pair. Graphs of different sizes are padded to one V with isolated nodes
of zero features; with b_std = 0 in the layers before the readout the padding changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .._checks import as_tensor
from .base import Layer, LayerError, spatial_only
from .record import Record


class Aggregate(Layer):
    """h'[:, j] = sum_i h[:, i] A[i, j] over the adjacency A that comes with each example (see `graphs`)."""

    reads_graphs = True
    odd_preserving = True
    pools = True

    def out_shape(self, shape, where):
        spatial_only(shape, self, where, dims=1)
        return shape

    def need(self, out_need):
        return "full"

    def apply(self, record: Record, ctx) -> Record:
        ax, ay = ctx.graphs
        if record.nbatch == 2:
            left, right = ax.transpose(1, 2)[:, None], ay[None]
        else:
            left, right = ax.transpose(1, 2), ay
        return record.map(lambda t: torch.matmul(torch.matmul(left, t), right))

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return AggregateModule()


class AggregateModule(nn.Module):
    """h @ A: h (N, C, V), A (N, V, V)."""

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return torch.matmul(h, adjacency)


class GraphSequential(nn.Sequential):
    """The finite network of an architecture with `Aggregate`: x (N, C + V, V) is split into the node features and
    the adjacency, which each `AggregateModule` receives."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, adjacency = split(x)
        for module in self:
            h = module(h, adjacency) if isinstance(module, AggregateModule) else module(h)
        return h


# ------------------------------------------------------------------------------------------ inputs
def graphs(features, adjacency=None, edges=None):
    """The inputs of a graph architecture: (N, C + V, V), the node features (N, C, V) then the adjacency.

    Args:
        features: (N, C, V) float, C features of each of V nodes (pad smaller graphs with zero features).
        adjacency: (N, V, V), adjacency[n, i, j] the weight of the edge i -> j of graph n (dense), or
        edges: (N, E, 2) integers, the edges (tail, head) of each graph (repeats add up; rows with a negative
            head are padding), as neural-tangents' implementation="SPARSE".
    NumPy in gives NumPy out.
    """
    X, numpy_in = as_tensor(features, "features", ndim=(3,))
    if X.dtype not in (torch.float32, torch.float64):
        X = X.float()
    N, _, V = X.shape
    if (adjacency is None) == (edges is None):
        raise ValueError("give the graphs as adjacency (N, V, V) or as edges (N, E, 2), exactly one of them")
    if adjacency is not None:
        A = as_tensor(adjacency, "adjacency", ndim=(3,), dtype=X.dtype, device=X.device)[0]
        if A.shape != (N, V, V):
            raise ValueError(f"adjacency must be (N, V, V) = ({N}, {V}, {V}) for features of shape "
                             f"{tuple(X.shape)} (N, C, V), got {tuple(A.shape)}")
    else:
        A = _dense(edges, N, V, X)
    out = torch.cat([X, A], dim=1)
    return out.numpy() if numpy_in else out


def _dense(edges, N: int, V: int, like: torch.Tensor) -> torch.Tensor:
    E = torch.as_tensor(np.asarray(edges) if not isinstance(edges, torch.Tensor) else edges)
    if E.dtype.is_floating_point or E.dtype == torch.bool or E.ndim != 3 or E.shape[0] != N or E.shape[2] != 2:
        raise ValueError(f"edges must be integers of shape (N, E, 2) = ({N}, E, 2), got {E.dtype} "
                         f"{tuple(E.shape)}")
    keep = E[..., 1] >= 0
    if bool((E[keep] >= V).any()) or bool((E[keep][:, 0] < 0).any()):
        raise ValueError(f"edges name nodes outside 0..{V - 1} (the features have V = {V} nodes)")
    n = torch.arange(N).unsqueeze(1).expand(N, E.shape[1])[keep]
    A = torch.zeros(N, V, V, dtype=like.dtype)
    A.index_put_((n, E[..., 0][keep], E[..., 1][keep]), torch.ones(len(n), dtype=like.dtype), accumulate=True)
    return A.to(like.device)


def split(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, C, V), adjacency (N, V, V)) of inputs (N, C + V, V)."""
    V = X.shape[-1]
    return X[:, :-V], X[:, -V:]


def reads_graphs(layers: Sequence[Layer]) -> bool:
    """Whether an architecture has an `Aggregate` (at any depth): its inputs are graphs."""
    return any(getattr(layer, "reads_graphs", False) or any(reads_graphs(b) for b in layer.branches or ())
               for layer in layers)


def graph_shape(layers: Sequence[Layer], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-example shape the layers see: (C, V) for graphs (C + V, V), else `shape` (a LayerError naming the
    first Aggregate when the inputs carry no adjacency)."""
    if not reads_graphs(layers):
        return shape
    if len(shape) != 2 or shape[0] <= shape[1]:
        where = next((f"layer {i}" for i, layer in enumerate(layers) if getattr(layer, "reads_graphs", False)),
                     "in a branch")
        raise LayerError(f"Aggregate ({where}) needs graphs: per example (C + V, V), the node features (C, V) then "
                         f"the V x V adjacency (nk.layers.graphs(features, adjacency)); got shape {shape}, which "
                         f"has no room for an adjacency of its {shape[-1]} nodes")
    return (shape[0] - shape[1], shape[1])


def check_nodes(steps, shape: tuple[int, ...]) -> None:
    """Refuse an Aggregate whose input has another number of positions than the graphs have nodes (a layer before
    it changed them: a strided or "valid" convolution, pooling)."""
    for step in steps:
        if getattr(step.layer, "reads_graphs", False) and step.in_shape[-1] != shape[-1]:
            raise LayerError(f"Aggregate ({step.where}): its input has {step.in_shape[-1]} positions but the graphs "
                             f"have {shape[-1]} nodes (the adjacency is {shape[-1]} x {shape[-1]}); keep the nodes "
                             f"(Conv1d(1), stride 1) before it")
        for sub in step.subs or ():
            check_nodes(sub, shape)


def adjacencies(steps, X: torch.Tensor, Y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The adjacencies of the examples X and Y (the rows and columns of a block) when the plan reads graphs."""
    if not reads_graphs([step.layer for step in steps]):
        return None
    return split(X)[1], split(X if Y is None else Y)[1]


def features(steps, X: torch.Tensor) -> torch.Tensor:
    """The node features of graph inputs (the inputs themselves when the plan reads no graphs)."""
    return split(X)[0] if reads_graphs([step.layer for step in steps]) else X
