"""The loop over pairs of row and column blocks of samples that bounds an empirical-NTK method's working memory,
and the block size that fits a budget."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..progress import progress
from .common import Problem, output_shape, transpose_tile


def blocks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def block_pairs(n: int, m: int, size: int, symmetric: bool) -> list[tuple[int, slice, int, slice]]:
    """(i, rows, j, cols) for every pair of blocks; upper triangle only when symmetric."""
    rows, cols = blocks(n, size), blocks(m, size)
    return [(i, r, j, c) for i, r in enumerate(rows) for j, c in enumerate(cols) if not symmetric or j >= i]


def mirror(out: torch.Tensor, size: int, mode: str) -> None:
    """Fill the lower block triangle of a symmetric Gram from the upper one, and make the diagonal
    blocks exactly symmetric (a matrix product X X^T need not be, to the last bit)."""
    for i, rows, j, cols in block_pairs(out.shape[0], out.shape[1], size, True):
        if j > i:
            out[cols, rows] = transpose_tile(out[rows, cols], mode)
        else:
            block = out[rows, rows]
            out[rows, rows] = (block + transpose_tile(block, mode)) / 2


def fill(tile_fn: Callable[[slice, slice], torch.Tensor], problem: Problem, size: int, desc: str,
         show: bool | None) -> torch.Tensor:
    """Theta over all pairs of blocks of `size` samples: each pair once, mirrored when Y is None.

    The same idea as `ntkit.gram.fill`, for the 2-, 3- and 4-dimensional tiles of the modes.
    """
    n, m = problem.X.shape[0], problem.cols.shape[0]
    symmetric = problem.Y is None
    out = torch.empty(output_shape(n, m, problem.n_outputs, problem.mode), dtype=problem.dtype,
                      device=problem.device)
    pairs = block_pairs(n, m, size, symmetric)
    for _, rows, _, cols in progress(pairs, total=len(pairs), desc=desc, enabled=show):
        out[rows, cols] = tile_fn(rows, cols)
    if symmetric:
        mirror(out, size, problem.mode)
    return out


def samples_per_block(bytes_per_sample: float, bytes_per_pair: float, budget: float, n: int) -> int:
    """The largest block s (1 <= s <= n) whose memory s * bytes_per_sample + s^2 * bytes_per_pair fits in
    `budget` (1 when even one sample does not: the caller checks that case)."""
    a, b, c = max(bytes_per_sample, 0.0), max(bytes_per_pair, 1e-30), float(budget)
    if c <= 0:
        return 1
    s = (math.sqrt(a * a + 4.0 * b * c) - a) / (2.0 * b)  # the root of b s^2 + a s = c
    return int(max(1, min(n, math.floor(s))))
