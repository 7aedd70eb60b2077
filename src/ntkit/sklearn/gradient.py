"""The kernels of a fully-connected chain with their derivatives in the hyperparameters, carried through the recursion.

For the chain Linear, sigma_1, Linear, ..., sigma_{L-1}, Linear (the MLP, with one W_std and b_std per weight layer
or shared) the derivatives d Sigma^(l) / dp and d Theta^(l) / dp of every hyperparameter p (W_std or b_std of one
layer, or of all) are carried alongside Sigma^(l) and Theta^(l) through the recursion (Proposition 1, Theorem 1),
as log-derivatives (p d/dp, what scikit-learn's kernels return):

    Sigma^(1) = W_1^2 x.y / n0 + b_1^2             d Sigma^(1) = 2 [p = W_1] (Sigma^(1) - b_1^2) + 2 [p = b_1] b_1^2
    Sigma^(l+1) = W^2 F + b^2                      d Sigma^(l+1) = W^2 dF + 2 [p = W] W^2 F + 2 [p = b] b^2
    SigmaDot^(l+1) = W^2 G                         d SigmaDot^(l+1) = W^2 dG + 2 [p = W] W^2 G
    Theta^(l+1) = Theta^(l) SigmaDot^(l+1) + Sigma^(l+1)
    d Theta^(l+1) = d Theta^(l) SigmaDot^(l+1) + Theta^(l) d SigmaDot^(l+1) + d Sigma^(l+1)

with F, G the layer's Sigma and SigmaDot maps of [[q1, c], [c, q2]] = Sigma^(l) and dF, dG their tangents
(`Nonlinearity.tangent`: closed forms for the ReLU family and erf, the maps' partials by autograd element by
element for the others), which take the tangents of the diagonals Sigma^(l)(x, x): those are carried
the same way on each example alone, exactly (no angle). Each hyperparameter costs a few passes over a tile per
layer, instead of reverse-mode autograd over the whole Gram. A symmetric Gram's diagonal gets the exact diagonal
values and derivatives; pairs of identical examples too; pairs whose layer-1 correlation is within
`coincident.NEAR` of +-1 get their values recomputed without cancellation (`ntkit.coincident`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import coincident, gram, memory
from ..activations import Nonlinearity, Quadrature
from ..kernels import Map, Recursion, sigma_diagonals
from ..layers import Linear, Sequential
from ..mlp import MLP


@dataclass(frozen=True)
class Chain:
    """A fully-connected chain: (W_std, b_std) of each weight layer (L, floats) and the nonlinearity between each
    two consecutive ones (L - 1)."""

    scales: tuple[tuple[float, float], ...]
    activations: tuple[Nonlinearity, ...]

    @property
    def recursion(self) -> Recursion:
        """The chain as `ntkit.kernels.Recursion` (for its range-checked diagonals and `coincident.refine`)."""
        (W, b), rest = self.scales[0], self.scales[1:]
        return Recursion.chain(W, b, [Map(act, w, c) for act, (w, c) in zip(self.activations, rest, strict=True)])


def fc_chain(arch: Any) -> Chain | None:
    """The `Chain` of an MLP or of a Sequential of Linear layers (NTK parametrization) alternating with elementwise
    nonlinearities, Linear first and last; else None (the caller differentiates by autograd). Nonlinearities by
    quadrature are left to autograd too: their maps' partials element by element would cost several times the
    reverse pass over the Gram (they share each row's quadrature nodes across the row)."""
    if isinstance(arch, MLP):
        layers = arch.layers.layers
    elif isinstance(arch, Sequential):
        layers = arch.layers
    else:
        return None
    dense, acts = layers[::2], layers[1::2]
    if len(layers) % 2 == 0 or not all(isinstance(layer, Linear) and layer.parametrization == "ntk"
                                       and layer.dense_scales is not None for layer in dense):
        return None
    if not all(layer.elementwise is not None and not isinstance(layer.elementwise, Quadrature) for layer in acts):
        return None
    scales = tuple((float(layer.W_std), float(layer.b_std)) for layer in dense)
    return Chain(scales, tuple(layer.elementwise for layer in acts))


def kernel_and_gradient(X: torch.Tensor, chain: Chain, get: str, W_columns: np.ndarray, b_columns: np.ndarray,
                        tile: int | None = None, desc: str = "kernel gradient") -> tuple[np.ndarray, np.ndarray]:
    """K(X, X) (N, N) and its log-derivatives (P, N, N), float64 NumPy arrays, exactly symmetric.

    X: (N, n0) float64. get: "ntk" (Theta^(L)) or "nngp" (Sigma^(L)). W_columns, b_columns: (P, L) arrays of 0 and 1,
    row j saying which layers' W_std (b_std) the j-th derivative moves: derivative j is
    sum_l W_columns[j, l] W_l dK/dW_l + b_columns[j, l] b_l dK/db_l (one row of ones: a shared W_std).
    Up to `tile` examples (default `gram.default_tile`) in one block; more tile by tile (`gram.fill`), so memory
    stays bounded.
    """
    want_ntk = get == "ntk"
    coef = _coefficients(W_columns, b_columns, len(chain.scales))
    n, P = X.shape[0], coef[0].shape[0]
    edge = gram.default_tile(X.device) if tile is None else tile
    with torch.no_grad():
        fn = _tile_fn(X, chain, coef, _diagonals(X, chain, coef, want_ntk), want_ntk)
        if n <= edge:       # one block: its tensors are the result
            if X.device.type == "cpu":
                memory.reuse_freed_memory()    # its temporaries reuse the last call's memory (as tiles do)
            K, gradient = fn(slice(0, n), slice(0, n))
            if not all(act.closed_form_tangents for act in chain.activations):   # symmetric only to rounding: mirrored
                K, gradient = K.triu() + K.triu(1).T, gradient.triu() + gradient.triu(1).transpose(1, 2)
            return K.numpy(), gradient.numpy()
        K, gradient = np.empty((n, n)), np.empty((P, n, n))
        tiles = gram.KernelTiles(lambda rows, cols: _listed(fn(rows, cols)), n, n, (get,) * (P + 1), True,
                                 torch.float64, X.device, edge)
        gram.fill(tiles, [K, *gradient], desc=f"{get} {desc}")
    return K, gradient


def _listed(pair: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    return [pair[0], *pair[1]]


def _coefficients(W_columns: np.ndarray, b_columns: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    W_columns, b_columns = np.asarray(W_columns, dtype=np.float64), np.asarray(b_columns, dtype=np.float64)
    if W_columns.shape != b_columns.shape or W_columns.ndim != 2 or W_columns.shape[1] != depth:
        raise ValueError(f"W_columns and b_columns must both have shape (P, {depth}), got {W_columns.shape} and "
                         f"{b_columns.shape}")
    return W_columns, b_columns


def _first(dot: torch.Tensor, w2: float, b2: float, n0: int, coef, P: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigma^(1) from x.y (any shape S) and its tangents (P, *S)."""
    W_col, b_col = coef
    base = dot * (w2 / n0)
    sigma = base + b2
    tangents = dot.new_empty((P, *dot.shape))
    for j in range(P):
        if W_col[j, 0]:
            torch.mul(base, 2 * W_col[j, 0], out=tangents[j])
            if b_col[j, 0]:
                tangents[j].add_(2 * b_col[j, 0] * b2)
        else:
            tangents[j].fill_(2 * b_col[j, 0] * b2)
    return sigma, tangents


def _add_scales(tangents: torch.Tensor, value: torch.Tensor, column: np.ndarray, w2: float,
                constant: np.ndarray | None = None, b2: float = 0.0) -> torch.Tensor:
    """tangents (P, ...) * w2, plus 2 [p = W] w2 value and 2 [p = b] b2 for each hyperparameter p, in place."""
    tangents.mul_(w2)
    for j in range(tangents.shape[0]):
        if column[j]:
            tangents[j].add_(value, alpha=2 * w2 * column[j])
        if constant is not None and constant[j]:
            tangents[j].add_(2 * b2 * constant[j])
    return tangents


def _diagonals(X: torch.Tensor, chain: Chain, coef, want_ntk: bool):
    """Per layer the diagonals Sigma^(l)(x, x) (N,) (range-checked, `kernels.sigma_diagonals`) and their
    tangents (P, N); and the final exact diagonal and tangents of the kernel asked for."""
    W_col, b_col = coef
    P = W_col.shape[0]
    qs = sigma_diagonals(X, chain.recursion, want_ntk)
    w2, b2 = chain.scales[0][0] ** 2, chain.scales[0][1] ** 2
    _, dq = _first((X * X).sum(1), w2, b2, X.shape[1], coef, P)
    dqs, theta, dtheta = [dq], qs[0], dq
    for layer, act in enumerate(chain.activations, start=1):
        w2, b2 = chain.scales[layer][0] ** 2, chain.scales[layer][1] ** 2
        F, G, dF, dG = act.tangent_diag(qs[layer - 1], dqs[-1])
        dqs.append(_add_scales(dF, F, W_col[:, layer], w2, b_col[:, layer], b2))
        if want_ntk:
            dot, ddot = w2 * G, _add_scales(dG, G, W_col[:, layer], w2)
            dtheta = dtheta * dot + theta * ddot + dqs[-1]            # Theorem 1, differentiated
            theta = theta * dot + qs[layer]
    exact = (theta, dtheta) if want_ntk else (qs[-1], dqs[-1])
    return qs, dqs, exact


def _block(Xr: torch.Tensor, Xc: torch.Tensor, chain: Chain, coef, qx, dqx, qy, dqy, want_ntk: bool,
           symmetric: bool):
    """(Sigma, Theta, dSigma, dTheta, Sigma^(1)) on one block of pairs (Theta, dTheta None unless `want_ntk`).
    `symmetric`: Xr is Xc; x.y is made exactly symmetric, and every later step keeps it so (each operation is
    symmetric in the rows' and columns' roles: products and sums of a row's and a column's values)."""
    W_col, b_col = coef
    P = W_col.shape[0]
    w2, b2 = chain.scales[0][0] ** 2, chain.scales[0][1] ** 2
    dot = Xr @ Xc.T
    if symmetric and not torch.equal(dot, dot.T):
        dot = dot.triu() + dot.triu(1).T
    sigma, dsigma = _first(dot, w2, b2, Xr.shape[1], coef, P)
    first = sigma
    theta, dtheta = (sigma, dsigma.clone()) if want_ntk else (None, None)
    for layer, act in enumerate(chain.activations, start=1):
        w2, b2 = chain.scales[layer][0] ** 2, chain.scales[layer][1] ** 2
        q1, q2 = qx[layer - 1][:, None], qy[layer - 1][None, :]
        F, dot, dsigma, dG = act.tangent(sigma, q1, q2, dsigma, dqx[layer - 1][:, :, None],
                                     dqy[layer - 1][:, None, :], want_ntk, factor=w2)    # W^2 (F, G, dF, dG)
        for j in range(P):      # the layer's own scales: 2 [p = W] W^2 F + 2 [p = b] b^2
            if W_col[j, layer]:
                dsigma[j].add_(F, alpha=2 * W_col[j, layer])
            if b_col[j, layer]:
                dsigma[j].add_(2 * b2 * b_col[j, layer])
        sigma = F.add_(b2)
        if want_ntk:            # d Theta' = d Theta SigmaDot' + Theta (W^2 dG + 2 [p = W] SigmaDot') + d Sigma'
            dtheta = dtheta.mul_(dot).add_(dsigma).addcmul_(theta, dG)
            for j in range(P):
                if W_col[j, layer]:
                    dtheta[j].addcmul_(theta, dot, value=2 * W_col[j, layer])
            theta = torch.addcmul(sigma, theta, dot)
    return sigma, theta, dsigma, dtheta, first


def _tile_fn(X: torch.Tensor, chain: Chain, coef, diagonals, want_ntk: bool):
    """The tile function of `kernel_and_gradient`: (rows, cols) -> [K, dK_1, ..., dK_P]."""
    qs, dqs, (exact, dexact) = diagonals
    rec = chain.recursion
    refinable = len(chain.scales) > 1 and all(coincident.supports(act) for act in chain.activations)
    fingerprints = coincident.fingerprints(X)
    tiny = torch.finfo(X.dtype).tiny
    root = torch.rsqrt(qs[0].clamp(min=tiny))

    def fn(rows: gram.Index, cols: gram.Index) -> tuple[torch.Tensor, torch.Tensor]:
        on_diagonal = isinstance(rows, slice) and rows == cols
        sigma, theta, dsigma, dtheta, first = _block(X[rows], X[cols], chain, coef, [q[rows] for q in qs],
                                                     [d[:, rows] for d in dqs], [q[cols] for q in qs],
                                                     [d[:, cols] for d in dqs], want_ntk, on_diagonal)
        if refinable:                     # nearly coincident pairs: their values again, without cancellation
            near = coincident.near_mask(first, root[rows], root[cols])
            i, j = torch.nonzero(near.triu_(1) if on_diagonal else near, as_tuple=True)
            if len(i):
                coincident.refine(X[rows], X[cols], rec, i, j, sigma, theta, qs[0][rows], qs[0][cols])
                for values in (sigma, theta) if on_diagonal else ():
                    if values is not None:          # the mirror image of each pair: the same value
                        values[j, i] = values[i, j]
        K, dK = (theta, dtheta) if want_ntk else (sigma, dsigma)
        if on_diagonal:                   # the exact diagonal: no rounding noise in the angle
            K.diagonal().copy_(exact[rows])
            dK.diagonal(dim1=1, dim2=2).copy_(dexact[:, rows])
        i, j = coincident.identical_pairs(X, X, rows, cols, fingerprints, fingerprints, skip_diagonal=on_diagonal)
        if len(i):                        # a duplicate example: the diagonal's values
            index = torch.arange(X.shape[0])[rows][i]
            K[i, j] = exact[index]
            dK[:, i, j] = dexact[:, index]
        return K, dK

    return fn
