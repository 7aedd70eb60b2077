"""Accurate kernels at coincident and nearly coincident pairs of inputs.

For a pair (x, y) the layer-l covariance [[q1, c], [c, q2]] of (f(x), f(y)) has the angle theta = arccos(rho),
rho = c / sqrt(q1 q2). Near rho = +-1 the plain formulas get theta (or pi - theta) from 1 -+ rho or q1 q2 - c^2,
which keep only sqrt(eps) of it; the arc-cosine kernels have a cone there (1e-8 relative in float64, 3e-4 in
float32), and that of sign, which feeds on itself (theta -> sqrt(theta) per layer; step's too at rho = 1), keeps
only eps^(2^-(L-1)). Here the sine of the angle, S = sin(theta) = sqrt((q1 q2 - c^2) / (q1 q2)) in [0, 1], is
carried through the recursion without cancellation, with theta = atan2(S, rho). Every step below works on ratios
in [0, 1] (no product q1 q2, which leaves the dtype's range past sqrt(finfo.max), 1.8e19 in float32, and no square
of a difference of inputs, which underflows below sqrt(finfo.tiny)), so nothing overflows or underflows where the
kernel itself fits:

    layer 1:  S^2 = (a |x|^2 / q1)(a |y_perp|^2 / q2) + (b^2 / q_min)(a |y - x|^2 / q_max),   a = W_std^2 / n0
              (q1 q2 - c^2 = a^2 (|x|^2 |y|^2 - (x.y)^2) + a b^2 |y - x|^2 and the Lagrange identity
              |x|^2 |y|^2 - (x.y)^2 = |x|^2 |y_perp|^2, y_perp the part of y normal to x), with |y_perp| from exact
              products (`normal_part`: to rounding also where y is parallel to x but for the last bits) and norms by
              `norm` (no overflow or underflow), in float64;
    layer l+1, with E = E[sigma(u) sigma(v)], e_i = E[sigma(u_i)^2] and the sine G = sqrt(1 - E^2 / (e1 e2)) of the
              next angle before the bias, from the activation (`Activation.sigma_both_gap`), q_i' = W^2 e_i + b^2,
              t_i = W^2 e_i / q_i', T_i = W^2 e_i / q_max', P = W^2 E / q_max':
              S'^2 = t1 t2 G^2 + (b^2 / q_min') W^2 (e1 + e2 - 2E) / q_max'                  (Proposition 1)
              W^2 (e1 + e2 - 2E) / q_max' = (sqrt(T1) - sqrt(T2))^2 + 2 sqrt(T1 T2) G^2 / (1 + E / sqrt(e1 e2))
                                            (for E >= 0; T1 + T2 - 2P, without cancellation, for E < 0),
              with sqrt(T1) - sqrt(T2) = W^2 (e1 - e2) / q_max' / (sqrt(T1) + sqrt(T2)).

The maps of sin, cos and erf depend on the variances and the gap q1 + q2 - 2c, not on the angle alone; from the
sine the gap is (sqrt(q1) - sqrt(q2))^2 + 2 sqrt(q1 q2) S^2 / (1 + rho), which needs the difference
delta = q1 - q2 to more than the eps q the rounded variances keep of it. So delta is carried too:
a (x - y).(x + y) at layer 1 (no cancellation), W^2 (e1 - e2) after (`Activation.sigma_diag_difference`, from
delta without cancellation).

`kernel_block` computes every tile by the fast formulas, then recomputes here the pairs whose layer-1 correlation
is within `NEAR` of 1 or -1 (a few per tile: the duplicates, the training points among Nystrom centres, opposite
inputs; for sin, cos and erf also pairs that come that close at a later layer followed by a map that grows
gaps, as a zero row and a small one do after a layer of cos at W_std = 10), from layer 1, O(d + L) each, for every
activation that `supports` says carries the sine.

Which architectures get it. A pair of identical examples gets its exact diagonal value in every architecture
(`identical_pairs`, `ntkit.layers.execute.exact_pairs`). Nearly coincident pairs are recomputed here on flat inputs
(N, d) for
- a fully-connected chain (`ntkit.layers.plan.fused_recursion`: Linear and closed-form activations alternating,
  each layer with its own W_std, b_std and nonlinearity; `MLP`) whose nonlinearities all carry the sine (the ReLU
  family, sign, step, sin, cos, erf). Where one does not (gelu, the exponential and polynomial families,
  quadrature), a float32 tile's near pairs are recomputed in float64 (`widen`), a float64 tile's are not;
- the first layers of any other architecture on flat inputs when they form such a chain with at least one
  nonlinearity (Linear, ReLU, Linear, ... then LayerNorm, a Residual, more layers: `ntkit.layers.fused.Prefix`):
  the chain's values at near pairs are accurate, and the layers after it compute from them by the plain maps.
  Maps that are smooth in the covariance there (LayerNorm, erf, sin, cos, gelu, the weight layers) keep that
  accuracy; a later map with a cone at coincidence (the ReLU family, sign, step) takes its angle from the rounded
  (c, q1, q2) again, which keeps eps / theta of an angle theta, as every layer-by-layer map does.
Not in the others, because their first layer is not one inner product of two vectors: a convolution's
Sigma^(1)(x_p, y_q) is a sum over a patch at each pair of positions and pooling averages over them, so the sine
would have to be carried for every pair of positions (O((HW)^2) numbers per pair of examples, through every
layer's spatial mixing); attention and graph aggregation mix tokens and nodes likewise; an architecture that starts
with LayerNorm, a Residual or a weight layer followed by anything but a closed-form activation has no chain to
refine. Nor under autograd in any architecture: the recomputation overwrites entries in place, outside the graph.
"""

