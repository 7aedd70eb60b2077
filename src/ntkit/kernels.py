"""The infinite-width kernels of a fully-connected network: the paper's recursion.

For depth L (weight layers), weight scale W_std and bias scale b_std (the paper: W_std = 1,
b_std = beta), on a block of inputs X (N, n0) and Y (M, n0):

    Sigma^(1)(x, y)      = W_std^2 x.y / n0 + b_std^2                          (Proposition 1)
    Sigma^(l+1)(x, y)    = W_std^2 E_{f ~ N(0, Sigma^(l))}[sigma(f(x)) sigma(f(y))] + b_std^2
    SigmaDot^(l+1)(x, y) = W_std^2 E_{f ~ N(0, Sigma^(l))}[sigma'(f(x)) sigma'(f(y))]
    Theta^(1)            = Sigma^(1)                                           (Theorem 1)
    Theta^(l+1)          = Theta^(l) SigmaDot^(l+1) + Sigma^(l+1)

A chain whose layers differ (each weight layer its own W_std, b_std, each nonlinearity its own: `Recursion.chain`)
runs the same recursion with each layer's settings in place of the common ones.

These functions work on one block of an already validated problem; `ntkit.gram` tiles large problems, and the
layers' composer (`layers/execute.py`) runs them for every fully-connected chain, `MLP` included.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from . import coincident
from ._range import RangeTracker, advice_for, check_resolution, underflow_verdict
from .activations import Nonlinearity, PiecewiseLinear, get_activation


@dataclass(frozen=True)
class Map:
    """One step Sigma^(l) -> Sigma^(l+1) of the recursion: the nonlinearity applied to the outputs of weight layer l,
    then the scales of weight layer l + 1."""

    activation: Nonlinearity
    W_std: float | torch.Tensor
    b_std: float | torch.Tensor


@dataclass(frozen=True)
class Recursion:
    """The numbers that fix the infinite-width kernels of a fully-connected network.

    `W_std`, `b_std` are the scales of weight layer 1; `maps` (depth - 1 of them) the nonlinearity and the next
    layer's scales of each later step, for a chain whose layers differ (`chain`); None: `activation`, `W_std`,
    `b_std` at every layer (the paper's network).
    """

    activation: Nonlinearity
    depth: int
    W_std: float | torch.Tensor = 1.0
    b_std: float | torch.Tensor = 0.1
    maps: tuple[Map, ...] | None = None

    def __post_init__(self):
        if self.maps is not None and len(self.maps) != self.depth - 1:
            raise ValueError(f"a Recursion of depth {self.depth} needs {self.depth - 1} maps, got {len(self.maps)}")

    @classmethod
    def chain(cls, W_std: float | torch.Tensor, b_std: float | torch.Tensor, maps: list[Map]) -> Recursion:
        """The recursion of a chain with its own settings per layer: weight layer 1's scales, then one `Map` per
        later weight layer (`activation` is the first map's, the identity for depth 1)."""
        activation = maps[0].activation if maps else get_activation("identity")
        return cls(activation, len(maps) + 1, W_std, b_std, tuple(maps))

    @property
    def steps(self) -> tuple[Map, ...]:
        """The depth - 1 maps, in order (the same one repeated for the paper's network)."""
        if self.maps is not None:
            return self.maps
        return (Map(self.activation, self.W_std, self.b_std),) * (self.depth - 1)

    @property
    def activations(self) -> list[Nonlinearity]:
        """The nonlinearity of each map, in order."""
        return [m.activation for m in self.steps]

    @property
    def scales(self) -> list[tuple[float | torch.Tensor, float | torch.Tensor]]:
        """(W_std, b_std) of every weight layer, 1 .. depth."""
        return [(self.W_std, self.b_std), *((m.W_std, m.b_std) for m in self.steps)]


def sigma1(X: torch.Tensor, Y: torch.Tensor, rec: Recursion) -> torch.Tensor:
    """Sigma^(1)(x, y) = W_std^2 x.y / n0 + b_std^2 for every pair: (N, M)."""
    return (rec.W_std**2 / X.shape[1]) * (X @ Y.T) + rec.b_std**2


def sigma_diagonals(X: torch.Tensor, rec: Recursion, want_ntk: bool = False) -> list[torch.Tensor]:
    """[Sigma^(1)(x, x), ..., Sigma^(L)(x, x)] for each row x of X: L vectors of shape (N,).

    Checks every layer's range (`ntkit._range`): a diagonal past the dtype's largest value raises
    `KernelOverflowError`; a positive one that rounds to 0 gives a `KernelUnderflowWarning` where 0 is the
    nearest value the dtype holds, or raises `KernelUnderflowError` where later layers needed its digits (both
    errors are ValueErrors naming the layer and the fix). With `want_ntk` the Theta^(L) diagonal is checked too.
    The diagonals bound the Gram (|K(x, y)| <= sqrt(K(x, x) K(y, y))), so a Gram built from checked diagonals
    stays in range. Activations by quadrature are refused where the rule cannot resolve the variances
    (`_range.check_resolution`; the SigmaDot map only with `want_ntk`).
    """
    return _checked_diagonals(X, rec, want_ntk)[0]


def kernel_diag(X: torch.Tensor, rec: Recursion, want_ntk: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Sigma^(L)(x, x), Theta^(L)(x, x)) for each row of X, in O(N) memory; range-checked like
    `sigma_diagonals`."""
    diagonals, theta = _checked_diagonals(X, rec, want_ntk)
    return diagonals[-1], theta


def _checked_diagonals(X: torch.Tensor, rec: Recursion, want_ntk: bool):
    """The Sigma^(l) diagonals and (if wanted) the Theta^(L) diagonal, every layer range-checked (O(N L))."""
    w2, b2 = rec.W_std**2, rec.b_std**2
    tracker = RangeTracker(X.dtype)
    norms = (X * X).sum(1)
    q = (w2 / X.shape[1]) * norms + b2                                   # Sigma^(1), Proposition 1
    diagonals = [q]
    tracker.add(norms, "x.x (the squared norm of an input)", 1, low=False)   # X @ Y.T is as large
    tracker.add(q, "the NNGP", 1)
    theta = q if want_ntk else None
    for layer, step in enumerate(rec.steps, start=2):
        q_prev, w2, b2 = q, step.W_std**2, step.b_std**2
        q = w2 * step.activation.sigma_diag(q_prev) + b2
        diagonals.append(q)
        tracker.add(q, "the NNGP", layer)
        if want_ntk:
            theta = theta * (w2 * step.activation.sigma_dot_diag(q_prev)) + q   # Theta^(l), Theorem 1
            tracker.add(theta, "the NTK", layer, low=False)   # Theta^(l) >= Sigma^(l): no underflow of its own
    tracker.check(lambda: advice_for(X, rec), lambda layer, small: underflow_verdict(X, rec, diagonals, layer, small))
    check_resolution(rec, diagonals, want_ntk)
    return diagonals, theta


def kernel_block(
    X: torch.Tensor,
    Y: torch.Tensor,
    rec: Recursion,
    want_ntk: bool,
    qx: list[torch.Tensor] | None = None,
    qy: list[torch.Tensor] | None = None,
    compiled: bool = False,
    exact_diagonal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Sigma^(L)(X, Y), Theta^(L)(X, Y)) on one block, shapes (N, M); Theta is None unless wanted.
    `exact_diagonal`: X is Y and the caller overwrites the diagonal with its exact values (a diagonal tile of a
    symmetric Gram), so the diagonal's pairs are not recomputed below.

    `qx`, `qy` are the per-layer diagonals of `sigma_diagonals`, passed in when the caller
    tiles a large problem and has them already. `compiled` fuses the ReLU-family path with
    torch.compile (see `MLP.kernel`). For the activations that carry the angle's sine (the ReLU
    family, sign, step, sin, cos, erf) the pairs whose correlation is within `coincident.NEAR` of +-1 at layer 1, or
    at a later layer followed by a map that grows gaps (`_growing_maps`), are recomputed without cancellation
    (`coincident.py`), except under autograd (the fused ReLU-family path checks layer 1 only); for the others
    (gelu, the quadrature activations) the same pairs of a float32 block are recomputed in float64.
    """
    qx = sigma_diagonals(X, rec, want_ntk) if qx is None else qx
    qy = sigma_diagonals(Y, rec, want_ntk) if qy is None else qy
    if _fast_path_applies(rec, X, Y):
        return _piecewise_linear_block(X, Y, rec, want_ntk, qx, qy, compiled, exact_diagonal)
    sigma = sigma1(X, Y, rec)
    refinable = _refinable(rec, X, Y)
    near = _near_mask(sigma, qx[0], qy[0]) if refinable or _widenable(rec, X, Y) else None
    homogeneous = all(act.homogeneous for act in rec.activations)
    grows = _growing_maps(rec, qx, qy) if near is not None and not homogeneous else []
    theta = sigma if want_ntk else None
    for layer, step in enumerate(rec.steps, start=1):
        q1, q2 = qx[layer - 1][:, None], qy[layer - 1][None, :]
        if want_ntk:
            e_phi, e_dphi = step.activation.sigma_both(sigma, q1, q2)
            sigma = step.W_std**2 * e_phi + step.b_std**2
            theta = theta * (step.W_std**2 * e_dphi) + sigma
        else:
            sigma = step.W_std**2 * step.activation.sigma(sigma, q1, q2) + step.b_std**2
        if near is not None and layer < len(grows) and grows[layer]:   # pairs that come close at a later layer
            near |= _near_mask(sigma, qx[layer], qy[layer])   # (a zero row and a small one), where the maps grow gaps
    rows, cols = _near_pairs(near, exact_diagonal)
    if len(rows):   # nearly coincident pairs: the angle again, without cancellation
        if refinable:
            coincident.refine(X, Y, rec, rows, cols, sigma, theta, qx[0], qy[0])
        else:       # or, for the maps that do not carry it, in float64
            coincident.widen(X, Y, rec, rows, cols, sigma, theta)
    return sigma, theta


def _near_pairs(near: torch.Tensor | None, exact_diagonal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices (1-D int64) of the pairs marked in `near` (None: no pair), without the diagonal's
    when the caller overwrites it with exact values (`exact_diagonal`)."""
    if near is None:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    if exact_diagonal:
        near.fill_diagonal_(False)
    return torch.nonzero(near, as_tuple=True)


def _refinable(rec: Recursion, X: torch.Tensor, Y: torch.Tensor) -> bool:
    """Whether `coincident.refine` applies on the generic path: an activation that carries the angle's sine
    (sign, step; the ReLU family when autograd keeps it off the fused path), depth > 1, and no autograd (the
    recomputation overwrites entries in place, outside the graph)."""
    return all(coincident.supports(act) for act in rec.activations) and _recomputable(rec, X, Y)


def _widenable(rec: Recursion, X: torch.Tensor, Y: torch.Tensor) -> bool:
    """Whether `coincident.widen` applies: an activation that does not carry the gap, on inputs narrower than
    float64, depth > 1 and no autograd."""
    return X.dtype.itemsize < 8 and not _refinable(rec, X, Y) and _recomputable(rec, X, Y)


def _recomputable(rec: Recursion, X: torch.Tensor, Y: torch.Tensor) -> bool:
    """Depth > 1 and no autograd: near pairs can be overwritten in place, outside the graph."""
    if rec.depth < 2:
        return False
    tensors = [t for t in (X, Y, *(s for pair in rec.scales for s in pair)) if isinstance(t, torch.Tensor)]
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _growing_maps(rec: Recursion, qx: list[torch.Tensor], qy: list[torch.Tensor]) -> list[bool]:
    """For each map m (layers 1 .. L - 1), whether the maps from m on can grow the gap q1 + q2 - 2c of a near
    pair: the product of their gains W_std^2 E[sigma'(u)^2] (the gap's derivative at coincidence; each the largest
    over the rows' variances) exceeds 1 (chaos). Where it does not, the eps q a near pair's gap keeps in the plain
    formulas stays that small, and only layer-1 pairs need the recomputation; in the ordered regime (cos at
    W_std = 1) every pair comes close with depth, and recomputing them all would cost many times the Gram
    (O(N M (d + L))). Not asked of the scale-free maps (the ReLU family: their gain is the growth of the variance,
    not of a gap; all pairs come close with depth) nor met by sign and step (sigma' = 0)."""
    layers = [torch.cat([q1.detach(), q2.detach()]) for q1, q2 in zip(qx[:-1], qy[:-1], strict=True)]
    if not layers or not layers[0].numel():
        return [False] * len(layers)
    if rec.maps is None:
        dots = rec.activation.sigma_dot_diag(torch.stack(layers))   # one call for all layers: (L - 1, N + M)
        gains = (float(rec.W_std) ** 2 * dots.amax(1)).tolist()
    else:       # a chain with its own settings per layer (a scale-free map among them counts its gain too)
        gains = [float(step.W_std) ** 2 * float(step.activation.sigma_dot_diag(q).amax())
                 for step, q in zip(rec.steps, layers, strict=True)]
    growth, grows = 1.0, []
    for gain in reversed(gains):           # the product from each map to the last
        growth *= gain
        grows.append(growth > 1)
    return grows[::-1]


def _near_mask(sigma: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """`coincident.near_mask` of a Sigma^(l) block from its diagonals q1 (rows) and q2 (columns)."""
    tiny = torch.finfo(sigma.dtype).tiny
    return coincident.near_mask(sigma, torch.rsqrt(q1.clamp(min=tiny)), torch.rsqrt(q2.clamp(min=tiny)))


def _fast_path_applies(rec: Recursion, X: torch.Tensor, Y: torch.Tensor) -> bool:
    """The fused in-place path: ReLU-family activation, plain float parameters, no autograd."""
    acts = rec.activations if rec.depth > 1 else [rec.activation]
    if not all(isinstance(act, PiecewiseLinear) for act in acts):
        return False
    if any(isinstance(s, torch.Tensor) for pair in rec.scales for s in pair):
        return False
    return not (torch.is_grad_enabled() and (X.requires_grad or Y.requires_grad))


def _piecewise_linear_block(X, Y, rec: Recursion, want_ntk: bool, qx, qy, compiled: bool = False,
                            exact_diagonal: bool = False):
    """`kernel_block` for relu / leaky_relu / abs through `piecewise_linear_layers`; the pairs whose layer-1
    correlation is within `coincident.NEAR` of +-1 are then recomputed without cancellation (`coincident.py`)."""
    tiny = torch.finfo(X.dtype).tiny
    roots = [(torch.rsqrt(q1.clamp(min=tiny)), torch.rsqrt(q2.clamp(min=tiny)), q1.sqrt(), q2.sqrt())
             for q1, q2 in zip(qx[:-1], qy[:-1], strict=True)]
    sigma = sigma1(X, Y, rec)
    near = coincident.near_mask(sigma, roots[0][0], roots[0][1]) if rec.depth > 1 else None
    theta = sigma.clone() if want_ntk else None
    layers = _compiled_layers() if compiled else piecewise_linear_layers
    if rec.maps is None:
        sigma, theta = layers(sigma, theta, roots, rec.activation.a, float(rec.W_std) ** 2, float(rec.b_std) ** 2)
    else:
        steps = rec.steps
        sigma, theta = layers(sigma, theta, roots, [m.activation.a for m in steps],
                              [float(m.W_std) ** 2 for m in steps], [float(m.b_std) ** 2 for m in steps])
    rows, cols = _near_pairs(near, exact_diagonal)
    if len(rows):   # nearly coincident pairs: the angle again, without cancellation
        coincident.refine(X, Y, rec, rows, cols, sigma, theta, qx[0], qy[0])
    return sigma, theta


@torch.no_grad()
def piecewise_linear_layers(sigma: torch.Tensor, theta: torch.Tensor | None,
                            roots: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                            a: float | list[float], w2: float | list[float], b2: float | list[float]
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Layers 2..L of the recursion for sigma(x) = max(x, 0) + a min(x, 0), in place on `sigma`
    and `theta` (a few passes over memory per layer instead of a dozen temporaries). `a`, `w2` = W_std^2 and
    `b2` = b_std^2 are one float for every layer, or lists with one per map (a chain whose layers differ).

    roots[l] = (1/sqrt(q_x), 1/sqrt(q_y), sqrt(q_x), sqrt(q_y)) of Sigma^(l) on the diagonals. In
    correlation form rho = Sigma / sqrt(q_x q_y), theta_ang = arccos(rho):
        SigmaDot^(l+1) = W_std^2 k,  k = ((1 + a^2)(pi - theta_ang) + 2 a theta_ang) / (2 pi)
        Sigma^(l+1)    = W_std^2 sqrt(q_x q_y) ((1 - a)^2 sin(theta_ang) / (2 pi) + k rho) + b_std^2
        Theta^(l+1)    = Theta^(l) SigmaDot^(l+1) + Sigma^(l+1)
    """
    per_layer = [v if isinstance(v, (list, tuple)) else [v] * len(roots) for v in (a, w2, b2)]
    for (rx, ry, nx, ny), a, w2, b2 in zip(roots, *per_layer, strict=True):
        rho = sigma.mul_(rx[:, None]).mul_(ry[None, :]).clamp_(-1.0, 1.0)
        ang = torch.acos(rho)                                      # theta_ang in [0, pi]
        sin_part = torch.sin(ang)                                  # sqrt(1 - rho^2)
        k = ang.mul_((2 * a - 1 - a * a) / (2 * math.pi)).add_(0.5 * (1 + a * a))
        if theta is not None:
            theta.mul_(k).mul_(w2)                                  # Theta^(l) SigmaDot^(l+1)
        sigma = sin_part.mul_((1 - a) ** 2 / (2 * math.pi)).addcmul_(k, rho)
        sigma.mul_(nx[:, None]).mul_(ny[None, :]).mul_(w2).add_(b2)  # Sigma^(l+1)
        if theta is not None:
            theta.add_(sigma)
    return sigma, theta


@functools.cache
def _compiled_layers():
    """`piecewise_linear_layers` fused by torch.compile into a few kernels (one pass over memory
    per layer); compiled on first use, which takes tens of seconds."""
    return torch.compile(piecewise_linear_layers, dynamic=True)
