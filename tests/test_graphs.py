"""Graph networks: `Aggregate` over the adjacency given with each example (`nk.layers.graphs`), the GNTK of Du et al.
(2019). The kernels equal neural-tangents' (tests/test_branches.py); here: edge lists against dense adjacencies,
padding with isolated nodes, wide finite graph networks converging to the kernel, and bad input."""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from ntkit.layers import Aggregate, GlobalSumPool, LayerError, graphs

f64 = torch.float64


def gntk(b_std: float = 0.0, depth: int = 2) -> nk.Sequential:
    """Aggregate, node-wise Linear (a 1x1 convolution), ReLU, `depth` times; a sum readout; Linear."""
    body = []
    for _ in range(depth):
        body += [Aggregate(), nk.Conv1d(1, b_std=b_std), nk.ReLU()]
    return nk.Sequential(*body, GlobalSumPool(), nk.Linear(b_std=b_std))


def random_graphs(n: int, channels: int, nodes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = (torch.rand(n, nodes, nodes, generator=g) < 0.4).to(f64)
    A = ((A + A.transpose(1, 2)) > 0).to(f64) + torch.eye(nodes, dtype=f64)      # undirected, with self-loops
    return torch.randn(n, channels, nodes, generator=g, dtype=f64), A


def test_edge_lists_give_the_dense_adjacency():
    F = torch.randn(2, 3, 4, dtype=f64)
    edges = torch.tensor([[[0, 1], [1, 2], [1, 2], [3, 3]], [[2, 0], [0, 3], [-1, -1], [1, -1]]])
    A = torch.zeros(2, 4, 4, dtype=f64)
    A[0, 0, 1], A[0, 1, 2], A[0, 3, 3] = 1, 2, 1        # a repeated edge counts twice
    A[1, 2, 0], A[1, 0, 3] = 1, 1                        # rows with a negative head are padding
    assert torch.equal(graphs(F, edges=edges), graphs(F, A))
    assert graphs(F.numpy(), A.numpy()).shape == (2, 7, 4)


def test_padding_with_isolated_nodes_changes_nothing_without_biases():
    """A graph of 5 nodes and the same graph padded to 8 with isolated nodes of zero features (b_std = 0)."""
    F, A = random_graphs(4, 3, 5)
    Fp, Ap = torch.zeros(4, 3, 8, dtype=f64), torch.zeros(4, 8, 8, dtype=f64)
    Fp[:, :, :5], Ap[:, :5, :5] = F, A
    arch = gntk()
    for get in ("nngp", "ntk"):
        torch.testing.assert_close(arch.kernel(graphs(Fp, Ap), get=get), arch.kernel(graphs(F, A), get=get),
                                   rtol=1e-12, atol=0)


def test_aggregate_is_the_adjacency_product():
    """One Aggregate after the input: Sigma' = A_x^T Sigma A_y with Sigma(x_p, y_q) = x_p . y_q / C, by hand."""
    F, A = random_graphs(3, 2, 4)
    arch = nk.Sequential(Aggregate(), GlobalSumPool(), nk.Linear(W_std=1.0, b_std=0.0))
    H = torch.matmul(F, A)                                    # (N, C, V): each node the sum of its predecessors
    expected = torch.einsum("acp,bcq->ab", H, H) / F.shape[1]
    torch.testing.assert_close(arch.kernel(graphs(F, A), get="nngp"), expected, rtol=1e-12, atol=0)


def _monte_carlo(width: int, samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    F, A = random_graphs(3, 2, 5, seed=1)
    X = graphs(F, A)
    arch = gntk(b_std=0.1)
    values = torch.stack([nk.empirical_ntk(arch.network((7, 5), width=width, seed=s, dtype=f64), X, mode="trace",
                                           method="jacobian") for s in range(samples)])
    return arch.kernel(X), values.mean(0), values.std(0) / samples**0.5


@pytest.mark.parametrize("width, samples", [(64, 24), (512, 8)])
def test_wide_graph_networks_converge_to_the_gntk(width, samples):
    """The empirical NTK of finite graph networks averaged over initializations: within 5 standard errors of the
    kernel plus the O(1 / width) finite-width bias (allowed 4 / width of the kernel's scale)."""
    K, mean, stderr = _monte_carlo(width, samples)
    allowed = 5 * stderr + 4.0 / width * float(K.abs().max())
    assert bool(((mean - K).abs() <= allowed).all()), ((mean - K).abs() / allowed).max()


def test_finite_network_aggregates_over_each_examples_graph():
    F, A = random_graphs(2, 3, 4)
    net = nk.Sequential(Aggregate(), GlobalSumPool(), nk.Linear(b_std=0.0)).network((7, 4), seed=0, dtype=f64)
    out = net(graphs(F, A))
    expected = torch.matmul(F, A).sum(2) @ (net[2].weight * net[2].weight_multiplier).T
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_inputs_without_an_adjacency_name_the_layer():
    arch = gntk()
    with pytest.raises(LayerError, match=r"Aggregate \(layer 0\) needs graphs: per example \(C \+ V, V\)"):
        arch.kernel(torch.randn(3, 4, 6))
    with pytest.raises(LayerError, match=r"Aggregate \(layer 0\) needs graphs"):
        arch.kernel(torch.randn(3, 4, 6, 2))
    with pytest.raises(LayerError, match=r"Aggregate \(layer 0\) needs graphs"):
        arch.network((4, 6), width=3)


def test_an_adjacency_that_does_not_match_the_nodes_is_refused():
    F = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"adjacency must be \(N, V, V\) = \(2, 5, 5\)"):
        graphs(F, torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match=r"adjacency must be \(N, V, V\) = \(2, 5, 5\)"):
        graphs(F, torch.ones(3, 5, 5))
    with pytest.raises(ValueError, match=r"edges name nodes outside 0..4"):
        graphs(F, edges=torch.tensor([[[0, 5]], [[1, 2]]]))
    with pytest.raises(ValueError, match="edges must be integers"):
        graphs(F, edges=torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="exactly one"):
        graphs(F)


def test_an_aggregate_after_the_nodes_changed_names_the_layer():
    """A strided convolution before an Aggregate leaves fewer positions than the adjacency has nodes."""
    F, A = random_graphs(2, 3, 6)
    arch = nk.Sequential(nk.Conv1d(1), Aggregate(), nk.Conv1d(3, stride=2), nk.ReLU(), Aggregate(), GlobalSumPool(),
                         nk.Linear())
    with pytest.raises(LayerError, match=r"Aggregate \(layer 4\): its input has 3 positions but the graphs have 6"):
        arch.kernel(graphs(F, A))


def test_images_as_graphs_from_coordinates_and_to_dense():
    """Pixels as nodes (neural-tangents' pattern (H, W, H, W)): edges given by coordinates, a dense adjacency and a
    format of one's own through to_dense give the same inputs; the finite network aggregates over the pixels."""
    F = torch.randn(2, 3, 2, 3, dtype=f64)
    edges = torch.tensor([[[[0, 1], [0, 2]], [[1, 1], [2, 2]], [[1, 1], [2, 2]]],   # (0,0)->(1,2), (1,2)->(1,2) twice
                          [[[0, 0], [1, 0]], [[0, -1], [0, 0]], [[1, 0], [0, 1]]]])        # padding: a negative head
    A = torch.zeros(2, 2, 3, 2, 3, dtype=f64)
    A[0, 0, 0, 1, 2], A[0, 1, 2, 1, 2], A[1, 0, 1, 0, 0], A[1, 1, 0, 0, 1] = 1, 2, 1, 1
    X = graphs(F, A)
    assert X.shape == (2, 3 + 6, 2, 3)
    assert torch.equal(graphs(F, edges=edges), X)
    assert torch.equal(graphs(F, A.to_sparse(), to_dense=lambda a: a.to_dense()), X)
    arch = nk.Sequential(Aggregate(), GlobalSumPool(), nk.Linear(W_std=1.0, b_std=0.0))
    net = arch.network((9, 2, 3), seed=0, dtype=f64)
    H = torch.einsum("ncij,nijkl->nckl", F, A)                   # each pixel the sum of its predecessors
    expected = H.sum((2, 3)) @ net[-1].weight.T / 3**0.5
    torch.testing.assert_close(net(X), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"adjacency must be \(N, \*S, \*S\) = \(2, 2, 3, 2, 3\)"):
        graphs(F, torch.ones(2, 6, 6))
    with pytest.raises(ValueError, match=r"edges name positions outside \(2, 3\)"):
        graphs(F, edges=torch.tensor([[[[0, 2], [0, 0]]], [[[0, 0], [0, 3]]]]))