from __future__ import annotations

import math

import torch

NEAR = {torch.float64: 1e-4, torch.float32: 1e-2}   # 1 - |rho| below which a pair is recomputed (eps / NEAR^0.5)
CHUNK = 2**16                                       # numbers per temporary of the first layer (512 kB in float64)
PAIRS = 2**16                                       # pairs per batch of the recursion (vectors of PAIRS numbers)


def fingerprints(X: torch.Tensor) -> torch.Tensor:
    """One number per example of X (N, ...): its entries weighted by fixed weights in [1, 2) and summed, row by row
    in one order, so that identical examples (in X or in another tensor of the same shape per example) have
    identical fingerprints; different examples rarely do (`identical_pairs` checks the candidates)."""
    flat = X.detach().reshape(X.shape[0], math.prod(X.shape[1:]))
    weights = torch.arange(flat.shape[1], dtype=torch.float64).mul_(0.6180339887498949).frac_().add_(1.0)
    return (flat * weights.to(flat.dtype).to(flat.device)).sum(1)


def identical_pairs(X: torch.Tensor, Y: torch.Tensor, rows, cols, fx: torch.Tensor, fy: torch.Tensor,
                    skip_diagonal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs (a, b) of a tile (rows, cols) whose examples X[rows][a] and Y[cols][b] are equal entry by entry
    (1-D int64 tensors of positions in the tile; `fingerprints` fx of X and fy of Y select the candidates, which
    are then compared in full): a point with itself, which gets its exact diagonal value. `skip_diagonal`: the
    tile's own diagonal (a == b) is left out (a diagonal tile of a symmetric Gram, which has it already)."""
    fr, fc = fx[rows], fy[cols]
    candidates = torch.nonzero(torch.isin(fr, fc))[:, 0]
    if not len(candidates):
        return candidates, candidates
    same = fr[candidates][:, None] == fc[None, :]
    if skip_diagonal:
        same[torch.arange(len(candidates), device=same.device), candidates] = False
    a, b = torch.nonzero(same, as_tuple=True)
    if not len(a):
        return a, b
    a = candidates[a]
    x, y = X[rows][a], Y[cols][b]
    same = (x == y).reshape(len(a), math.prod(x.shape[1:])).all(1)
    return a[same], b[same]


def supports(activation) -> bool:
    """Whether `activation` carries the sine of the angle (`sigma_both_gap`): only then are near pairs recomputed."""
    return getattr(activation, "carries_gap", False)


def near_mask(sigma: torch.Tensor, rx: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
    """Whether the correlation sigma rx ry of each pair exceeds 1 - NEAR in absolute value (a bool tensor of
    sigma's shape); rx, ry are 1 / sqrt of the variances of the rows and columns."""
    tau = NEAR.get(sigma.dtype, 1e-2)
    return torch.mul(sigma, rx[:, None]).mul_(ry[None, :]).abs_() > 1 - tau


def norm(v: torch.Tensor) -> torch.Tensor:
    """The Euclidean norm of each row of v (P, n): (P,), without the overflow or underflow of sum(v^2) (each row is
    divided by its largest entry first, which costs a relative rounding error of eps in the norm, nothing more)."""
    top = v.abs().amax(1) if v.shape[1] else v.new_zeros(v.shape[0])
    safe = torch.where(top > 0, top, torch.ones_like(top))
    return top * torch.linalg.vector_norm(v / safe[:, None], dim=1)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den > 0, else 0 (a variance that is exactly zero carries no angle)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), 0.0)


