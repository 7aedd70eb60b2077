"""Theta in trace or diagonal mode, layer by layer and output by output over all samples at once.

For samples that do not interact (the plan's `batched`), with Z the samples of X and Y together,

    Theta_{k k}(x, y) = sum_l J_lk(x) . J_lk(y),    J_lk(z) = dF_k(z)/dtheta_l  (the paper's Theta, k = k'),

so one forward pass of Z and then, for each output k, one backward pass give every layer's cotangents for all
samples; each layer's per-sample gradients J_lk (|Z|, P_l) are formed once, contracted at once (a Gram of
|Z| rows) and dropped. The block path (layerwise.py) instead keeps the per-sample gradients of all layers and
all outputs of a block (K P numbers per sample), and featurizes a column block again for every row block when
they do not fit the working memory. This path is taken when the forward graph of Z, one output's cotangents
and one layer's gradients fit it (`fits`). Layers whose cotangents factor over the outputs (factored.py) collect
their K cotangents and take the factored rule; parameters without a rule take their Jacobian; every other weight
takes the jacobian order here (the positions order pays off only against the block path's K-fold contraction).
"""

from __future__ import annotations

import torch

from ..progress import progress
from . import factored, rules
from .common import Problem, contract, self_gram
from .plan import Plan, instrumented, output_cotangents, shifted_forward


def _rows(problem: Problem) -> int:
    return problem.X.shape[0] + (0 if problem.Y is None else problem.Y.shape[0])


def fits(plan: Plan, problem: Problem, budget: int) -> bool:
    """Whether the mode suits this path and its memory fits `budget` bytes."""
    if problem.mode == "full" or not plan.batched or not plan.sites:
        return False
    k, rows = problem.n_outputs, _rows(problem)
    outs = sum(site.shapes.get("out", 0) for site in plan.sites)
    held = sum(k * site.shapes.get("out", 0) for site in plan.sites if site.order == "factored")
    largest = max([factored.n_params(site, problem.trainable) for site in plan.sites] + [0])
    fallback = k * sum(problem.trainable[n].numel() for n in plan.fallback)
    prepared = sum(_prepared_numel(site) for site in plan.sites)
    per_row = problem.activations + outs + held + prepared + largest + fallback + 2 * problem.X[0].numel()
    theta = problem.X.shape[0] * problem.cols.shape[0] * (k if problem.mode == "diagonal" else 1)
    return (rows * per_row + 2 * theta) * problem.itemsize <= budget


#: Convolutions with fewer output channels than this keep their patches for all outputs: their im2col costs as
#: much as forming their gradients. Wider ones form the patches again for each output (saving the memory).
KEEP_PATCHES_BELOW = 64


def _kept(site: rules.Site) -> bool:
    """Whether `rules.prepare` of the site is computed once and kept (a linear layer's is a view: not needed)."""
    if site.order == "factored" or site.weight is None or site.kind in ("linear", "embedding"):
        return False
    return site.kind == "norm" or site.shapes["O"] * site.shapes["G"] < KEEP_PATCHES_BELOW


def _prepared_numel(site: rules.Site) -> int:
    """Numbers per sample kept by `rules.prepare` (patches of a convolution, xhat of a norm)."""
    if not _kept(site):
        return 0
    shapes = site.shapes
    return shapes["S"] * shapes["G"] * shapes["I"] if site.kind == "conv" else shapes["in"]


def _gram(J: torch.Tensor, n: int, symmetric: bool) -> torch.Tensor:
    """J[:n] J[n:]^T, or J J^T when the rows of X are also the columns: (n, m)."""
    return self_gram(J) if symmetric else J[:n] @ J[n:].T


def bylayer_ntk(plan: Plan, problem: Problem, show: bool | None) -> torch.Tensor:
    """Theta (N, M) for mode "trace", (N, M, K) for "diagonal", by the sum in the module docstring."""
    n, k, symmetric = problem.X.shape[0], problem.n_outputs, problem.Y is None
    Z = problem.X if symmetric else torch.cat([problem.X, problem.Y])
    shape = (n, problem.cols.shape[0])
    theta = torch.zeros((*shape, k), dtype=problem.dtype, device=problem.device)
    held: dict[str, torch.Tensor] = {}
    with instrumented(plan, problem) as injector:
        inputs, out, deltas = shifted_forward(plan, problem, Z, injector)
        prepared = {site.key: rules.prepare(site, inputs[site.key]) for site in plan.sites if _kept(site)}
        for index in progress(range(k), total=k, desc="empirical NTK (structured, by layer)", enabled=show):
            cots = output_cotangents(plan, out, deltas, index)
            for site in plan.sites:
                g = cots.pop(site.key)
                if site.order == "factored":
                    held.setdefault(site.key, g.new_empty((g.shape[0], k, *g.shape[1:])))[:, index] = g
                    continue
                for J in rules.per_sample_grads(site, inputs[site.key], g[:, None], True, prepared.get(site.key)):
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


def _split(f: factored.Factored, n: int, first: bool) -> factored.Factored:
    part = slice(None, n) if first else slice(n, None)
    if f.w is None:
        return factored.Factored(None, None, f.dense[part])
    return factored.Factored(f.w, f.h[part])
