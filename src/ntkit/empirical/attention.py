"""nn.MultiheadAttention written out, so that its four projections are layers the structured rules can see.

torch computes attention in one functional call (or a fused kernel), so neither the inputs of the q, k, v
and output projections nor their cotangents are visible to hooks. `plain_forward` is the same computation,

    q = query W_q^T + b_q,  k = key W_k^T + b_k,  v = value W_v^T + b_v,
    o = softmax(q k^T / sqrt(d) + mask) v  (per head),  out = o W_o^T + b_o,

with each projection's input handed to `Injector.capture` and a zero `Injector.shift` added to each
projection's output (the output cotangents are the derivatives with respect to those shifts). It is set
on the module only while the structured path runs (`patched`), and used only for what it supports
(same q/k/v width, no bias_k/bias_v, no add_zero_attn, 3-D inputs, 2-D or no attn_mask); anything else
runs torch's own forward, and the plan's self-check then hands the module's parameters to the Jacobian path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

import torch
from torch import nn

PROJECTIONS = ("q", "k", "v", "out")


def supported(module: nn.MultiheadAttention) -> bool:
    return bool(module._qkv_same_embed_dim and module.bias_k is None and not module.add_zero_attn
                and module.in_proj_weight is not None)


def _mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, is_causal: bool,
          shape: tuple[int, int, int, int], like: torch.Tensor) -> torch.Tensor | None:
    """An additive (B or 1, 1, L, S) mask from torch's masks (True means: do not attend)."""
    _, _, length, source = shape
    total = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(length, source, dtype=torch.bool, device=like.device).triu(1)
    for mask, view in ((attn_mask, (1, 1, length, source)), (key_padding_mask, (-1, 1, 1, source))):
        if mask is None:
            continue
        additive = torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(mask, -math.inf) \
            if mask.dtype == torch.bool else mask.to(like.dtype)
        additive = additive.reshape(view)
        total = additive if total is None else total + additive
    return total


def plain_forward(self: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                  attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                  is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """nn.MultiheadAttention.forward with its projections exposed to the module's injector."""
    injector = self._ntkit_injector
    if query.ndim != 3 or (attn_mask is not None and attn_mask.ndim != 2):
        return nn.MultiheadAttention.forward(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                                             average_attn_weights, is_causal)
    if not self.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    e, heads = self.embed_dim, self.num_heads
    weights = self.in_proj_weight.chunk(3)
    biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
    name = self._ntkit_name
    projected = []
    for slot, x, w, b in zip("qkv", (query, key, value), weights, biases, strict=True):
        injector.capture(f"{name}.{slot}", x)
        z = torch.nn.functional.linear(x, w, b)
        projected.append(injector.shift(f"{name}.{slot}", z))
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, e // heads).transpose(1, 2) for t in projected)
    scores = q @ k.transpose(-2, -1) / math.sqrt(e // heads)
    mask = _mask(attn_mask, key_padding_mask, is_causal, tuple(scores.shape), scores)
    if mask is not None:
        scores = scores + mask
    attn = torch.softmax(scores, dim=-1)
    o = (attn @ v).transpose(1, 2).reshape(query.shape[0], query.shape[1], e)
    injector.capture(f"{name}.out", o)
    out = injector.shift(f"{name}.out", torch.nn.functional.linear(o, self.out_proj.weight, self.out_proj.bias))
    if not self.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, attn.mean(1) if average_attn_weights else attn


@contextmanager
def patched(modules: dict[str, nn.MultiheadAttention], injector: Any) -> Iterator[None]:
    """Run `plain_forward` on these modules (name -> module) while the context is open."""
    attrs = ("forward", "_ntkit_injector", "_ntkit_name")
    saved = {name: {a: module.__dict__[a] for a in attrs if a in module.__dict__} for name, module in modules.items()}
    try:
        for name, module in modules.items():
            module._ntkit_injector, module._ntkit_name = injector, name
            module.forward = MethodType(plain_forward, module)
        yield
    finally:
        for name, module in modules.items():
            for attr in attrs:
                module.__dict__.pop(attr, None)
            module.__dict__.update(saved[name])


class Passive:
    """An injector that neither captures nor shifts: `plain_forward` is then nn.MultiheadAttention's function."""

    def capture(self, key: str, x: torch.Tensor) -> None:
        return None

    def shift(self, key: str, z: torch.Tensor) -> torch.Tensor:
        return z


def plain_attention(model: nn.Module) -> Any:
    """Every supported nn.MultiheadAttention of `model` computed by `plain_forward`: torch's fused and flash
    attention kernels have no forward-mode derivative (method="ntk_vp") and no batching rule (vmap)."""
    modules = {name: m for name, m in model.named_modules() if type(m) is nn.MultiheadAttention and supported(m)}
    return patched(modules, Passive())
