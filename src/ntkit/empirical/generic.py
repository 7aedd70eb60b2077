"""The generic paths for any module, through torch.func (functional_call, vmap, jacrev, jvp).

Both compute Theta_{k k'}(x, y) = sum_p dF_k(x)/dtheta_p dF_k'(y)/dtheta_p (the paper's
Section 4) with the model evaluated one sample at a time, so buffers such as BatchNorm
statistics (eval mode) are used as they are and samples never mix. Per-sample Jacobians come
from `jacobians.py`: vmapped over the samples where torch.func can batch the model, else one
sample at a time.

- "jacobian" (Jacobian contraction): per-sample Jacobians J(x) (B, K, P), one group of
  parameter tensors at a time so that a block of Jacobians stays within the working memory,
  contracted as J(x) J(y)^T and summed over the groups.
- "ntk_vp" (NTK-vector products): for each sample x and output k, the vector J(x)^T e_k (a vjp),
  pushed through the model on a block of Y by a jvp: J(y) J(x)^T e_k = Theta(y, x) e_k.
  It never contracts over the parameters, so it wins where a forward pass costs less than the
  number of parameters times K (convolutions, with their shared weights, the other way round);
  it keeps the K parameter-sized vectors of each sample of a row block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jvp, vmap

from .. import memory
from ..progress import progress
from .blocking import block_pairs, fill, mirror, samples_per_block
from .common import Problem, call, contract, output_shape, reduce_full, working_memory
from .jacobians import jacobian, jacobian_way, jacobians, sample_fn

__all__ = ["jacobian", "jacobian_ntk", "jacobians", "ntk_vp_ntk", "sample_fn"]


def largest_fitting(need: Callable[[int], float], budget: int, n: int) -> int:
    """The largest block size b in [1, n] with need(b) <= budget, for a need c + a b + q b^2 in bytes (every
    method's is quadratic in b); 0 when not even one sample fits."""
    if need(1) > budget:
        return 0
    c = need(0)
    q = (need(2) - 2 * need(1) + c) / 2
    size = samples_per_block(need(1) - c - q, q, budget - c, n)
    return size if need(size) <= budget else max(1, size - 1)  # a root rounded up


def parameter_groups(problem: Problem, max_elements: int) -> list[list[str]]:
    """Consecutive parameter tensors grouped so that each group holds at most `max_elements` numbers
    (a tensor larger than that is a group of its own)."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, value in problem.trainable.items():
        if groups[-1] and size + value.numel() > max_elements:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += value.numel()
    return groups


def jacobian_need(problem: Problem, size: int, numbers: int) -> float:
    """Bytes the jacobian method holds for blocks of `size` samples and a parameter group of `numbers`:
    two Jacobian blocks and their concatenation (3 B K P), jacrev's K backward passes (2 B K activations)
    and the tile (3 B^2 K^2 in full mode, 3 B^2 K otherwise)."""
    k, itemsize = problem.n_outputs, problem.itemsize
    per_pair = 3 * (k * k if problem.mode == "full" else k) * itemsize
    return size * k * (3 * numbers + 2 * problem.activations) * itemsize + size * size * per_pair


def jacobian_plan(problem: Problem, block_size: int | None) -> tuple[int, list[list[str]]]:
    """(samples per block, parameter groups) such that the Jacobian blocks of every group fit the working
    memory; a MemoryError before any allocation, naming the budget and what fits, when they cannot."""
    budget = working_memory(problem.device)
    n = max(problem.X.shape[0], problem.cols.shape[0])
    largest = max(v.numel() for v in problem.trainable.values())  # a parameter tensor is never split
    size = block_size or largest_fitting(lambda b: jacobian_need(problem, b, problem.n_params), budget, n)
    if block_size is None and size < min(n, 64):  # the whole Jacobian of a block is too big: split theta too
        size = largest_fitting(lambda b: jacobian_need(problem, b, largest), budget, min(n, 256))
    if size == 0 or jacobian_need(problem, size, largest) > budget:
        fits = largest_fitting(lambda b: jacobian_need(problem, b, largest), budget, n)
        if block_size is not None and fits:
            raise MemoryError(f"method='jacobian' with block_size={block_size} needs about "
                              f"{memory.format_bytes(jacobian_need(problem, size, largest))} for the Jacobians of "
                              f"the largest parameter tensor ({largest:,} numbers, {problem.n_outputs} outputs), "
                              f"more than memory={budget:,} bytes ({memory.format_bytes(budget)}): pass "
                              f"block_size={fits} or less, or a larger memory=")
        raise MemoryError(f"method='jacobian' needs about {memory.format_bytes(jacobian_need(problem, 1, largest))}"
                          f" for the Jacobian of one sample for the largest parameter tensor ({largest:,} numbers, "
                          f"{problem.n_outputs} outputs), more than memory={budget:,} bytes "
                          f"({memory.format_bytes(budget)}): {alternatives(problem, 'jacobian')}")
    k, itemsize = problem.n_outputs, problem.itemsize
    left = budget - jacobian_need(problem, size, 0)
    return size, parameter_groups(problem, max(largest, int(left // (3 * size * k * itemsize))))


def ntk_vp_need(problem: Problem, size: int) -> float:
    """Bytes the ntk_vp method holds for blocks of `size` samples: the K parameter-sized vectors J(x)^T e_k of
    a row block and jacrev's backward passes (B K (P + 2 activations)), one jvp over a column block (3 B
    activations, and 2 P for copies of its tangent) and the tile (3 B^2 K^2)."""
    k, itemsize, a, p = problem.n_outputs, problem.itemsize, problem.activations, problem.n_params
    return (size * k * (p + 2 * a) + push_need(problem, size) + 3 * size * size * k * k) * itemsize


def push_need(problem: Problem, size: int) -> int:
    """Numbers one jvp of ntk_vp holds: its forward pass over a column block of `size` samples (3 B activations)
    and copies of its parameter-sized tangent (2 P)."""
    return 3 * size * problem.activations + 2 * problem.n_params


def alternatives(problem: Problem, method: str) -> str:
    """What fits when one sample of `method` does not fit the working memory: the memory it needs, and the
    other generic method where one sample of it fits."""
    budget = working_memory(problem.device)
    need = {"jacobian": jacobian_need(problem, 1, max(v.numel() for v in problem.trainable.values())),
            "ntk_vp": ntk_vp_need(problem, 1)}
    other = "ntk_vp" if method == "jacobian" else "jacobian"
    text = f"pass memory={int(need[method]) + 1} or more"
    if need[other] <= budget:
        text += f", or method={other!r} (about {memory.format_bytes(need[other])} for one sample)"
    return text


def jacobian_ntk(problem: Problem, block_size: int | None, show: bool | None) -> torch.Tensor:
    """Theta by Jacobian contraction, summed over parameter groups, block pair by block pair."""
    size, groups = jacobian_plan(problem, block_size)
    n, m = problem.X.shape[0], problem.cols.shape[0]
    symmetric = problem.Y is None
    out = torch.zeros(output_shape(n, m, problem.n_outputs, problem.mode), dtype=problem.dtype,
                      device=problem.device)
    pairs = block_pairs(n, m, size, symmetric)
    steps = [(group, pair) for group in groups for pair in pairs]
    row_key, jac_x = None, None
    for group, (i, rows, j, cols) in progress(steps, total=len(steps), desc="empirical NTK (jacobian)",
                                              enabled=show):
        if row_key != (id(group), i):
            jac_x = None  # freed before the next row block is formed: the budget holds one of each
            row_key, jac_x = (id(group), i), jacobian(problem, group, problem.X[rows])
        jac_y = jac_x if symmetric and i == j else jacobian(problem, group, problem.cols[cols])
        out[rows, cols] += contract(jac_x, jac_y, problem.mode, problem.n_outputs)
        del jac_y
    if symmetric:
        mirror(out, size, problem.mode)
    return out


def ntk_vp_ntk(problem: Problem, block_size: int | None, show: bool | None) -> torch.Tensor:
    """Theta by NTK-vector products: a vjp per (sample, output) of a row block, then jvps on a column block."""
    budget, k, itemsize = working_memory(problem.device), problem.n_outputs, problem.itemsize
    n = max(problem.X.shape[0], problem.cols.shape[0])
    size = block_size or largest_fitting(lambda b: ntk_vp_need(problem, b), budget, n)
    if size == 0 or ntk_vp_need(problem, size) > budget:
        fits = largest_fitting(lambda b: ntk_vp_need(problem, b), budget, n)
        hint = (f"pass block_size={fits} or less, or a larger memory=" if block_size is not None and fits
                else alternatives(problem, "ntk_vp"))
        raise MemoryError(f"method='ntk_vp' needs about {memory.format_bytes(ntk_vp_need(problem, max(size, 1)))} "
                          f"for blocks of {max(size, 1)} samples ({problem.n_params:,} parameters times {k} outputs "
                          f"per sample of a row block), more than memory={budget:,} bytes "
                          f"({memory.format_bytes(budget)}): {hint}")
    model, frozen, trainable = problem.model, problem.frozen, problem.trainable
    names = list(trainable)
    batched = jacobian_way(problem, names) == "vmap"
    cached: dict[int, dict[str, torch.Tensor]] = {}

    def tangents(rows: slice) -> dict[str, torch.Tensor]:
        """J(x)^T e_k for every sample x of the row block and output k, as (B1 K, *shape) tensors."""
        if rows.start not in cached:
            cached.clear()
            jac = jacobians(problem, names, problem.X[rows])
            cached[rows.start] = {name: value.reshape(-1, *trainable[name].shape) for name, value in jac.items()}
        return cached[rows.start]

    def tile_fn(rows: slice, cols: slice) -> torch.Tensor:
        Yb = problem.cols[cols]
        b1, b2 = rows.stop - rows.start, Yb.shape[0]

        def f_y(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            return call(model, (theta, frozen), (Yb,)).reshape(b2, k)

        def push(tangent: dict[str, torch.Tensor]) -> torch.Tensor:  # J(Y) t: (B2, K)
            return jvp(f_y, (trainable,), (tangent,))[1]

        t = tangents(rows)
        if batched:
            left = budget - ntk_vp_need(problem, size) + push_need(problem, size) * itemsize
            chunk = int(max(1, left // (push_need(problem, b2) * itemsize)))
            products = vmap(push, chunk_size=min(chunk, b1 * k))(t)  # (B1 K, B2, K)
        else:  # torch.func cannot batch this model: one jvp per tangent
            products = torch.stack([push({name: v[i] for name, v in t.items()}) for i in range(b1 * k)])
        full = products.reshape(b1, k, b2, k).permute(0, 2, 1, 3)  # Theta_{k k'}(x, y)
        return reduce_full(full, problem.mode)

    return fill(tile_fn, problem, size, "empirical NTK (ntk_vp)", show)
