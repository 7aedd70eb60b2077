"""`Aggregate`: message passing over a graph given with each example (Du et al. 2019, Graph Neural Tangent Kernel).

A graph of V nodes with C features per node travels as one example of shape (C + V, V): its features (C, V), then
its V x V adjacency, A[i, j] the weight of the edge from node i to node j (`graphs` builds them, from dense
adjacencies or from edge lists). An architecture with an `Aggregate` reads its inputs so; the other layers see the
features (C, V) only, the nodes as positions: `Conv1d(1)` is a node-wise Linear, `GlobalSumPool` a sum readout.
The nodes may be the positions of an image or a volume (C, *S), V = prod(S): the example is then (C + V, *S), the
adjacency (V, *S) with the tail flattened first (neural-tangents' pattern (*S, *S) over every spatial axis).
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
        spatial_only(shape, self, where)
        return shape

    def need(self, out_need):
        return "full"

    def apply(self, record: Record, ctx) -> Record:
        ax, ay = ctx.graphs
        if record.nbatch == 2:
            left, right = ax.transpose(1, 2)[:, None], ay[None]
        else:
            left, right = ax.transpose(1, 2), ay
        V = ax.shape[-1]

        def aggregate(t: torch.Tensor) -> torch.Tensor:     # on the positions flattened: (*batch, V, V)
            square = t.reshape(*t.shape[:record.nbatch], V, V)
            return torch.matmul(torch.matmul(left, square), right).reshape(t.shape)
        return record.map(aggregate)

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return AggregateModule()


class AggregateModule(nn.Module):
    """h @ A: h (N, C, *S), A (N, V, V) with V = prod(S), on the positions flattened."""

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return torch.matmul(h.reshape(*h.shape[:2], -1), adjacency).reshape(h.shape)


class GraphSequential(nn.Sequential):
    """The finite network of an architecture with `Aggregate`: x (N, C + V, V) is split into the node features and
    the adjacency, which each `AggregateModule` receives."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, adjacency = split(x)
        for module in self:
            h = module(h, adjacency) if isinstance(module, AggregateModule) else module(h)
        return h


# ------------------------------------------------------------------------------------------ inputs
def graphs(features, adjacency=None, edges=None, to_dense=None):
    """The inputs of a graph architecture: ``(N, C + V, *S)``, the node features ``(N, C, *S)`` then the adjacency
    ``(V, *S)`` per example, V = prod(S) (for graphs, S = (V,): (N, C + V, V)).

    Args:
        features: ``(N, C, *S)`` float, C features of each node; the nodes are the positions S: (V,) for graphs, (H, W)
            for the pixels of images, ... (pad smaller graphs with zero features).
        adjacency: ``(N, *S, *S)``, adjacency[n, i, j] the weight of the edge i -> j of example n (dense; i and j each
            a position, neural-tangents' pattern with implementation="DENSE"), or
        edges: (N, E, 2) integers, the edges (tail, head) of each example as node numbers (the positions in C
            order), or (N, E, K, 2) with the K coordinates of tail and head (repeats add up; rows whose head has a
            negative coordinate are padding), as neural-tangents' implementation="SPARSE".
        to_dense: a function that turns `adjacency` in a format of yours into the dense ``(N, *S, *S)`` one, applied
            once here (neural-tangents' `to_dense`).
    NumPy in gives NumPy out.
    """
    X, numpy_in = as_tensor(features, "features", ndim=(3, 4, 5))
    if X.dtype not in (torch.float32, torch.float64):
        X = X.float()
    N, S = X.shape[0], tuple(X.shape[2:])
    V = int(np.prod(S))
    if (adjacency is None) == (edges is None):
        raise ValueError("give the graphs as adjacency (N, *S, *S) or as edges (N, E, 2), exactly one of them")
    if to_dense is not None:
        if adjacency is None or not callable(to_dense):
            raise ValueError("to_dense must be a function, applied to the adjacency given")
        adjacency = to_dense(adjacency)
    if adjacency is not None:
        A = as_tensor(adjacency, "adjacency", ndim=(3, 5, 7), dtype=X.dtype, device=X.device)[0]
        if A.shape != (N, *S, *S):
            form = "(N, V, V)" if len(S) == 1 else "(N, *S, *S)"
            raise ValueError(f"adjacency must be {form} = {(N, *S, *S)} for features of shape "
                             f"{tuple(X.shape)} (N, C, *S), got {tuple(A.shape)}")
        A = A.reshape(N, V, *S)
    else:
        A = _dense(edges, N, S, X).reshape(N, V, *S)
    out = torch.cat([X, A], dim=1)
    return out.numpy() if numpy_in else out


