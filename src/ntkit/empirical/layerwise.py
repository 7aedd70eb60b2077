"""The structured path for any module: per-layer rules where a layer has one, Jacobians for the rest.

For a batch of samples (see `plan.py`), one forward pass captures the input of every layer with a rule
(`rules.py`, `attention.py`), and reverse passes give, for each output k, the cotangents
g_k = dF_k/dz at those layers' outputs (as derivatives with respect to a zero shift added to each output)
together with the per-sample Jacobian of the parameters no rule covers. Theta is then the sum of the
layers' shares (the rules) and J(x) J(y)^T over the remaining parameters:

    Theta_{k k'}(x, y) = sum_layers Theta^l_{k k'}(x, y) + sum_{p not in a layer} dF_k(x)/dp dF_k'(y)/dp

Before using a rule, the plan checks it on one sample against autograd (the gradient of v . F for a random v):
a layer whose parameters are also used outside it, or that a parent calls in a way the hooks do not see, is
handed to the Jacobian part, so the sum stays exact on any module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import memory
from . import bylayer, factored, rules
from .blocking import fill, samples_per_block
from .common import Problem, contract, working_memory
from .plan import Plan, describe_plan, instrumented, make_plan, passes

__all__ = ["describe_plan", "layerwise_ntk", "make_plan"]

#: The by-layer sum in chunks is taken over the block path when its chunks hold this many times the samples of
#: the block path's blocks (measured on ResNets: blocks 2x smaller than the chunks cost more than the repeated passes).
CHUNK_OVER_BLOCK = 2

#: Per-sample gradient blocks with at least this many numbers per output are contracted on their own.
LARGE_PIECE = 1 << 14


@dataclass
class BlockFeatures:
    jac: list[torch.Tensor]                  # (B, K, P_i): per-sample gradients (small layers, fallback)
    positions: list[rules.PositionFeatures]  # positions-order weights
    large: list[tuple[rules.Site, torch.Tensor, torch.Tensor]]  # (site, input, cotangents): gradients per tile
    factored: list[factored.Factored]        # layers whose cotangents factor over the outputs

    @property
    def nbytes(self) -> int:
        tensors = [*self.jac, *(t for _, a, g in self.large for t in (a, g))]
        return sum(t.numel() * t.element_size() for t in tensors) + sum(p.nbytes for p in (*self.positions,
                                                                                        *self.factored))


def block_features(plan: Plan, problem: Problem, X: torch.Tensor) -> BlockFeatures:
    """The per-sample gradients and positions features of a block of samples X (B, ...), from reverse passes
    over `plan.chunk` samples at a time."""
    if X.shape[0] <= plan.chunk:
        return _chunk_features(plan, problem, X)
    parts = [_chunk_features(plan, problem, X[i:i + plan.chunk]) for i in range(0, X.shape[0], plan.chunk)]
    return BlockFeatures(
        [torch.cat(pieces) for pieces in zip(*(p.jac for p in parts), strict=True)],
        [rules.PositionFeatures(ps[0].site, torch.cat([q.a for q in ps]), torch.cat([q.g for q in ps]))
         for ps in zip(*(p.positions for p in parts), strict=True)],
        [(ls[0][0], torch.cat([q[1] for q in ls]), torch.cat([q[2] for q in ls]))
         for ls in zip(*(p.large for p in parts), strict=True)],
        [factored.concatenate(fs) for fs in zip(*(p.factored for p in parts), strict=True)])


def _chunk_features(plan: Plan, problem: Problem, X: torch.Tensor) -> BlockFeatures:
    with instrumented(plan, problem) as injector:
        inputs, cots, fallback = passes(plan, problem, X, injector)
    pieces, positions, large, factors = [], [], [], []
    for site in plan.sites:
        a, g = inputs[site.key], cots[site.key]
        if site.order == "factored":
            factors.append(factored.features(site, a, g))
            continue
        if _is_large(site, problem.n_outputs):  # gradients formed tile by tile: memory B K P for one layer
            large.append((site, a, g))
            continue
        pieces += rules.per_sample_grads(site, a, g, with_weight=not site.positions)
        if site.positions:
            positions.append(rules.position_features(site, a, g))
    if fallback is not None:
        pieces.append(fallback)
    big = [piece for piece in pieces if piece.shape[2] >= LARGE_PIECE]  # contracted without a copy
    small = [piece for piece in pieces if piece.shape[2] < LARGE_PIECE]
    return BlockFeatures(big + ([torch.cat(small, 2)] if small else []), positions, large, factors)


def _is_large(site: rules.Site, k: int) -> bool:
    """A jacobian-order weight of at least LARGE_PIECE numbers whose per-sample gradients (K G O I numbers) take
    more memory than its input and cotangents (in + K out): those are kept instead, and its gradients formed
    tile by tile. (An early convolution over many positions is the other way round: its gradients are kept.)"""
    if site.order != "jacobian" or site.weight is None or site.kind == "norm":
        return False
    numel = site.shapes.get("G", 1) * site.shapes.get("O", 0) * site.shapes.get("I", 0)
    return numel >= LARGE_PIECE and k * numel > site.shapes.get("in", 0) + k * site.shapes.get("out", 0)


def tile(fx: BlockFeatures, fy: BlockFeatures, mode: str, n_outputs: int) -> torch.Tensor:
    theta = None
    for jx, jy in zip(fx.jac, fy.jac, strict=True):
        part = contract(jx, jy, mode, n_outputs)
        theta = part if theta is None else theta.add_(part)
    for px, py in zip(fx.positions, fy.positions, strict=True):
        part = rules.position_tile(px, py, mode, n_outputs)
        theta = part if theta is None else theta.add_(part)
    for ux, uy in zip(fx.factored, fy.factored, strict=True):
        part = factored.tile(ux, uy if fx is not fy else ux, mode, n_outputs)
        theta = part if theta is None else theta.add_(part)
    for (site, ax, gx), (_, ay, gy) in zip(fx.large, fy.large, strict=True):
        jxs = rules.per_sample_grads(site, ax, gx, with_weight=True)
        jys = jxs if fx is fy else rules.per_sample_grads(site, ay, gy, with_weight=True)
        for jx, jy in zip(jxs, jys, strict=True):  # weight and bias: no concatenation
            part = contract(jx, jy, mode, n_outputs)
            theta = part if theta is None else theta.add_(part)
        del jxs, jys
    return theta


# ------------------------------------------------------------------------------ self-check


def _block_costs(plan: Plan, problem: Problem) -> tuple[float, float, float, float, int]:
    """(bytes of the features kept per sample, bytes per sample of a tile's temporaries (one layer's
    gradients), bytes per pair of a tile, bytes per sample of a reverse pass, the numbers per sample and
    output kept in Jacobian form)."""
    k, itemsize = problem.n_outputs, problem.itemsize
    p_jac = sum(problem.trainable[n].numel() for n in plan.fallback)
    largest = 0  # the largest layer whose per-sample gradients are formed tile by tile
    for site in plan.sites:
        if _is_large(site, k):
            params = [p for p in (site.weight, site.bias) if p is not None]
            largest = max(largest, sum(problem.trainable[n][r if r is not None else slice(None)].numel()
                                       for n, r in params))
            p_jac += site.shapes["in"] / k + site.shapes["out"]  # its input and cotangents are kept
            continue
        if site.order == "factored":  # h (O I' numbers), or where a block does not factor its a and g
            numel = factored.n_params(site, problem.trainable)
            largest = max(largest, numel)
            shapes = site.shapes
            p_jac += max(numel / k, shapes["S"] * (numel / shapes["O"] / k + shapes["O"]))
            continue
        for name, rows in (p for p in (site.weight, site.bias) if p is not None):
            if site.positions and name == site.weight[0]:
                continue
            value = problem.trainable[name]
            p_jac += value[rows].numel() if rows is not None else value.numel()
    positions = sum(s.shapes["S"] * s.shapes["G"] * (s.shapes["I"] + k * s.shapes["O"])  # a and g
                    for s in plan.sites if s.positions)
    kept, formed = (k * p_jac + positions) * itemsize, k * largest * itemsize
    # per sample of a reverse pass: its graph and (K, out) cotangents; kept small (smaller passes run faster)
    fallback = sum(problem.trainable[n].numel() for n in plan.fallback)
    if plan.batched:  # one forward graph, the tapped copy of an output, K cotangents of every site's output
        outs = [site.shapes.get("out", 0) for site in plan.sites] or [0]
        passes = (problem.activations + max(outs) + k * sum(outs) + 3 * k * fallback) * itemsize
    else:  # reverse passes vmapped over the outputs
        passes = 3 * k * (problem.activations + fallback) * itemsize
    kk = k * k if problem.mode == "full" else k
    per_pair = max([3 * kk * itemsize] + [rules.position_pair_bytes(s, k, problem.mode, itemsize)
                                          for s in plan.sites if s.positions])
    return kept, formed, per_pair, passes, int(p_jac)


def plan_block(plan: Plan, problem: Problem, budget: int, block_size: int | None = None) -> tuple[int, int]:
    """(samples per block, bytes left to cache column blocks), with `plan.chunk` (samples per reverse pass)
    set so that a pair of blocks, one tile and one reverse pass take at most half the budget (all of it if
    `block_size` asks for that much); a MemoryError naming the budget when one pair of samples does not fit."""
    kept, formed, per_pair, passes, p_jac = _block_costs(plan, problem)
    per_sample = kept + formed
    if 2 * per_sample + per_pair + passes > budget:
        need = memory.format_bytes(2 * per_sample + per_pair + passes)
        raise MemoryError(f"the structured path needs about {need} for one pair of samples "
                          f"({problem.n_outputs} outputs, {p_jac:,} numbers per output in Jacobian form), more "
                          f"than the working memory of {memory.format_bytes(budget)}: pass memory= of at least "
                          "that")
    # up to a quarter of the budget for the reverse passes (larger passes run faster); the features of every
    # column sample cached where they take at most half of it (else each column block is featurized again for
    # every row block, work ~ n^2 / size); the rest for a pair of blocks and one tile
    n = max(problem.X.shape[0], problem.cols.shape[0])
    chunk = int(min(n, max(1, budget // 4 // max(passes, 1))))
    cache = problem.cols.shape[0] * kept if problem.cols.shape[0] * kept <= budget // 2 else 0
    size = block_size or samples_per_block(2 * per_sample, per_pair, budget - cache - chunk * passes, n)
    if problem.Y is None and not block_size and n * per_sample + n * n * per_pair + chunk * passes <= budget:
        size = n  # one symmetric tile: one block of features, its gradients formed once
    held = (1 if size == n and problem.Y is None else 2) * size * per_sample + size * size * per_pair
    if held + passes > budget:
        fits = samples_per_block(2 * per_sample, per_pair, budget - passes, n)
        raise MemoryError(f"block_size={size} needs about {memory.format_bytes(held + passes)}, more than the "
                          f"working memory of {memory.format_bytes(budget)}: pass block_size={fits} or less, or "
                          "a larger memory=")
    plan.chunk = int(min(size, max(1, (budget - held) // max(passes, 1))))  # what the blocks leave, up to a block
    return size, int(budget - held - plan.chunk * passes)


class FeatureCache:
    """Features of the current row block and of as many column blocks as fit the budget."""

    def __init__(self, plan: Plan, problem: Problem, budget: int):
        self.plan, self.problem, self.budget = plan, problem, budget
        self.store: dict[tuple[str, int, int], BlockFeatures] = {}
        self.used = 0

    def get(self, which: str, rows: slice) -> BlockFeatures:
        key = (which, rows.start, rows.stop)
        if key not in self.store:
            data = self.problem.X if which == "X" else self.problem.cols
            result = block_features(self.plan, self.problem, data[rows])
            if which == "X":
                for old in [k for k in self.store if k[0] == "X"]:
                    self.used -= self.store.pop(old).nbytes
            elif self.used + result.nbytes > self.budget:
                return result
            self.store[key] = result
            self.used += result.nbytes
        return self.store[key]


def layerwise_ntk(problem: Problem, block_size: int | None, show: bool | None, plan: Plan | None = None
                  ) -> torch.Tensor:
    """Theta for the whole problem by the structured rules, block pair by block pair (`plan`: one made
    for the same model, reused)."""
    budget = working_memory(problem.device)
    plan = plan or problem.plan or make_plan(problem)
    if block_size is None and bylayer.fits(plan, problem, budget):
        return bylayer.bylayer_ntk(plan, problem, show, budget)
    chunk = bylayer.chunk_rows(plan, problem, budget) if block_size is None else 0
    try:
        size, left = plan_block(plan, problem, budget, block_size)
    except MemoryError:
        if not chunk:
            raise
        return bylayer.chunked_ntk(plan, problem, show, budget, chunk)
    # where the block path cannot keep the column features and its blocks are small (each pair of tiny blocks
    # forms large layers' gradients again), chunks of the by-layer sum, their passes repeated, cost less
    if chunk >= CHUNK_OVER_BLOCK * size and problem.cols.shape[0] * _block_costs(plan, problem)[0] > left:
        return bylayer.chunked_ntk(plan, problem, show, budget, chunk)
    cache = FeatureCache(plan, problem, max(0, left))
    symmetric = problem.Y is None

    def tile_fn(rows: slice, cols: slice) -> torch.Tensor:
        fx = cache.get("X", rows)
        fy = fx if symmetric and rows == cols else cache.get("Y", cols)
        return tile(fx, fy, problem.mode, problem.n_outputs)

    return fill(tile_fn, problem, size, "empirical NTK (structured)", show)
