"""Range checks of the layer kernels: each layer's diagonal, checked once at the end (`ntkit._range`).

A kernel is positive semi-definite at every layer, so |K(x_p, y_q)| <= sqrt(K(x_p, x_p) K(y_q, y_q)): the self pass
(each example with itself) already has, after every layer, the variances Sigma(x_p, x_p) and Theta(x_p, x_p) at
each position, and they bound the Gram of every tile. `check` hands them to one `RangeTracker` (O(N P) per layer,
one synchronization): a diagonal past the dtype's largest value raises `KernelOverflowError`; a positive one that
falls below its smallest normal value raises `KernelUnderflowError` where later layers needed its digits, or warns
`KernelUnderflowWarning` where the result is the nearest value the dtype holds. Both errors name the layer, the dtype's
range and the settings to change.

Underflow is judged on Sigma only, and only before the first pooling layer: a pooled diagonal averages a kernel
over pairs of positions, whose exact value can be anything down to 0 (terms of both signs), so below the normal range
it is cancellation, not lost digits. On the slow path only (something below the normal range), a float32 kernel's
self pass is recomputed in float64 for the rows concerned, which tells an exact zero from an underflow and whether the
final values needed the lost digits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .._range import RangeTracker, advice, check_resolved, log10_norms, number
from ..activations.base import moderate as variances_moderate
from .base import Layer
from .plan import prefix_of

#: relative agreement with the float64 recomputation under which an underflow is harmless
AGREE = 1e-3


@dataclass
class Diagonal:
    """One layer's diagonals in the self pass: Sigma(x_p, x_p) (and Theta(x_p, x_p) or None), (N, *S) or (N,)."""

    where: str
    sigma: torch.Tensor
    theta: torch.Tensor | None
    low: bool
    layer: Layer | None = None


def input_diagonal(X: torch.Tensor) -> torch.Tensor:
    """x.x / C at each position of each example (N, *S), or (N,) for flat inputs: what every first layer scales."""
    return (X * X).sum(1) / X.shape[1]


def moderate(qx: list[torch.Tensor], qy: list[torch.Tensor]) -> list[bool]:
    """For each layer's variances of the rows (qx[i]) and columns (qy[i]): whether all are 0 or well inside the
    dtype's range (`activations.base.moderate`), so that the maps may form q(x_p) q(y_q). One synchronization for
    all layers."""
    if not qx or not qy:     # no tiles to compute
        return []
    flags = [variances_moderate(a) if a is b else variances_moderate(a) & variances_moderate(b)
             for a, b in zip(qx, qy, strict=True)]
    return torch.stack(flags).tolist()


def check(X: torch.Tensor, diagonals: list[Diagonal], layers: Sequence[Layer],
          recompute: Callable[[torch.Tensor], list[Diagonal]], want_ntk: bool) -> None:
    """Range-check the self pass of X (its `diagonals`, the input's first, in the order the layers ran);
    `recompute(X64)` is the same self pass in float64 on some rows, asked for only when a value is below the
    normal range. Then, for activations by quadrature, whether the rule resolves the variances each is fed
    (`_range.check_resolved`; those are the diagonals of the layer before it)."""
    tracker = RangeTracker(X.dtype)
    for d in diagonals:
        what = "x.x / C (the mean square of an input position over its channels)" if d.where == "the input" \
            else "the NNGP"
        tracker.add(d.sigma, what, d.where, low=d.low)
        if d.theta is not None:      # Theta >= Sigma on the diagonal until pooling: no underflow of its own
            tracker.add(d.theta, "the NTK", d.where, low=False)
    by_place = {d.where: d for d in diagonals}
    tracker.check(lambda: advice_for(X, layers),
                  lambda where, small: underflow_verdict(X, diagonals, by_place[where], small, recompute))
    for before, d in zip(diagonals[:-1], diagonals[1:], strict=True):
        activation = getattr(d.layer, "activation", None)
        if activation is not None:
            check_resolved(activation, before.sigma, d.where, want_ntk)


