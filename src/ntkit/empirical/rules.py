"""Structured rules: one layer's share of Theta from its inputs and output cotangents, no Jacobian.

Novak, Sohl-Dickstein and Schoenholz 2022 ("Fast Finite Width Neural Tangent Kernel"). A layer whose
output z = A(a; w) is linear in its parameters w contributes to Theta = sum_p dF/dtheta_p (x) dF/dtheta_p

    Theta^l_{k k'}(x, y) = sum_p (g_k(x) . dz(x)/dw_p) (g_k'(y) . dz(y)/dw_p),    g_k = dF_k/dz

so it needs only the layer's input a and the cotangents g_k, which one backward pass per output gives.
For a weight W shared across positions s (a sequence, a convolution's patches, groups G),
z[s, g] = W_g a[s, g] + b_g, and two orders of the same sum exist:

- "jacobian" order: form the per-sample gradient dF_k/dW_g = sum_s g_k[s, g] a[s, g]^T (B, K, G O I) and
  contract it like a Jacobian: cost N K S G O I to build, N M K^2 G O I to contract (K^2 in full mode);
- "positions" order: Theta^l = sum_{s, t, g} (a_x[s, g] . a_y[t, g]) (g_k(x)[s, g] . g_k'(y)[t, g]):
  cost N M S T G (I + K^2 O), never a parameter-sized object (wins for short sequences, wide layers).

`Site.costs` estimates both from the shapes and the cheaper one is taken, per layer.
Embeddings (z[s] = W[id_s]) compare ids instead of inputs; norms (z = xhat gamma + beta) and biases
take the jacobian order, their per-sample gradients being as small as their parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

#: Module types with a rule (nn.MultiheadAttention's projections are sites of their own, see attention.py).
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Site:
    """One use of a layer with a rule: which parameters it covers and how it maps its input.

    key: unique name (the module's qualified name, plus ".q" ... for attention's projections).
    kind: "linear", "conv", "embedding" or "norm".
    weight, bias: (parameter name, rows of it this site covers or None for all), or None.
    module: the torch module (its settings: stride, eps, padding_idx, ...).
    batch_in, batch_out: where the batch is in the captured input and the output (filled by the plan).
    order: "jacobian" or "positions" for the weight (filled by the plan from `costs`).
    """

    key: str
    kind: str
    module: nn.Module
    weight: tuple[str, slice | None] | None
    bias: tuple[str, slice | None] | None
    batch_in: int = 0
    batch_out: int = 0
    out_shape: tuple[int, ...] = ()
    order: str = "jacobian"
    shapes: dict = field(default_factory=dict)

    @property
    def positions(self) -> bool:
        """Whether the weight takes the positions order (norms always take the jacobian order)."""
        return self.order == "positions" and self.weight is not None and self.kind != "norm"

    def param_names(self) -> list[str]:
        return [p[0] for p in (self.weight, self.bias) if p is not None]


# ------------------------------------------------------------------------- canonical forms
def patches(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """The receptive fields of a convolution: a (B, C, *spatial) -> (B, S, G, C/G * prod(kernel)),
    ordered like the weight (O, C/G, *kernel), S the output positions (row-major)."""
    d = a.ndim - 2
    if module.padding_mode != "zeros" and any(module._reversed_padding_repeated_twice):
        a = F.pad(a, module._reversed_padding_repeated_twice, mode=module.padding_mode)
    elif any(module._reversed_padding_repeated_twice):
        a = F.pad(a, module._reversed_padding_repeated_twice)
    b, c = a.shape[:2]
    if d == 2:  # torch's im2col (B, C/G k1 k2 per group, S), as a (B, S, G, I) view
        cols = F.unfold(a, module.kernel_size, dilation=module.dilation, stride=module.stride)
        return cols.reshape(b, module.groups, -1, cols.shape[2]).permute(0, 3, 1, 2)
    for i in range(d):
        k, dil, stride = module.kernel_size[i], module.dilation[i], module.stride[i]
        a = a.unfold(2 + i, dil * (k - 1) + 1, stride)
        if dil > 1:
            a = a[..., ::dil]
    # a: (B, C, L1..Ld, k1..kd) -> (B, L1..Ld, C, k1..kd)
    perm = [0, *range(2, 2 + d), 1, *range(2 + d, 2 + 2 * d)]
    a = a.permute(perm)
    s = math.prod(a.shape[1:1 + d])
    return a.reshape(b, s, module.groups, -1)


def weight_input(site: Site, a: torch.Tensor) -> torch.Tensor:
    """The weight's input in canonical form (B, S, G, I) (for an embedding: the ids (B, S))."""
    if site.kind == "conv":
        return patches(site.module, a)
    if site.kind == "embedding":
        return a.reshape(a.shape[0], -1)
    return a.reshape(a.shape[0], -1, 1, a.shape[-1])  # linear on (B, ..., I)


