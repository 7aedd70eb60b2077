"""The generic paths for any module, through torch.func (functional_call, vmap, jacrev, jvp).

Both compute Theta_{k k'}(x, y) = sum_p dF_k(x)/dtheta_p dF_k'(y)/dtheta_p (the paper's
Section 4) with the model evaluated one sample at a time (`vmap`), so buffers such as
BatchNorm statistics (eval mode) are used as they are and samples never mix.

- "jacobian" (Jacobian contraction): per-sample Jacobians J(x) (B, K, P) by `jacrev`, one
  group of parameter tensors at a time so that a block of Jacobians stays within the working
  memory, contracted as J(x) J(y)^T and summed over the groups.
- "ntk_vp" (NTK-vector products): for each sample x and output k, the vector J(x)^T e_k (a vjp,
  `jacrev`), pushed through the model on a block of Y by a jvp: J(y) J(x)^T e_k = Theta(y, x) e_k.
  It never contracts over the parameters, so it wins where a forward pass costs less than the
  number of parameters times K (convolutions, with their shared weights, the other way round).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jacrev, jvp, vmap

from .. import memory
from ..progress import progress
from .common import (
    Problem,
    block_pairs,
    call,
    contract,
    fill,
    mirror,
    output_shape,
    reduce_full,
    samples_per_block,
    working_memory,
)


def sample_fn(problem: Problem, fixed: dict[str, torch.Tensor]) -> Callable:
    """F(theta_chunk, x) -> (K,): the model on one sample x, the parameters outside the chunk fixed."""
    model, frozen = problem.model, problem.frozen

    def f(chunk: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return call(model, ({**fixed, **chunk}, frozen), (x.unsqueeze(0),)).reshape(-1)

    return f


def jacobian(problem: Problem, names: list[str], X: torch.Tensor) -> torch.Tensor:
    """dF_k(x)/dtheta_p for the samples of X and the parameters `names`: (B, K, P_names)."""
    chunk = {n: problem.trainable[n] for n in names}
    fixed = {n: v for n, v in problem.trainable.items() if n not in chunk}
    jac = vmap(jacrev(sample_fn(problem, fixed)), in_dims=(None, 0))(chunk, X)
    parts = [jac[n].reshape(X.shape[0], problem.n_outputs, -1) for n in names]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


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


def jacobian_plan(problem: Problem, block_size: int | None) -> tuple[int, list[list[str]]]:
    """(samples per block, parameter groups) such that two Jacobian blocks fit the working memory."""
    budget, k, itemsize = working_memory(problem.device), problem.n_outputs, problem.itemsize
    n = max(problem.X.shape[0], problem.cols.shape[0])
    per_pair = 3 * (k * k if problem.mode == "full" else k) * itemsize
    largest = max(v.numel() for v in problem.trainable.values())
    # per sample: two Jacobian blocks and a concatenation (3 K P), and jacrev's K backward passes
    whole = k * (3 * problem.n_params + 2 * problem.activations) * itemsize
    size = block_size or samples_per_block(whole, per_pair, budget, n)
    if block_size is None and size < min(n, 64):  # the whole Jacobian of a block is too big: split theta too
        size = samples_per_block(k * (3 * largest + 2 * problem.activations) * itemsize, per_pair, budget,
                                 min(n, 256))
    one = k * (3 * largest + 2 * problem.activations) * itemsize + per_pair
    if one > budget:
        raise MemoryError(f"the Jacobian of one sample for the largest parameter tensor ({largest:,} numbers, {k} "
                          f"outputs) needs about {memory.format_bytes(one)}, more than the working memory of "
                          f"{memory.format_bytes(budget)}: pass memory= of at least that, or use method='ntk_vp' "
                          "or method='structured' (no parameter-sized intermediates for layers with a rule)")
    left = budget - 2 * size * k * problem.activations * itemsize  # what jacrev's backward passes leave
    max_elements = max(1, left // (3 * size * k * itemsize))
    return size, parameter_groups(problem, max_elements)


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
            row_key, jac_x = (id(group), i), jacobian(problem, group, problem.X[rows])
        jac_y = jac_x if symmetric and i == j else jacobian(problem, group, problem.cols[cols])
        out[rows, cols] += contract(jac_x, jac_y, problem.mode, problem.n_outputs)
    if symmetric:
        mirror(out, size, problem.mode)
    return out


def ntk_vp_ntk(problem: Problem, block_size: int | None, show: bool | None) -> torch.Tensor:
    """Theta by NTK-vector products: a vjp per (sample, output) of a row block, then jvps on a column block."""
    budget, k, itemsize = working_memory(problem.device), problem.n_outputs, problem.itemsize
    n = max(problem.X.shape[0], problem.cols.shape[0])
    # rows: K vjps of P numbers per sample (and jacrev's backward); columns: jvps of B2 samples each
    per_sample = k * (2 * problem.n_params + 2 * problem.activations) * itemsize
    size = block_size or samples_per_block(2 * per_sample, 3 * k * k * itemsize, budget, n)
    model, frozen, trainable = problem.model, problem.frozen, problem.trainable
    f_x = sample_fn(problem, {})
    cached: dict[int, dict[str, torch.Tensor]] = {}

    def tangents(rows: slice) -> dict[str, torch.Tensor]:
        """J(x)^T e_k for every sample x of the row block and output k, as (B1 K, *shape) tensors."""
        if rows.start not in cached:
            cached.clear()
            jac = vmap(jacrev(f_x), in_dims=(None, 0))(trainable, problem.X[rows])
            cached[rows.start] = {name: value.reshape(-1, *trainable[name].shape) for name, value in jac.items()}
        return cached[rows.start]

    def tile_fn(rows: slice, cols: slice) -> torch.Tensor:
        Yb = problem.cols[cols]
        b1, b2 = rows.stop - rows.start, Yb.shape[0]

        def f_y(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            return call(model, (theta, frozen), (Yb,)).reshape(b2, k)

        def push(tangent: dict[str, torch.Tensor]) -> torch.Tensor:  # J(Y) t: (B2, K)
            return jvp(f_y, (trainable,), (tangent,))[1]

        chunk = int(max(1, budget // (3 * b2 * problem.activations * itemsize + 1)))
        products = vmap(push, chunk_size=min(chunk, b1 * k))(tangents(rows))  # (B1 K, B2, K)
        full = products.reshape(b1, k, b2, k).permute(0, 2, 1, 3)  # Theta_{k k'}(x, y)
        return reduce_full(full, problem.mode)

    return fill(tile_fn, problem, size, "empirical NTK (ntk_vp)", show)
