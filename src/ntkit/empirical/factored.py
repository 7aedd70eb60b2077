"""Layers whose output cotangents factor over the outputs: a K-fold cheaper rule, still exact.

When every path from a layer's output z[s, o] to the model's outputs treats the channels o apart (elementwise
activations, per-channel norms, pooling over positions) before one linear map to the K outputs (a classifier's
head after a global pooling; the head itself), the cotangents factor:

    g_k(x)[s, o] = dF_k(x)/dz[s, o] = D(x)[s, o] w[k, o]

so the per-sample gradient of the layer's weight (and bias, a column of ones appended to its input) is
dF_k(x)/dW[o, i] = w[k, o] h(x)[o, i] with h(x)[o, i] = sum_s D(x)[s, o] a(x)[s, i], and its share of Theta is

    Theta^l_{k k'}(x, y) = sum_o w[k, o] w[k', o] C_o(x, y),    C_o(x, y) = sum_i h(x)[o, i] h(y)[o, i],

N M O I products instead of the N M K^2 O I of the Jacobian contraction (and h costs K times less to form).
Nothing is assumed: the plan flags a layer whose cotangents factor on a probe sample, and every block checks the
factorization on its own cotangents (residual within rounding); a block where it fails keeps the input and the
per-sample gradients are formed (and contracted as the Jacobian's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import rules
from .common import contract

#: Relative residual (in units of the dtype's epsilon) below which cotangents count as factored.
ROUNDING = 64


@dataclass
class Factored:
    """One factored layer for a block of B samples: w (K, O) and h (B, O, I'), or, where the cotangents of the
    block do not factor, w and h None and the per-sample gradients (B, K, O I') in `dense`."""

    w: torch.Tensor | None
    h: torch.Tensor | None
    dense: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.w, self.h, self.dense) if t is not None)


def eligible(site: rules.Site, n_outputs: int) -> bool:
    """A linear layer or an ungrouped convolution, with K >= 2 outputs (for K = 1 nothing is saved)."""
    if n_outputs < 2 or site.kind not in ("linear", "conv"):
        return False
    return site.kind == "linear" or site.module.groups == 1


def n_params(site: rules.Site, trainable: dict[str, torch.Tensor]) -> int:
    """The numbers the site covers (its trainable weight and bias)."""
    return sum(trainable[name][rows if rows is not None else slice(None)].numel()
               for name, rows in (p for p in (site.weight, site.bias) if p is not None))


def concatenate(parts: tuple[Factored, ...]) -> Factored:
    """The features of consecutive chunks of samples as one block (factored where every chunk factors with the
    same w up to each channel's scale, else in the dense form)."""
    if all(p.w is not None for p in parts):
        w = parts[0].w.clone()  # each channel's w from the first chunk where it is not zero
        for p in parts[1:]:
            zero = (w * w).sum(0) == 0
            w[:, zero] = p.w[:, zero]
        ratios = [_ratio(w, p.w) for p in parts]
        if all(c is not None for c in ratios):
            return Factored(w, torch.cat([p.h * c[None, :, None] for p, c in zip(parts, ratios, strict=True)]))
    return Factored(None, None, torch.cat([_dense(p) for p in parts]))


def _ratio(wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor | None:
    """c (O,) with wy[:, o] = c_o wx[:, o] within rounding where wx[:, o] is not zero (c_o = 0 where it is:
    there h_x[o] is zero too), or None."""
    xx = (wx * wx).sum(0)
    c = (wx * wy).sum(0) / torch.where(xx > 0, xx, torch.ones_like(xx))
    off = torch.linalg.vector_norm((wy - c * wx)[:, xx > 0])
    return c if bool(off <= ROUNDING * torch.finfo(wx.dtype).eps * torch.linalg.vector_norm(wy)) else None


def _canonical(site: rules.Site, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input with a column of ones for the bias (B, S, I') and the cotangents (B, K, S, O), covering the
    site's trainable weight and bias in that order."""
    b, k = g.shape[:2]
    gc = rules.cotangent(site, g)
    gc = gc.reshape(b, k, gc.shape[2], gc.shape[4])
    columns = []
    if site.weight is not None:
        ac = rules.weight_input(site, a)
        columns.append(ac.reshape(b, ac.shape[1], ac.shape[3]))
    if site.bias is not None:
        columns.append(gc.new_ones(b, gc.shape[2], 1))
    return (torch.cat(columns, 2) if len(columns) > 1 else columns[0]), gc


def factor(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(D (B, S, O), w (K, O)) with g[b, k, s, o] = D[b, s, o] w[k, o] within rounding, or None.

    w[:, o] is g[b, :, s, o] at the (b, s) where it is largest (zero for a channel that is zero throughout).
    """
    b, k, s, o = g.shape
    norms = (g * g).sum(1).reshape(b * s, o)
    best = norms.argmax(0)
    w = g.permute(1, 0, 2, 3).reshape(k, b * s, o)[:, best, torch.arange(o, device=g.device)]
    ww = (w * w).sum(0)
    D = torch.einsum("bkso,ko->bso", g, w) / torch.where(ww > 0, ww, torch.ones_like(ww))
    residual = torch.linalg.vector_norm(g - D[:, None] * w[None, :, None, :])
    tol = ROUNDING * torch.finfo(g.dtype).eps * torch.linalg.vector_norm(g)
    return (D, w) if bool(residual <= tol) else None


def features(site: rules.Site, a: torch.Tensor, g: torch.Tensor) -> Factored:
    """The block's factored form: h(x)[o, i] = sum_s D(x)[s, o] a(x)[s, i] and w, or the fallback."""
    ac, gc = _canonical(site, a, g)
    found = factor(gc)
    if found is None:
        b, k, s, o = gc.shape
        return Factored(None, None, torch.bmm(gc.permute(0, 1, 3, 2).reshape(b, k * o, s), ac).reshape(b, k, -1))
    D, w = found
    return Factored(w, torch.bmm(D.transpose(1, 2), ac))


def _dense(f: Factored) -> torch.Tensor:
    """Per-sample gradients (B, K, O I'), in the same layout for both forms."""
    if f.w is None:
        return f.dense
    return (f.w[None, :, :, None] * f.h[:, None]).flatten(2)


def tile(fx: Factored, fy: Factored, mode: str, n_outputs: int) -> torch.Tensor:
    """The layer's share of Theta for a pair of blocks (the module docstring's sum), in the layout of `mode`."""
    if fx.w is None or fy.w is None:
        jx = _dense(fx)
        return contract(jx, jx if fx is fy else _dense(fy), mode, n_outputs)
    # w_y[:, o] = c_o w_x[:, o] (both are g[:, o] at some sample and position)
    wx = fx.w
    c = torch.ones_like(wx[0]) if fx is fy else _ratio(wx, fy.w)
    if c is None:
        return contract(_dense(fx), _dense(fy), mode, n_outputs)
    hx = fx.h.transpose(0, 1)  # (O, Bx, I')
    C = torch.bmm(hx, hx.transpose(1, 2) if fx is fy else fy.h.permute(1, 2, 0))  # (O, Bx, By)
    o, bx, by = C.shape
    C = (C * c[:, None, None]).reshape(o, bx * by).T
    k = wx.shape[0]
    if mode == "full":
        return (C @ (wx[:, None, :] * wx[None, :, :]).reshape(k * k, o).T).reshape(bx, by, k, k)
    if mode == "trace":
        return (C @ (wx * wx).sum(0)).reshape(bx, by) / n_outputs
    return (C @ (wx * wx).T).reshape(bx, by, -1)