def cotangent(site: Site, g: torch.Tensor) -> torch.Tensor:
    """Output cotangents (B, K, *out) in canonical form (B, K, S, G, O)."""
    b, k = g.shape[:2]
    if site.kind == "conv":
        groups = site.module.groups
        o = g.shape[2]
        g = g.reshape(b, k, groups, o // groups, -1)  # (B, K, G, O/G, S)
        return g.permute(0, 1, 4, 2, 3)
    return g.reshape(b, k, -1, 1, g.shape[-1])


def normalized(site: Site, a: torch.Tensor) -> torch.Tensor:
    """xhat, the normalized input of an affine norm (its output is xhat * gamma + beta)."""
    m = site.module
    if isinstance(m, nn.LayerNorm):
        dims = tuple(range(a.ndim - len(m.normalized_shape), a.ndim))
        mean = a.mean(dims, keepdim=True)
        var = a.var(dims, unbiased=False, keepdim=True)
        return (a - mean) / torch.sqrt(var + m.eps)
    shape = (1, -1) + (1,) * (a.ndim - 2)  # BatchNorm in eval mode: the running statistics
    values = site.shapes["running"]
    return (a - values[0].reshape(shape)) / torch.sqrt(values[1].reshape(shape) + m.eps)


# ------------------------------------------------------------------------------ the rules
def prepare(site: Site, a: torch.Tensor) -> torch.Tensor:
    """What the weight's rule reads of the input: xhat for a norm, else `weight_input` (patches, ids)."""
    return normalized(site, a) if site.kind == "norm" else weight_input(site, a)


def per_sample_grads(site: Site, a: torch.Tensor, g: torch.Tensor, with_weight: bool,
                     prepared: torch.Tensor | None = None) -> list[torch.Tensor]:
    """dF_k/dw for the site's trainable parameters, each (B, K, P_w), P_w the numbers it covers.

    a: the captured input (B, ...), g: the output cotangents (B, K, *out); with_weight False leaves
    the weight out (it takes the positions order); prepared: `prepare(site, a)` when already computed.
    """
    ready = prepare(site, a) if prepared is None and with_weight and site.weight is not None else prepared
    b, k = g.shape[:2]
    out: list[torch.Tensor] = []
    if site.kind == "norm":
        if isinstance(site.module, nn.LayerNorm):
            flat_g = g.reshape(b, k, -1, math.prod(site.module.normalized_shape))
            if with_weight and site.weight is not None:
                xhat = ready.reshape(b, 1, -1, flat_g.shape[-1])
                out.append((flat_g * xhat).sum(2))
            if site.bias is not None:
                out.append(flat_g.sum(2))
            return out
        flat_g = g.reshape(b, k, g.shape[2], -1)  # (B, K, C, spatial)
        if with_weight and site.weight is not None:
            xhat = ready.reshape(b, 1, g.shape[2], -1)
            out.append((flat_g * xhat).sum(3))
        if site.bias is not None:
            out.append(flat_g.sum(3))
        return out
    gc = cotangent(site, g) if site.kind != "embedding" else g.reshape(b, k, -1, g.shape[-1])
    if with_weight and site.weight is not None:
        if site.kind == "embedding":
            ids = ready
            num, dim = site.module.weight.shape
            gm = _mask_padding(site, ids, gc)
            dense = gc.new_zeros(b, k, num, dim)
            index = ids[:, None, :, None].expand(b, k, ids.shape[1], dim)
            out.append(dense.scatter_add_(2, index, gm).reshape(b, k, -1))
        elif site.kind == "conv" and site.module.groups == 1:  # (B, K O, S) @ (B, S, I): one batched product
            ac = ready.reshape(b, ready.shape[1], -1)
            out.append(torch.bmm(g.reshape(b, k * g.shape[2], -1), ac).reshape(b, k, -1))
        else:
            out.append(torch.einsum("bksgo,bsgi->bkgoi", gc, ready).reshape(b, k, -1))
    if site.bias is not None and site.kind != "embedding":
        out.append(gc.sum(2).reshape(b, k, -1))
    return out


def _mask_padding(site: Site, ids: torch.Tensor, gc: torch.Tensor) -> torch.Tensor:
    """Cotangents with the positions of the padding index zeroed (its row gets no gradient)."""
    pad = site.module.padding_idx
    if pad is None:
        return gc
    return gc * (ids != pad)[:, None, :, None].to(gc.dtype)


@dataclass
class PositionFeatures:
    """A weight in the positions order: its canonical input (B, S, G, I) or ids (B, S) and cotangents."""

    site: Site
    a: torch.Tensor
    g: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.a.numel() * self.a.element_size() + self.g.numel() * self.g.element_size()


def position_features(site: Site, a: torch.Tensor, g: torch.Tensor) -> PositionFeatures:
    b, k = g.shape[:2]
    if site.kind == "embedding":
        ids = weight_input(site, a)
        gc = _mask_padding(site, ids, g.reshape(b, k, -1, g.shape[-1]))
        return PositionFeatures(site, ids, gc)
    return PositionFeatures(site, weight_input(site, a), cotangent(site, g))


def position_tile(fx: PositionFeatures, fy: PositionFeatures, mode: str, n_outputs: int) -> torch.Tensor:
    """sum_{s, t, g} (a_x[s, g] . a_y[t, g]) (g_k(x)[s, g] . g_k'(y)[t, g]) in the layout of `mode`."""
    if fx.site.kind == "embedding":
        same = (fx.a[:, None, :, None] == fy.a[None, :, None, :]).to(fx.g.dtype)  # (X, Y, S, T)
        if mode == "full":
            gg = torch.einsum("xksd,yltd->xyklst", fx.g, fy.g)
            return torch.einsum("xyklst,xyst->xykl", gg, same)
        gg = torch.einsum("xksd,yktd->xykst", fx.g, fy.g)
        kernel = torch.einsum("xykst,xyst->xyk", gg, same)
        return kernel.sum(-1) / n_outputs if mode == "trace" else kernel
    aa = torch.einsum("xsgi,ytgi->xystg", fx.a, fy.a)
    if mode == "full":
        gg = torch.einsum("xksgo,yltgo->xystgkl", fx.g, fy.g)
        return torch.einsum("xystgkl,xystg->xykl", gg, aa)
    if mode == "trace":
        gg = torch.einsum("xksgo,yktgo->xystg", fx.g, fy.g)
        return (gg * aa).sum((2, 3, 4)) / n_outputs
    gg = torch.einsum("xksgo,yktgo->xystgk", fx.g, fy.g)
    return torch.einsum("xystgk,xystg->xyk", gg, aa)


def costs(site: Site, n: int, m: int, k: int, mode: str) -> dict[str, float]:
    """Floating-point work of the two orders for the site's weight (the module docstring's estimates)."""
    kk = k * k if mode == "full" else k
    s, groups, i, o = (site.shapes[key] for key in ("S", "G", "I", "O"))
    if site.kind == "embedding":
        num, dim = site.module.weight.shape
        return {"jacobian": 2.0 * (n + m) * k * s * dim + 2.0 * n * m * kk * num * dim,
                "positions": n * m * s * s * (1.0 + 2.0 * dim * kk)}
    return {"jacobian": 2.0 * (n + m) * k * s * groups * o * i + 2.0 * n * m * kk * groups * o * i,
            "positions": 2.0 * n * m * s * s * groups * (i + o * kk + kk)}


def position_pair_bytes(site: Site, k: int, mode: str, itemsize: int) -> float:
    """The largest temporary of `position_tile` per pair of samples."""
    kk = k * k if mode == "full" else k
    return 2.0 * site.shapes["S"] ** 2 * site.shapes["G"] * (kk + 1) * itemsize
