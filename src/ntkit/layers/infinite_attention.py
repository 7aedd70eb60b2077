"""What `infinite` says of torch's attention modules.

`nn.MultiheadAttention` (and `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer`, built on it) scales the
dot products of queries and keys by 1 / sqrt(d) with independent query and key weights: in the infinite-width limit
the scores stay random Gaussians, and the softmax of them has no closed-form kernel (neural-tangents refuses the
same case). Its infinite-width counterpart with a closed form is `SelfAttention(linear_scaling=True)` (keys and queries
tied, scaled by 1 / d), which `infinite` does not substitute silently: the refusal names it.
"""

from __future__ import annotations

from torch import nn

_ATTENTION = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.Transformer,
              nn.TransformerEncoder, nn.TransformerDecoder)


def attention_refusal(module: nn.Module, where: str) -> str | None:
    """The message refusing a torch attention module at `where`, or None for any other module."""
    if not isinstance(module, _ATTENTION):
        return None
    return (f"infinite: {where} uses torch's scaled dot-product attention (1 / sqrt(d), independent query and key "
            f"weights), whose softmax has no closed-form infinite-width kernel; describe the network with "
            f"ntkit.layers.SelfAttention(linear_scaling=True) (keys and queries tied, scaled by 1 / d; Hron et al. "
            f"2020), TokenLinear for the position-wise layers, Residual and LayerNorm")
