"""Theta in trace or diagonal mode, layer by layer and output by output over all samples at once.

For samples that do not interact (the plan's `batched`), with Z the samples of X and Y together,

    Theta_{k k}(x, y) = sum_l J_lk(x) . J_lk(y),    J_lk(z) = dF_k(z)/dtheta_l  (the paper's Theta, k = k'),

so one forward pass of Z and then, for each output k, one backward pass give every layer's cotangents for all
samples; each layer's per-sample gradients J_lk (|Z|, P_l) are formed once, contracted at once (a Gram of
|Z| rows) and dropped. The block path (layerwise.py) instead keeps the per-sample gradients of all layers and
all outputs of a block (K P numbers per sample), and featurizes a column block again for every row block when
they do not fit the working memory. This path is taken when the forward graph of Z, one output's cotangents
and one layer's gradients fit it (`fits`). Layers whose cotangents factor over the outputs (factored.py) collect
their K cotangents and take the factored rule; parameters without a rule take their Jacobian; a weight shared
over few positions takes the positions order where that is cheaper here (`_by_positions`: its input Gram is
computed once for all outputs), every other weight the jacobian order.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..progress import progress
from . import factored, rules
from .blocking import fill
from .common import Problem, contract, self_gram
from .plan import Plan, instrumented, output_cotangents, shifted_forward

#: The share of the working memory for an input prepared again for each output (rows by rows).
PREPARED_SHARE = 16


def _rows(problem: Problem) -> int:
    return problem.X.shape[0] + (0 if problem.Y is None else problem.Y.shape[0])


def fits(plan: Plan, problem: Problem, budget: int) -> bool:
    """Whether the mode suits this path and its memory fits `budget` bytes."""
    return kept(plan, problem, budget) is not None


def kept(plan: Plan, problem: Problem, budget: int) -> tuple[set[str], set[str]] | None:
    """(the sites whose `rules.prepare` is computed once and kept for all outputs, the sites whose weight
    takes the positions order here), as many as fit `budget` bytes: positions first where cheaper, then
    prepared inputs, the narrowest layers first (a narrow convolution's im2col costs as much as forming its
    gradients); the others prepare their input again for each output. None when the mode does not suit this
    path or even without them it does not fit."""
    if problem.mode == "full" or not plan.batched or not plan.sites:
        return None
    k, rows = problem.n_outputs, _rows(problem)
    outs = sum(site.shapes.get("out", 0) for site in plan.sites)
    first = max(site.shapes.get("out", 0) for site in plan.sites)  # an output tapped by a copy
    held = sum(k * site.shapes.get("out", 0) for site in plan.sites if site.order == "factored")
    # one layer's gradients at a time: the weights formed in this path (not factored, nor taking the positions
    # order, unless that order does not fit below)
    formed = [site for site in plan.sites if site.order != "factored"]
    prefers = {site.key for site in formed if _by_positions(site, rows, k)}
    largest = max([factored.n_params(site, problem.trainable) for site in formed if site.key not in prefers] + [0])
    fallback = k * sum(problem.trainable[n].numel() for n in plan.fallback)
    # the forward graph, the copy of the first sites' outputs and one output's cotangents (outs)
    per_row = problem.activations + outs + first + held + largest + fallback + 2 * problem.X[0].numel()
    theta = problem.X.shape[0] * problem.cols.shape[0] * (k if problem.mode == "diagonal" else 1)
    left = budget // problem.itemsize - rows * per_row - 2 * theta
    if left < 0:
        return None
    n, m, chosen, by_positions = problem.X.shape[0], problem.cols.shape[0], set(), set()
    for site in plan.sites:
        grams = 2 * n * m * site.shapes.get("S", 0) ** 2  # the input Gram and one cotangent Gram
        if site.key in prefers and grams <= left:
            by_positions.add(site.key)
            left -= grams
    missed = [factored.n_params(site, problem.trainable) for site in formed
              if site.key in prefers - by_positions]
    left -= rows * max(0, max(missed + [0]) - largest)  # such a weight's gradients are formed after all
    if left < 0:
        return None
    candidates = [site for site in plan.sites if site.order != "factored" and site.weight is not None
                  and site.kind in ("conv", "norm")]  # (a linear layer's input is used as it is)
    share = _prepared_share(problem, budget)  # one input prepared again for an output, a few rows at a time
    left -= max([min(rows, _patch_rows(site, share)) * _prepared_per_row(site) for site in candidates] + [0])
    if left < 0:
        return None
    for site in sorted(candidates, key=lambda site: site.shapes.get("O", 0) * site.shapes.get("G", 1)):
        if rows * _prepared_per_row(site) <= left:
            chosen.add(site.key)
            left -= rows * _prepared_per_row(site)
    return chosen, by_positions


def _prepared_per_row(site: rules.Site) -> int:
    """Numbers per sample of `rules.prepare` for a convolution (its patches) or a norm (its normalized input)."""
    shapes = site.shapes
    return shapes["S"] * shapes["G"] * shapes["I"] if site.kind == "conv" else shapes.get("in", 1)


def _prepared_share(problem: Problem, budget: int) -> int:
    """Numbers of the working memory for an input prepared again for each output."""
    return budget // problem.itemsize // PREPARED_SHARE


def _patch_rows(site: rules.Site, numbers: int) -> int:
    """Rows whose prepared input takes at most `numbers` numbers (at least one)."""
    return max(1, numbers // max(_prepared_per_row(site), 1))


def _site_grads(site: rules.Site, a: torch.Tensor, g: torch.Tensor, with_weight: bool,
                prepared: torch.Tensor | None, numbers: int) -> list[torch.Tensor]:
    """`rules.per_sample_grads` for one output's cotangents g (rows, *out): each (rows, 1, P). An input not
    prepared beforehand is prepared rows by rows, at most `numbers` numbers at a time."""
    if prepared is not None or not with_weight or site.weight is None or site.kind not in ("conv", "norm"):
        return rules.per_sample_grads(site, a, g[:, None], with_weight, prepared)
    step = _patch_rows(site, numbers)
    parts = [rules.per_sample_grads(site, a[i:i + step], g[i:i + step, None], True)
             for i in range(0, a.shape[0], step)]
    return [torch.cat(pieces) for pieces in zip(*parts, strict=True)]


def chunk_rows(plan: Plan, problem: Problem, budget: int) -> int:
    """The most samples s such that the by-layer sum between two chunks of s samples (2 s rows) fits `budget`;
    0 when the mode does not suit this path or not even two samples fit."""
    def pair_fits(s: int) -> bool:
        X = problem.X[:s]
        return fits(plan, replace(problem, X=X, Y=problem.cols[:s]), budget)

    if not pair_fits(1):
        return 0
    low, high = 1, max(problem.X.shape[0], problem.cols.shape[0])
    while low < high:  # the largest s that fits, by bisection
        middle = (low + high + 1) // 2
        low, high = (middle, high) if pair_fits(middle) else (low, middle - 1)
    return low


def chunked_ntk(plan: Plan, problem: Problem, show: bool | None, budget: int, size: int) -> torch.Tensor:
    """Theta as `bylayer_ntk` computes it, for chunks of `size` samples at a time: each pair of chunks (once,
    mirrored, when Y is None) runs the by-layer sum between its two chunks, its passes computed again for every
    pair. For a model whose forward graph over all samples does not fit the working memory but whose
    per-sample features are too large for the block path to keep."""
    symmetric = problem.Y is None

    def tile_fn(rows: slice, cols: slice) -> torch.Tensor:
        Y = None if symmetric and rows == cols else problem.cols[cols]
        return bylayer_ntk(plan, replace(problem, X=problem.X[rows], Y=Y), False, budget)

    return fill(tile_fn, problem, size, "empirical NTK (structured, by layer, in chunks)", show)


def _gram(J: torch.Tensor, n: int, symmetric: bool) -> torch.Tensor:
    """J[:n] J[n:]^T, or J J^T when the rows of X are also the columns: (n, m)."""
    return self_gram(J) if symmetric else J[:n] @ J[n:].T


def bylayer_ntk(plan: Plan, problem: Problem, show: bool | None, budget: int) -> torch.Tensor:
    """Theta (N, M) for mode "trace", (N, M, K) for "diagonal", by the sum in the module docstring, within
    `budget` bytes (`fits` must hold)."""
    keep, by_positions = kept(plan, problem, budget) or (set(), set())
    n, k, symmetric = problem.X.shape[0], problem.n_outputs, problem.Y is None
    Z = problem.X if symmetric else torch.cat([problem.X, problem.Y])
    shape = (n, problem.cols.shape[0])
    theta = torch.zeros((*shape, k), dtype=problem.dtype, device=problem.device)
    held: dict[str, torch.Tensor] = {}
    with instrumented(plan, problem) as injector:
        inputs, out = shifted_forward(plan, problem, Z, injector)
        prepared = {site.key: rules.prepare(site, inputs[site.key]) for site in plan.sites if site.key in keep}
        share = _prepared_share(problem, budget)
        positions = {site.key: _input_gram(site, inputs[site.key], n, symmetric) for site in plan.sites
                     if site.key in by_positions}
        for index in progress(range(k), total=k, desc="empirical NTK (structured, by layer)", enabled=show):
            cots = output_cotangents(plan, out, injector, index)
            for site in plan.sites:
                g = cots.pop(site.key)
                if site.order == "factored":
                    held.setdefault(site.key, g.new_empty((g.shape[0], k, *g.shape[1:])))[:, index] = g
                    continue
                if site.key in positions:  # the weight by positions, with the input Gram of all outputs
                    theta[:, :, index] += _positions(site, positions[site.key], g, n, symmetric)
                for J in _site_grads(site, inputs[site.key], g, site.key not in positions, prepared.get(site.key),
                                     share):
                    theta[:, :, index] += _gram(J[:, 0], n, symmetric)
    for site in plan.sites:
        if site.order == "factored":
            f = factored.features(site, inputs[site.key], held.pop(site.key))
            theta += factored.tile(f, f, "diagonal", k) if symmetric else \
                factored.tile(_split(f, n, True), _split(f, n, False), "diagonal", k)
    if plan.fallback:
        from .generic import jacobian

        J = jacobian(problem, plan.fallback, Z)
        theta += contract(J, J, "diagonal", k) if symmetric else contract(J[:n], J[n:], "diagonal", k)
    if symmetric:  # exactly symmetric, as the block path's mirrored Gram
        theta = (theta + theta.transpose(0, 1)) / 2
    return theta.mean(-1) if problem.mode == "trace" else theta


def _by_positions(site: rules.Site, rows: int, k: int) -> bool:
    """Whether a weight shared over few positions is cheaper by positions here: the input Gram
    sum_i a_x[s, i] a_y[t, i] once (rows^2 S^2 I) and per output the cotangent Gram (rows^2 S^2 O), against
    per output forming (rows S O I) and contracting (3/4 rows^2 O I) its gradients."""
    if site.kind not in ("linear", "conv") or site.order == "factored" or site.weight is None \
            or site.shapes["G"] != 1:
        return False
    s, o, i = site.shapes["S"], site.shapes["O"], site.shapes["I"]
    jacobian = k * (rows * s * o * i + 0.75 * rows * rows * o * i)
    positions = rows * rows * s * s * (i + k * o)
    return positions < jacobian


def _input_gram(site: rules.Site, a: torch.Tensor, n: int, symmetric: bool) -> torch.Tensor:
    """(n S, m S): a_x[s] . a_y[t] over the weight's inputs (G = 1)."""
    A = rules.weight_input(site, a)
    split = n * A.shape[1]
    A = A.reshape(A.shape[0] * A.shape[1], -1)
    return self_gram(A) if symmetric else A[:split] @ A[split:].T


def _positions(site: rules.Site, aa: torch.Tensor, g: torch.Tensor, n: int, symmetric: bool) -> torch.Tensor:
    """sum_{s, t} (a_x[s] . a_y[t]) (g(x)[s] . g(y)[t]) for one output's cotangents g (rows, *out): (n, m)."""
    gc = rules.cotangent(site, g[:, None])  # (rows, 1, S, 1, O)
    rows, s = gc.shape[0], gc.shape[2]
    G = gc.reshape(rows * s, -1)
    gg = self_gram(G) if symmetric else G[:n * s] @ G[n * s:].T
    return (gg.mul_(aa)).reshape(n, s, -1, s).sum((1, 3))


def _split(f: factored.Factored, n: int, first: bool) -> factored.Factored:
    part = slice(None, n) if first else slice(n, None)
    if f.w is None:
        return factored.Factored(None, None, f.dense[part])
    return factored.Factored(f.w, f.h[part])