def first_layer(X: torch.Tensor, Y: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, w2: float, b2: float,
                qx: torch.Tensor, qy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(c, q1, q2, S, delta) of Sigma^(1) for the pairs (X[rows], Y[cols]), vectors of shape (P,) in X's dtype, with
    delta = q1 - q2 to rounding. qx, qy are Sigma^(1) on the diagonals of X and Y; identical rows keep them, with
    c = q1, S = 0 and delta = 0 (no work on their entries: the duplicates, the diagonal of a symmetric Gram, are
    most near pairs); the others get all five from their entries (`_first_layer`), CHUNK numbers of each
    temporary at a time."""
    q1, q2 = qx[rows], qy[cols]
    c, sine, delta = q1.clone(), torch.zeros_like(q1), torch.zeros_like(q1)
    step = max(1, CHUNK // max(X.shape[1], 1))
    for start in range(0, len(rows), step):
        x, y = X[rows[start:start + step]], Y[cols[start:start + step]]
        other = torch.nonzero((x != y).any(1))[:, 0]
        if len(other):
            exact = _first_layer(x[other], y[other], w2, b2)
            for value, part in zip((c, q1, q2, sine, delta), exact, strict=True):
                value[start + other] = part
    return c, q1, q2, sine, delta


def _first_layer(x: torch.Tensor, y: torch.Tensor, w2: float, b2: float) -> tuple[torch.Tensor, ...]:
    """(c, q1, q2, S, delta) for paired rows x, y (P, n0), S = sin(theta) by the Lagrange identity (module docstring)
    and delta = q1 - q2 = a (x - y).(x + y) (no cancellation; rows scaled by a power of two first), all formed in
    float64 and returned in x's dtype. From float32 (or narrower) inputs products and squares of entries
    are exact there and cannot overflow or underflow, so the plain forms serve; float64 inputs take `norm` and
    Dekker's exact products."""
    dtype = x.dtype
    exact = _wide(x) != dtype
    x, y = x.to(_wide(x)), y.to(_wide(x))
    length = (lambda v: torch.linalg.vector_norm(v, dim=1)) if exact else norm
    ra = (w2 / x.shape[1]) ** 0.5
    sx, sy = ra * length(x), ra * length(y)                 # sqrt(a) |x|: its square is at most q1
    q1, q2 = sx * sx + b2, sy * sy + b2
    c = ra * ra * (x * y).sum(1) + b2
    sine = _ratio(sx, q1.sqrt()) * _ratio(ra * normal_part(x, y, exact), q2.sqrt())
    if b2 > 0:
        low, high = torch.minimum(q1, q2), torch.maximum(q1, q2)
        sine = torch.hypot(sine, _ratio(b2, low).sqrt() * _ratio(ra * length(y - x), high.sqrt()))
    top = torch.maximum(x.abs().amax(1), y.abs().amax(1)) if x.shape[1] else x.new_zeros(x.shape[0])
    exponent = torch.frexp(top).exponent
    xs, ys = _ldexp(x, -exponent[:, None]), _ldexp(y, -exponent[:, None])   # exact: entries at most 1
    delta = _ldexp(ra * ra * ((xs - ys) * (xs + ys)).sum(1), 2 * exponent)
    return tuple(t.to(dtype) for t in (c, q1, q2, sine.clamp_(max=1.0), delta))


def normal_part(x: torch.Tensor, y: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """|y_perp| = |y - xhat (xhat.y)| for paired rows x, y (P, n0): the part of y normal to x, to a few roundings
    relative even where y is nearly parallel (or opposite) to x, where the projection itself keeps only eps |y|.

    Through w = x_k y - y_k x, k the largest entry of x: w differs from x_k y by a multiple of x, so its part normal
    to x is x_k y_perp; each entry x_k y_i - y_k x_i is formed from exact products, so w keeps its digits however
    much they cancel; and as w_k = 0, its normal part is at least |w| |x_k| / |x| >= |w| / sqrt(n0): projecting w
    loses no more than that. With `exact` the products of entries are exact as they are (float32 entries in
    float64); otherwise rows are scaled by powers of two (exact) and the products split (`product_difference`)."""
    if exact:
        k = x.abs().argmax(1, keepdim=True)
        xk, yk = x.gather(1, k), y.gather(1, k)
        w = xk * y - yk * x
        scale = torch.zeros_like(xk[:, 0], dtype=torch.int32)
        xs, length = x, (lambda v: torch.linalg.vector_norm(v, dim=1))
    else:
        xs, _ = _unit_scale(x)
        ys, scale = _unit_scale(y)
        k = xs.abs().argmax(1, keepdim=True)
        xk, yk = xs.gather(1, k), ys.gather(1, k)
        w = product_difference(xk, ys, yk, xs)
        length = norm
    nxs = length(xs)
    xhat = xs / torch.where(nxs > 0, nxs, torch.ones_like(nxs))[:, None]
    w_perp = w - xhat * (xhat * w).sum(1)[:, None]
    return _ldexp(_ratio(length(w_perp), xk[:, 0].abs()), scale)


def product_difference(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """a b - c d to a few roundings relative to the result, however much the two products cancel: each product
    is split into its rounded value and its exact rounding error (Dekker 1971), the rounded values cancel
    exactly (Sterbenz) where they are close, and the errors are added back. Entries at most 1 in size."""
    p, q = a * b, c * d
    return (p - q) + (_product_error(a, b, p) - _product_error(c, d, q))


def _product_error(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """a b - fl(a b), exactly (Dekker's TwoProduct, with Veltkamp's split of each factor into two halves, whose
    products are exact: ((a_hi b_hi - p) + a_hi b_lo + a_lo b_hi) + a_lo b_lo, each step exact)."""
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    return torch.addcmul(-p, a_hi, b_hi).addcmul_(a_hi, b_lo).addcmul_(a_lo, b_hi).addcmul_(a_lo, b_lo)


def _split(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a = hi + lo exactly, each with half the significand's bits (Veltkamp)."""
    bits = round(-math.log2(torch.finfo(a.dtype).eps)) + 1          # 53 in float64
    t = a * float(2 ** ((bits + 1) // 2) + 1)
    hi = t - (t - a)
    return hi, a - hi


def _unit_scale(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(v 2^-e, e) per row, e the binary exponent of the row's largest entry (exact; entries then at most 1)."""
    top = v.abs().amax(1) if v.shape[1] else v.new_zeros(v.shape[0])
    exponent = torch.frexp(top).exponent
    half = torch.div(-exponent, 2, rounding_mode="floor")
    ones = torch.ones_like(top)                  # two factors 2^half, 2^(-e - half), each representable
    return v * torch.ldexp(ones, half)[:, None] * torch.ldexp(ones, -exponent - half)[:, None], exponent


def _ldexp(v: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """v 2^exponent in two halves (torch.ldexp forms 2^exponent itself, which overflows past 2^1023 where the
    result need not: subnormal rows)."""
    half = torch.div(exponent, 2, rounding_mode="floor")
    return torch.ldexp(torch.ldexp(v, half), exponent - half)


def _wide(x: torch.Tensor) -> torch.dtype:
    """float64 where the device has it (products of float32 entries are exact there), else x's dtype."""
    return x.dtype if x.device.type == "mps" else torch.float64


def next_sine(E: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor, G: torch.Tensor, w2: float, b2: float,
              q1: torch.Tensor, q2: torch.Tensor, difference: torch.Tensor | None = None) -> torch.Tensor:
    """S' of the covariance [[q1, c], [c, q2]] = W^2 [[e1, E], [E, e2]] + b^2 from the sine G of [[e1, E], [E, e2]]
    (module docstring, layer l+1); `difference` is e1 - e2 given accurately (None: as rounded), which gives
    sqrt(T1) - sqrt(T2) = W^2 (e1 - e2) / q_max' / (sqrt(T1) + sqrt(T2))."""
    t1, t2 = _ratio(w2 * e1, q1), _ratio(w2 * e2, q2)
    sine = (t1.sqrt() * t2.sqrt()) * G
    if b2 > 0:
        low, high = torch.minimum(q1, q2), torch.maximum(q1, q2)
        r1, r2 = _ratio(w2 * e1, high).sqrt(), _ratio(w2 * e2, high).sqrt()
        apart = r1 - r2 if difference is None else _ratio(_ratio(w2 * difference, high), r1 + r2)
        cos = _ratio(_ratio(E, e1.sqrt()), e2.sqrt())       # E / sqrt(e1 e2)
        near = torch.hypot(apart, G * (2 * r1 * r2 / (1 + cos.clamp(min=0))).sqrt())
        far = (r1 * r1 + r2 * r2 - 2 * _ratio(w2 * E, high)).clamp(min=0).sqrt()
        sine = torch.hypot(sine, _ratio(b2, low).sqrt() * torch.where(E >= 0, near, far))
    return sine.clamp_(max=1.0)


def recursion(c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, sine: torch.Tensor, delta: torch.Tensor, rec,
              want_ntk: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Sigma^(L), Theta^(L)) of pairs from their layer-1 (c, q1, q2, S, delta) (`first_layer`), with the angle and
    the difference of the variances delta = q1 - q2 carried exactly (module docstring); shapes (P,)."""
    theta = c.clone() if want_ntk else None
    for step in rec.steps:
        act, w2, b2 = step.activation, float(step.W_std) ** 2, float(step.b_std) ** 2
        E, dot, G = act.sigma_both_gap(c, q1, q2, sine, delta)
        e1, e2 = act.sigma_diag(q1), act.sigma_diag(q2)
        difference = act.sigma_diag_difference(q1, q2, delta)     # e1 - e2
        c, q1, q2 = w2 * E + b2, w2 * e1 + b2, w2 * e2 + b2
        sine = next_sine(E, e1, e2, G, w2, b2, q1, q2, difference)
        delta = w2 * difference
        if want_ntk:
            theta = theta * (w2 * dot) + c                 # Theta^(l+1), Theorem 1
    return c, theta


@torch.no_grad()
def refine(X: torch.Tensor, Y: torch.Tensor, rec, rows: torch.Tensor, cols: torch.Tensor, sigma: torch.Tensor,
           theta: torch.Tensor | None, qx: torch.Tensor, qy: torch.Tensor) -> None:
    """Overwrite sigma[rows, cols] (and theta) with the accurate values of the pairs (X[rows], Y[cols]); qx, qy
    are Sigma^(1) on the diagonals of X and Y."""
    for start in range(0, len(rows), PAIRS):
        r, k = rows[start:start + PAIRS], cols[start:start + PAIRS]
        s, t = recursion(*first_layer(X, Y, r, k, float(rec.W_std) ** 2, float(rec.b_std) ** 2, qx, qy), rec,
                         theta is not None)
        sigma[r, k] = s
        if theta is not None:
            theta[r, k] = t


def widen(X: torch.Tensor, Y: torch.Tensor, rec, rows: torch.Tensor, cols: torch.Tensor, sigma: torch.Tensor,
          theta: torch.Tensor | None) -> None:
    """Overwrite sigma[rows, cols] (and theta) of a float32 (or narrower) block with the plain recursion in
    float64 on the pairs (X[rows], Y[cols]): for the activations that do not carry the gap (gelu, the quadrature
    ones), whose maps need the gap q1 + q2 - 2c of a near pair that float32 rounds away at eps q (and a chaotic
    network grows it layer by layer), float64's resolution holds it. O(P (d + L)) for P pairs:
        Sigma^(l+1) = W^2 E[sigma(u) sigma(v)] + b^2,  Theta^(l+1) = Theta^(l) W^2 E[sigma'(u) sigma'(v)] + Sigma^(l+1)
    (Theorem 1), with the diagonals q^(l+1) = W^2 E[sigma(u)^2] + b^2 of each row."""
    a, b0, wide = float(rec.W_std) ** 2 / X.shape[1], float(rec.b_std) ** 2, torch.float64
    for start in range(0, len(rows), PAIRS):
        r, k = rows[start:start + PAIRS], cols[start:start + PAIRS]
        x, y = X[r].to(wide), Y[k].to(wide)
        c, q1, q2 = a * (x * y).sum(1) + b0, a * (x * x).sum(1) + b0, a * (y * y).sum(1) + b0   # Sigma^(1)
        t = c if theta is not None else None
        for step in rec.steps:
            act, w2, b2 = step.activation, float(step.W_std) ** 2, float(step.b_std) ** 2
            E, dot = act.sigma_both(c, q1, q2)
            c, q1, q2 = w2 * E + b2, w2 * act.sigma_diag(q1) + b2, w2 * act.sigma_diag(q2) + b2
            if t is not None:
                t = t * (w2 * dot) + c
        sigma[r, k] = c.to(sigma.dtype)
        if theta is not None:
            theta[r, k] = t.to(theta.dtype)
