"""The Hermite maps as a differentiable function of (c, q1, q2): `gaussian_maps`.

Price's theorem gives the derivatives of E[sigma^(m)(u) sigma^(n)(v)], (u, v) ~ N(0, [[q1, c], [c, q2]]), through
maps of higher orders: dE/dc = E[sigma^(m+1)(u) sigma^(n+1)(v)], dE/dq1 = E[sigma^(m+2)(u) sigma^(n)(v)] / 2 and
dE/dq2 = E[sigma^(m)(u) sigma^(n+2)(v)] / 2, so the maps are differentiable to any order, in backward mode
(autograd, torch.func.grad and jacrev), forward mode (torch.func.jvp, jacfwd) and under torch.func.vmap of the maps
themselves (they are elementwise in (c, q1, q2)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .hermite import HermiteMaps


class _Maps(torch.autograd.Function):
    """E[sigma^(m)(u) sigma^(n)(v)] for several (m, n) with derivatives by Price's theorem (any order)."""

    @staticmethod
    def forward(c, q1, q2, maps: HermiteMaps, orders: tuple[tuple[int, int], ...]):  # type: ignore[override]
        return tuple(maps.evaluate(c.detach(), q1.detach(), q2.detach(), orders))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        c, q1, q2, maps, orders = inputs
        ctx.save_for_backward(c, q1, q2)
        ctx.save_for_forward(c, q1, q2)
        ctx.maps, ctx.orders = maps, orders

    @staticmethod
    def jvp(ctx, c_t, q1_t, q2_t, *_):  # type: ignore[override]
        """Forward mode (torch.func.jvp, jacfwd): the same Price derivatives as `backward`."""
        c, q1, q2 = ctx.saved_tensors
        steps = [(1, 1, c_t, 1.0), (2, 0, q1_t, 0.5), (0, 2, q2_t, 0.5)]
        steps = [step for step in steps if step[2] is not None]
        wanted = list(dict.fromkeys((m + i, n + j) for m, n in ctx.orders for i, j, _, _ in steps))
        values = dict(zip(wanted, gaussian_maps(c, q1, q2, ctx.maps, wanted), strict=True)) if wanted else {}
        shape = torch.broadcast_shapes(c.shape, q1.shape, q2.shape)
        out = []
        for m, n in ctx.orders:
            total = c.new_zeros(shape)
            for i, j, tangent, factor in steps:
                total = total + factor * tangent * values[(m + i, n + j)]
            out.append(total)
        return tuple(out)

    @staticmethod
    def vmap(info, in_dims, c, q1, q2, maps, orders):  # type: ignore[override]
        """The maps are elementwise in (c, q1, q2): a batch dimension is one more broadcast dimension in front
        (torch.func.vmap, jacrev, jacfwd and hessian through the kernels)."""
        tensors = (c, q1, q2)
        ndim = max(t.ndim - (d is not None) for t, d in zip(tensors, in_dims[:3], strict=True))

        def front(t, d):
            t = t.unsqueeze(0) if d is None else t.movedim(d, 0)
            return t.reshape(t.shape[:1] + (1,) * (ndim + 1 - t.ndim) + t.shape[1:])

        out = _Maps.apply(*(front(t, d) for t, d in zip(tensors, in_dims[:3], strict=True)), maps, orders)
        return out, tuple(0 for _ in out)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        c, q1, q2 = ctx.saved_tensors
        needs = ctx.needs_input_grad
        wanted: list[tuple[int, int]] = []
        for (m, n), grad in zip(ctx.orders, grads, strict=True):
            if grad is None:
                continue
            wanted += [(m + 1, n + 1)] * needs[0] + [(m + 2, n)] * needs[1] + [(m, n + 2)] * needs[2]
        wanted = list(dict.fromkeys(wanted))
        values = dict(zip(wanted, gaussian_maps(c, q1, q2, ctx.maps, wanted), strict=True)) if wanted else {}
        gc = gq1 = gq2 = None
        for (m, n), grad in zip(ctx.orders, grads, strict=True):
            if grad is None:
                continue
            if needs[0]:
                gc = _add(gc, grad * values[(m + 1, n + 1)])
            if needs[1]:
                gq1 = _add(gq1, 0.5 * grad * values[(m + 2, n)])
            if needs[2]:
                gq2 = _add(gq2, 0.5 * grad * values[(m, n + 2)])
        return (_reduce(gc, c), _reduce(gq1, q1), _reduce(gq2, q2), None, None)


def _add(total, value):
    return value if total is None else total + value


def _reduce(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if grad is None else grad.sum_to_size(like.shape)


def gaussian_maps(c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, maps: HermiteMaps,
                  orders: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """[E[sigma^(m)(u) sigma^(n)(v)] for (m, n) in orders], (u, v) ~ N(0, [[q1, c], [c, q2]]), differentiable to
    any order in c, q1 and q2 (tensors that broadcast; the results have their broadcast shape and c's dtype)."""
    return list(_Maps.apply(c, q1, q2, maps, tuple(orders)))