def _dense(edges, N: int, S: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """The (N, V, V) adjacency of edge lists (N, E, 2) of node numbers or (N, E, K, 2) of coordinates."""
    V = int(np.prod(S))
    E = torch.as_tensor(np.asarray(edges) if not isinstance(edges, torch.Tensor) else edges)
    if E.dtype.is_floating_point or E.dtype == torch.bool or E.ndim not in (3, 4) or E.shape[0] != N \
            or E.shape[-1] != 2 or (E.ndim == 4 and E.shape[2] != len(S)):
        raise ValueError(f"edges must be integers of shape (N, E, 2) = ({N}, E, 2) or (N, E, K, 2) = "
                         f"({N}, E, {len(S)}, 2), got {E.dtype} {tuple(E.shape)}")
    if E.ndim == 4:                      # coordinates: a negative one marks padding; others within the positions
        keep = (E[..., 1] >= 0).all(-1)
        sizes = torch.tensor(S).reshape(1, 1, -1, 1)
        if bool(((E >= sizes) | (E < 0)).any(-1).any(-1)[keep].any()):
            raise ValueError(f"edges name positions outside {S} (the shape of the features' positions)")
        E = torch.where(keep[..., None], _ravel(E, S), torch.full_like(E[:, :, 0], -1))
    keep = E[..., 1] >= 0
    if bool((E[keep] >= V).any()) or bool((E[keep][:, 0] < 0).any()):
        raise ValueError(f"edges name nodes outside 0..{V - 1} (the features have V = {V} nodes)")
    n = torch.arange(N).unsqueeze(1).expand(N, E.shape[1])[keep]
    A = torch.zeros(N, V, V, dtype=like.dtype)
    A.index_put_((n, E[..., 0][keep], E[..., 1][keep]), torch.ones(len(n), dtype=like.dtype), accumulate=True)
    return A.to(like.device)


def _ravel(E: torch.Tensor, S: tuple[int, ...]) -> torch.Tensor:
    """Node numbers (C order) of coordinates (..., K, 2): (..., 2)."""
    number = torch.zeros_like(E[..., 0, :])
    for k, size in enumerate(S):
        number = number * size + E[..., k, :]
    return number


def split(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, C, *S), adjacency (N, V, V)) of inputs (N, C + V, *S), V = prod(S)."""
    V = int(np.prod(X.shape[2:]))
    return X[:, :-V], X[:, -V:].reshape(X.shape[0], V, V)


def reads_graphs(layers: Sequence[Layer]) -> bool:
    """Whether an architecture has an `Aggregate` (at any depth): its inputs are graphs."""
    return any(getattr(layer, "reads_graphs", False) or any(reads_graphs(b) for b in layer.branches or ())
               for layer in layers)


def graph_shape(layers: Sequence[Layer], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-example shape the layers see: (C, V) for graphs (C + V, V), else `shape` (a LayerError naming the
    first Aggregate when the inputs carry no adjacency)."""
    if not reads_graphs(layers):
        return shape
    V = int(np.prod(shape[1:]))
    if len(shape) < 2 or shape[0] <= V:
        where = next((f"layer {i}" for i, layer in enumerate(layers) if getattr(layer, "reads_graphs", False)),
                     "in a branch")
        raise LayerError(f"Aggregate ({where}) needs graphs: per example (C + V, V), the node features (C, V) then "
                         f"the V x V adjacency, or (C + V, *S) for nodes at the positions S, V = prod(S) "
                         f"(nk.layers.graphs(features, adjacency)); got shape {shape}, which has no room for an "
                         f"adjacency of its {V} nodes")
    return (shape[0] - V, *shape[1:])


def check_nodes(steps, shape: tuple[int, ...]) -> None:
    """Refuse an Aggregate whose input has another number of positions than the graphs have nodes (a layer before
    it changed them: a strided or "valid" convolution, pooling)."""
    for step in steps:
        if getattr(step.layer, "reads_graphs", False) and step.in_shape[1:] != shape[1:]:
            nodes = "x".join(map(str, shape[1:]))
            raise LayerError(f"Aggregate ({step.where}): its input has {'x'.join(map(str, step.in_shape[1:]))} "
                             f"positions but the graphs have {nodes} nodes; keep the "
                             f"nodes (convolutions of stride 1 and 'same' padding, no pooling) before it")
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