def underflow_verdict(X: torch.Tensor, diagonals: list[Diagonal], entry: Diagonal, small: torch.Tensor,
                      recompute: Callable[[torch.Tensor], list[Diagonal]]) -> str | None:
    """What the entries of `entry.sigma` below the smallest normal number (`small`) mean (slow path only): None
    where they are exact zeros (a zero input without bias, zero padding) or later layers did not need their digits
    (the final diagonals agree with float64 to `AGREE`, or to the smallest normal number); "warn" where final values
    are below the normal range (0 or few digits is the nearest the dtype holds); "error" where final values inside the
    range came out wrong. The reference is the self pass in float64 for a narrower dtype; in float64 itself, positive
    subnormal values are the underflows, and any final value inside the range might have needed them."""
    info = torch.finfo(X.dtype)
    rows = small.reshape(small.shape[0], -1).any(1)
    index = [i for i, d in enumerate(diagonals) if d is entry][0]
    final = diagonals[-1]
    if X.dtype == torch.float64:
        real = small & (entry.sigma > 0)
        exact = [final.sigma, final.theta]
    else:
        reference = recompute(X[rows].double())
        r = reference[index].sigma
        real = small[rows] & (r > 0) & (r < info.tiny)
        exact = [reference[-1].sigma, reference[-1].theta]
    if entry.where == "the input":   # x.x / C is 0 exactly where the position is 0 in every channel
        nonzero = (X != 0).any(1)
        real = small & nonzero if X.dtype == torch.float64 else small[rows] & nonzero[rows]
    hit = real.reshape(real.shape[0], -1).any(1)
    if not bool(hit.any()):
        return None
    computed = [final.sigma, final.theta] if X.dtype == torch.float64 else \
        [None if t is None else t[rows] for t in (final.sigma, final.theta)]
    below = False
    for got, want in zip(computed, exact, strict=True):
        if got is None:
            continue
        got, want = got[hit].double(), want[hit].double()
        if X.dtype != torch.float64 and bool(((got - want).abs() > AGREE * want.abs() + info.tiny).any()):
            return "error"
        below |= bool((want.abs() < info.tiny).any())
    if X.dtype == torch.float64 and not below:
        return "error"              # no wider reference: lost digits in a final value inside the range
    return "warn" if below else None


def advice_for(X: torch.Tensor, layers: Sequence[Layer]) -> tuple[str, str]:
    """The fixes the range errors name: the weight layers' largest (smallest) W_std and b_std, their number, and the
    inputs' largest (smallest nonzero) norm."""
    weights = list(_weight_layers(layers, ""))
    norms = log10_norms(X.reshape(X.shape[0], -1))
    finite = norms[torch.isfinite(norms)]
    largest = f"1e{float(finite.max()):.0f}" if finite.numel() else "-"
    smallest = f"1e{float(finite.min()):.0f}" if finite.numel() else "-"
    inputs_over = f"inputs of smaller norm (the largest norm of an example is about {largest})"
    inputs_under = f"inputs of larger norm (the smallest nonzero norm of an example is about {smallest})"
    if not weights:
        return advice(X.dtype, inputs_over, inputs_under)
    w_hi = max(weights, key=lambda t: t[1])
    w_lo = min(weights, key=lambda t: t[1])
    b_hi = max(b for _, _, b in weights)
    b_lo = min(b for _, _, b in weights)
    count = len(weights)
    return advice(X.dtype,
                  f"a smaller W_std (the largest is {w_hi[1]:g}, at {w_hi[0]}) or b_std (the largest is {b_hi:g}), "
                  f"fewer weight layers (now {count}), or {inputs_over}",
                  f"a larger W_std (the smallest is {w_lo[1]:g}, at {w_lo[0]}), b_std > 0 (the smallest is "
                  f"{b_lo:g}), fewer weight layers (now {count}), or {inputs_under}")


def _weight_layers(layers: Sequence[Layer], prefix: str):
    """(where, W_std, b_std) of every weight layer, those of Residual branches included."""
    for index, layer in enumerate(layers):
        if layer.branches is not None:
            for b, branch in enumerate(layer.branches):
                yield from _weight_layers(branch, prefix_of(layer, f"{prefix}{index}", b))
        elif layer.weights:
            yield f"layer {prefix}{index} ({layer.name})", number(layer.W_std), number(layer.b_std)
