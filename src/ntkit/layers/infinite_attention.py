"""What `infinite` says of torch's attention: a refusal that names the module, what has no infinite-width kernel, and
what can be written instead.

`nn.MultiheadAttention` (and `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer` / `nn.Transformer`, built on
it) computes softmax((x W_Q)(x W_K)^T / sqrt(d)) (x W_V) with independent query and key weights. As the widths grow the
scores converge to Gaussians that stay random (a central limit in the d key channels), so the kernel is an expectation
of the softmax of Gaussian scores over L x L positions: an integral with no closed form (Hron et al. 2020, Section 3;
neural-tangents' GlobalSelfAttention refuses linear_scaling=False with a softmax too). torch's module has no
mechanism without the softmax, and at a sequence of one position (softmax of one score) it is two Linear layers.

The closed-form counterparts are different networks, not this module's limit:
`SelfAttention(linear_scaling=True)` ties the key and query weights and scales by 1 / d, so the scores converge to a
deterministic function of the input kernel; `SelfAttention(attention_mechanism="identity", linear_scaling=False)`
has no softmax. `infinite` never substitutes them silently.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

_ATTENTION = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.Transformer,
              nn.TransformerEncoder, nn.TransformerDecoder)

#: functions and methods of a traced model that compute attention by hand: a product of two computed values or a
#: softmax over positions
ATTENTION_FUNCTIONS = {F.scaled_dot_product_attention: "scaled_dot_product_attention", F.softmax: "softmax",
                       torch.softmax: "softmax", "softmax": "softmax", torch.matmul: "matmul", operator.matmul: "@",
                       torch.bmm: "bmm", "matmul": "matmul", "bmm": "bmm", torch.einsum: "einsum"}

_WHY = ("softmax((x W_Q)(x W_K)^T / sqrt(d)) with independent query and key weights: as the widths grow its scores "
        "stay random Gaussians, and the kernel of their softmax is an integral with no closed form (neural-tangents "
        "refuses this case too), so this network has no exact infinite-width kernel here")
_INSTEAD = ("ntkit.layers.SelfAttention(linear_scaling=True) (key and query weights tied, scores scaled by 1 / d: "
            "Hron et al. 2020) or SelfAttention(attention_mechanism='identity', linear_scaling=False) (no softmax) "
            "have exact kernels, but they are DIFFERENT networks, not the limit of this one: write the model with "
            "them (TokenLinear for the position-wise Linear layers, Residual, LayerNorm) and train that network if "
            "it is the one you want")


def attention_refusal(module: nn.Module, where: str) -> str | None:
    """The message refusing a torch attention module at `where`, or None for any other module."""
    if not isinstance(module, _ATTENTION):
        return None
    parts = ""
    if isinstance(module, nn.TransformerEncoderLayer):
        parts = ("; its other parts map (linear1 / linear2 as TokenLinear, the activation, dropout as the identity, "
                 "norm1 / norm2 as LayerNorm()), a block of Residual(SelfAttention(...)), LayerNorm(), "
                 "Residual(TokenLinear(), ReLU(), TokenLinear()), LayerNorm()")
    return f"infinite: {where} is torch's scaled dot-product attention, {_WHY}. {_INSTEAD}{parts}"


def traced_attention_refusal(name: str, target, computed: int) -> str | None:
    """The message refusing a node of a traced model that computes attention by hand (a softmax,
    scaled_dot_product_attention, or a matrix product of `computed` >= 2 values computed from the input), or None
    for any other node."""
    kind = ATTENTION_FUNCTIONS.get(target) if isinstance(target, str) or callable(target) else None
    if kind is None or (kind in ("matmul", "@", "bmm", "einsum") and computed < 2):
        return None
    return (f"infinite: cannot translate {name}: {kind} has no infinite-width counterpart here. If it computes "
            f"attention by hand: scaled dot-product attention is {_WHY}. {_INSTEAD}")
