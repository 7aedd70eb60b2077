"""`SelfAttention`: global scaled dot-product self-attention and its infinite-width kernel (Hron, Bahri,
Sohl-Dickstein and Novak 2020, "Infinite attention"), with the settings and definitions of neural-tangents'
`stax.GlobalSelfAttention`.

Positions p, p' run over all spatial positions (flattened). With `linear_scaling` (keys and queries tied, their dot
products scaled by 1 / n_key) the attention weights of an example converge to a deterministic matrix

    G(x)[p, p'] = mech(QK_std * S(x)[p, p'])        (softmax over p'),      QK_std = W_query_std * W_key_std

where S(x) = w_in Sigma(x, x) + w_pe R is the input's own covariance, R the positional embeddings' covariance
(identity, or decay_fn(norm_p(p - p')^p)), and (w_in, w_pe) = (1, W_pos_emb_std^2) for "sum", halved for "concat". Then

    Sigma'(x, y) = OV_std^2 G(x) Sigma_v(x, y) G(y)^T + b_std^2                 OV_std = W_out_std * W_value_std
    Theta'(x, y) = OV_std^2 G(x) Theta_v(x, y) G(y)^T + 2 (Sigma'(x, y) - b_std^2) + b_std^2

with Sigma_v, Theta_v the input's kernels (plus w_pe R where the values see the embeddings, `val_pos_emb`). Without
linear scaling only the identity mechanism has a closed form (neural-tangents' expression, in `_identity`).
The weights G(x) depend on each example alone: the self pass keeps them and the tiles read them back.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._checks import check_choice, check_positive_int, check_real
from .base import Layer, LayerError, Pass, spatial_only
from .masking import building_mask, keep, kept, masks_of, pair_mask, valid_positions
from .record import Record

MECHANISMS = ("softmax", "identity", "abs", "relu")
POS_EMB_TYPES = ("none", "sum", "concat")
#: the score of a masked key for softmax (neural-tangents' value: -inf would give NaN for a row all masked)
NEG_INF = -1e20


class SelfAttention(Layer):
    """Global self-attention over the positions of (N, C, L) or (N, C, H, W) inputs, in the NTK parametrization.

    n_heads: heads of the finite layer (the kernel does not depend on it). linear_scaling: keys and queries tied,
    scaled by 1 / n_key (True, any mechanism) or independent, scaled by 1 / sqrt(n_key) (False: the kernel exists for
    attention_mechanism="identity" only). attention_mechanism: "softmax", "identity", "abs", "relu".
    pos_emb_type: "none", "sum", "concat" (trainable embeddings of std W_pos_emb_std, covariance between positions
    pos_emb_decay_fn(norm_p(p - p')^p) with p = pos_emb_p_norm, or the identity when None); val_pos_emb: the values see
    them too. b_std None: no bias. The finite layer's key and value channels per head are its width.
    """

    weights = True

    def __init__(self, n_heads: int = 1, linear_scaling: bool = True, W_key_std: float = 1.0,
                 W_value_std: float = 1.0, W_query_std: float = 1.0, W_out_std: float = 1.0,
                 b_std: float | None = None, attention_mechanism: str = "softmax", pos_emb_type: str = "none",
                 pos_emb_p_norm: float = 2.0, pos_emb_decay_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 n_chan_pos_emb: int | None = None, W_pos_emb_std: float = 1.0, val_pos_emb: bool = False):
        self.n_heads = check_positive_int(n_heads, "n_heads")
        self.linear_scaling = bool(linear_scaling)
        self.W_key_std = float(check_real(W_key_std, "W_key_std", minimum=0.0))
        self.W_value_std = float(check_real(W_value_std, "W_value_std", minimum=0.0))
        self.W_query_std = float(check_real(W_query_std, "W_query_std", minimum=0.0))
        self.W_out_std = float(check_real(W_out_std, "W_out_std", minimum=0.0))
        self.bias = b_std is not None
        self.b_std = 0.0 if b_std is None else float(check_real(b_std, "b_std", minimum=0.0))
        self.attention_mechanism = check_choice(str(attention_mechanism).lower(), "attention_mechanism", MECHANISMS)
        self.pos_emb_type = check_choice(str(pos_emb_type).lower(), "pos_emb_type", POS_EMB_TYPES)
        self.pos_emb_p_norm = float(check_real(pos_emb_p_norm, "pos_emb_p_norm", minimum=0.0))
        if pos_emb_decay_fn is not None and not callable(pos_emb_decay_fn):
            raise TypeError(f"pos_emb_decay_fn must be a function of the distances or None, got "
                            f"{type(pos_emb_decay_fn).__name__}")
        self.pos_emb_decay_fn = pos_emb_decay_fn
        if n_chan_pos_emb is not None:
            raise LayerError("SelfAttention: n_chan_pos_emb must be None (embeddings with as many channels as the "
                             "input): the input's channel count is infinite in the kernel")
        self.n_chan_pos_emb = None
        self.W_pos_emb_std = float(check_real(W_pos_emb_std, "W_pos_emb_std", minimum=0.0))
        self.val_pos_emb = bool(val_pos_emb)
        if not self.linear_scaling and self.attention_mechanism != "identity":
            raise LayerError(f"SelfAttention: linear_scaling=False has a closed-form kernel only for "
                             f"attention_mechanism='identity' (as in neural-tangents), got "
                             f"{self.attention_mechanism!r}; use linear_scaling=True")

    # ------------------------------------------------------------------ what the composer reads
    @property
    def W_std(self) -> float:
        """The scale of the output, W_out_std * W_value_std (the range checks read it)."""
        return self.W_out_std * self.W_value_std

    def describe(self) -> str:
        settings = [f"n_heads={self.n_heads}", f"linear_scaling={self.linear_scaling}",
                    f"W_key_std={self.W_key_std!r}", f"W_value_std={self.W_value_std!r}",
                    f"W_query_std={self.W_query_std!r}", f"W_out_std={self.W_out_std!r}",
                    f"b_std={self.b_std if self.bias else None!r}",
                    f"attention_mechanism={self.attention_mechanism!r}", f"pos_emb_type={self.pos_emb_type!r}"]
        if self.pos_emb_type != "none":
            settings += [f"pos_emb_p_norm={self.pos_emb_p_norm!r}", f"pos_emb_decay_fn={_describe_fn(self)}",
                         f"W_pos_emb_std={self.W_pos_emb_std!r}", f"val_pos_emb={self.val_pos_emb}"]
        return f"SelfAttention({', '.join(settings)})"

    def out_shape(self, shape, where):
        if len(shape) < 2:
            raise LayerError(f"SelfAttention ({where}) attends over positions: it needs inputs (C, L) or (C, H, W) "
                             f"per example, got the flat shape {shape}; put it before Flatten / GlobalAvgPool")
        spatial_only(shape, self, where)
        return shape

    def need(self, out_need):
        return "full"

    def gaussian(self, in_gaussian, where):
        return True

    # ------------------------------------------------------------------ the kernel map
    def _weights_in(self) -> tuple[float, float]:
        """(w_in, w_pe): the input's and the embeddings' shares of the keys' covariance."""
        if self.pos_emb_type == "none":
            return 1.0, 0.0
        pe = self.W_pos_emb_std * self.W_pos_emb_std     # a product: inf rather than OverflowError
        return (0.5, 0.5 * pe) if self.pos_emb_type == "concat" else (1.0, pe)

    def apply(self, record: Record, ctx: Pass) -> Record:
        if record.layout != "full":
            raise LayerError(f"SelfAttention needs every pair of positions, got a {record.layout!r} record")
        batch, S = record.sigma.shape[:record.nbatch], record.spatial
        P = math.prod(S)
        R = self._pos_cov(S, record.sigma)
        sigma = record.sigma.reshape(*batch, P, P)
        theta = record.theta
        if theta is not None and theta.ndim:
            theta = theta.reshape(*batch, P, P)
        masks = masks_of(ctx)
        if masks is not None:     # padding: kernels and embeddings zero there (neural-tangents' remasking)
            valid = pair_mask(masks, record.nbatch)
            sigma, R = sigma * valid, None if R is None else R * valid
            theta = theta * valid if theta is not None and theta.ndim else theta
        if self.linear_scaling:
            sigma, theta = self._linear(sigma, theta, R, record.nbatch, ctx, masks)
        else:
            sigma, theta = self._identity(sigma, theta, R, record.nbatch, ctx)
        if masks is not None:
            sigma, theta = sigma * valid, None if theta is None else theta * valid
        out = Record(sigma.reshape(*batch, *S, *S), None if theta is None else theta.reshape(*batch, *S, *S),
                     "full", record.nbatch, S)
        return out

    def _pos_cov(self, S: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
        """R (P, P): the positional embeddings' covariance between positions, or None without embeddings."""
        if self.pos_emb_type == "none":
            return None
        return position_covariance(S, self.pos_emb_p_norm, self.pos_emb_decay_fn, like.dtype, like.device)

    def _interp(self, t: torch.Tensor | None, R: torch.Tensor | None) -> torch.Tensor | None:
        """w_in t + w_pe R (t a 0-d zero before any weight layer)."""
        w_in, w_pe = self._weights_in()
        if t is None or R is None:
            return t
        return w_in * t + w_pe * R

    def _attention_weights(self, cov: torch.Tensor, R: torch.Tensor | None, keys: torch.Tensor | None
                           ) -> torch.Tensor:
        """G(x) (B, P, P) from the examples' own covariances (B, P, P); `keys` (B, P): 0 at padding, or None."""
        scores = self.W_query_std * self.W_key_std * self._interp(cov, R)
        return attention_weights(scores, self.attention_mechanism, keys)

    def _linear(self, sigma, theta, R, nbatch, ctx, masks):
        if ctx.is_self:
            G = self._attention_weights(sigma, R, None if masks is None else masks[0])
            Gx = Gy = keep(ctx, G)
        else:
            Gx, Gy = kept(ctx)
        ov2, b2 = self.W_std * self.W_std, self.b_std * self.b_std
        values = self._interp(sigma, R) if self.val_pos_emb else sigma
        GSG = _sandwich(Gx, values, Gy, nbatch)
        plain = not isinstance(ov2, torch.Tensor) and not isinstance(b2, torch.Tensor)
        sigma_out = torch.add(GSG.new_tensor(b2), GSG, alpha=ov2) if plain else GSG * ov2 + b2
        if theta is None:
            return sigma_out, None
        t = self._interp(theta, R) if self.val_pos_emb else theta
        if not t.ndim:       # Theta = 0 before any weight layer
            return sigma_out, GSG * (2 * ov2) + b2
        GTG = _sandwich(Gx, t, Gy, nbatch)
        if plain:            # Sigma' + W^2 (G Theta G^T + G Sigma G^T), two passes
            return sigma_out, torch.add(sigma_out, GTG.add_(GSG), alpha=ov2)
        return sigma_out, GTG.mul_(ov2).add_(GSG, alpha=2 * ov2).add_(b2)

    def _identity(self, sigma, theta, R, nbatch, ctx):
        """linear_scaling=False, identity mechanism: neural-tangents' closed form (dot products over all pairs of
        positions of nngp_interp and nngp, times nngp_interp)."""
        std = self.W_query_std * self.W_key_std * self.W_out_std * self.W_value_std
        std2, b2 = std * std, self.b_std * self.b_std
        s_int = self._interp(sigma, R)
        s_val = s_int if self.val_pos_emb else sigma
        dot12 = _dot(s_int, s_val)
        sigma_out = dot12 * s_int * std2 + b2
        if theta is None:
            return sigma_out, None
        zero = theta.ndim == 0
        t_int = self._interp(theta, R) if R is not None else theta
        t_full = torch.zeros_like(sigma) if (zero and R is None) else t_int.expand_as(sigma)
        if self.val_pos_emb or R is None:
            ntk = 2 * _dot(s_int, t_full)
        else:
            ntk = (0.0 if zero else _dot(s_int, theta)) + _dot(sigma, t_full)
        theta_out = (ntk * s_int + dot12 * (t_full + 4 * s_int)) * std2 + b2
        return sigma_out, theta_out

    # ------------------------------------------------------------------ the finite layer
    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return NTKSelfAttention(self, in_shape, out_channels, generator, dtype)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_{p, q} a[..., p, q] b[..., p, q], shaped (..., 1, 1)."""
    return (a * b).sum((-2, -1), keepdim=True)


def _sandwich(Gx: torch.Tensor, M: torch.Tensor, Gy: torch.Tensor, nbatch: int) -> torch.Tensor:
    """G(x) M(x, y) G(y)^T for each pair: Gx (r, P, P), Gy (c, P, P), M (r, c, P, P) when nbatch is 2; Gx, Gy, M
    (B, P, P) for pairs (x_b, y_b) when 1. M may be (P, P) (the embeddings' R)."""
    if nbatch == 2:   # einsum orders the products into large GEMMs: about twice as fast as broadcast matmuls
        return torch.einsum("rpi,ij,cqj->rcpq" if M.ndim == 2 else "rpi,rcij,cqj->rcpq", Gx, M, Gy)
    return torch.matmul(torch.matmul(Gx, M), Gy.transpose(-1, -2))


_MECHANISM_FNS = {"identity": lambda t: t, "abs": torch.abs, "relu": torch.relu}


def attention_weights(scores: torch.Tensor, mechanism: str, keys: torch.Tensor | None) -> torch.Tensor:
    """mech(scores) over the last axis (the keys); `keys` (B, P) or None: masked keys (0) get the score NEG_INF
    before a softmax and 0 otherwise, as in neural-tangents."""
    if keys is not None:
        keys = keys.reshape(keys.shape[0], *(1,) * (scores.ndim - 2), keys.shape[-1])
        scores = torch.where(keys == 0, NEG_INF if mechanism == "softmax" else 0.0, scores)
    if mechanism == "softmax":
        return torch.softmax(scores, dim=-1)
    return _MECHANISM_FNS[mechanism](scores)


def position_covariance(S: tuple[int, ...], p_norm: float, decay_fn, dtype: torch.dtype,
                        device: torch.device) -> torch.Tensor:
    """R (P, P): the identity, or decay_fn(sum_k |i_k - j_k|^p_norm) over the positions of S (row-major)."""
    P = math.prod(S)
    if decay_fn is None:
        return torch.eye(P, dtype=dtype, device=device)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in S], indexing="ij"), -1)
    grid = grid.reshape(P, len(S))
    distance = ((grid[:, None, :] - grid[None, :, :]).abs() ** p_norm).sum(-1)
    R = decay_fn(distance)
    if not isinstance(R, torch.Tensor) or R.shape != (P, P):
        raise LayerError(f"SelfAttention: pos_emb_decay_fn must map a tensor of distances to a tensor of the same "
                         f"shape, got {type(R).__name__}")
    return R.to(dtype=dtype, device=device)


def _describe_fn(layer: SelfAttention) -> str:
    """The decay function by name and by its values at a few distances (two lambdas differ by the latter)."""
    fn = layer.pos_emb_decay_fn
    if fn is None:
        return "None"
    d = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 16.0, 64.0], dtype=torch.float64)
    values = ", ".join(repr(float(v)) for v in fn(d))
    return f"{getattr(fn, '__qualname__', type(fn).__name__)}[{values}]"


class NTKSelfAttention(nn.Module):
    """The finite layer, as neural-tangents' `GlobalSelfAttention.apply_fn`, on (N, C, *S): per head, keys K = X W_K
    and values V = X W_V (X (P, C_in) the positions' features), scores W_query_std W_key_std Q K^T / (C_in n_key)
    (linear scaling: Q = K) or / (C_in sqrt(n_key)), weights mech(scores), and
    out = W_out_std W_value_std / sqrt(n_val n_heads C_in) [G_1 V_1, ..., G_h V_h] W_out + b_std b; all parameters
    standard normal."""

    def __init__(self, layer: SelfAttention, in_shape: tuple[int, ...], out_channels: int,
                 generator: torch.Generator | None, dtype: torch.dtype):
        super().__init__()
        self.layer = layer
        C, S = in_shape[0], tuple(in_shape[1:])
        heads, width = layer.n_heads, out_channels
        self.spatial = S

        def normal(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator, dtype=dtype))

        c_keys = c_vals = C
        if layer.pos_emb_type != "none":
            self.pos_emb = normal(math.prod(S), C)
            R = position_covariance(S, layer.pos_emb_p_norm, layer.pos_emb_decay_fn, torch.float64, "cpu")
            self.register_buffer("pos_chol", torch.linalg.cholesky(R).to(dtype)
                                 if layer.pos_emb_decay_fn is not None else None)
            if layer.pos_emb_type == "concat":
                c_keys += C
                c_vals += C if layer.val_pos_emb else 0
        self.W_key = normal(heads, c_keys, width)
        self.W_query = None if layer.linear_scaling else normal(heads, c_keys, width)
        self.W_value = normal(heads, c_vals, width)
        self.W_out = normal(heads * width, out_channels)
        self.b = normal(out_channels) if layer.bias else None
        self._mask = [building_mask()]     # in a list: the network's MaskModule, not a submodule of this one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        n = x.shape[0]
        xs = x.flatten(2).transpose(1, 2)                                          # (n, P, C)
        inputs, values_in = xs, xs
        valid = valid_positions(self._mask[0], x)                                  # (n, P) or None
        if layer.pos_emb_type != "none":
            pe = self.pos_emb if self.pos_chol is None else self.pos_chol @ self.pos_emb
            pe = (pe * layer.W_pos_emb_std).expand(n, -1, -1)
            pe = pe if valid is None else pe * valid[:, :, None]
            inputs = xs + pe if layer.pos_emb_type == "sum" else torch.cat([xs, pe], -1)
            values_in = inputs if layer.val_pos_emb else xs
        keys = torch.einsum("npc,hck->nhpk", inputs, self.W_key)
        queries = keys if self.W_query is None else torch.einsum("npc,hck->nhpk", inputs, self.W_query)
        n_key = keys.shape[-1]
        norm = inputs.shape[-1] * (n_key if layer.linear_scaling else math.sqrt(n_key))
        scores = queries @ keys.transpose(-1, -2) * (layer.W_query_std * layer.W_key_std / norm)
        G = attention_weights(scores, layer.attention_mechanism, valid)
        values = torch.einsum("npc,hcv->nhpv", values_in, self.W_value)
        heads = (G @ values).permute(0, 2, 1, 3).reshape(n, xs.shape[1], -1)       # (n, P, heads * n_val)
        scale = layer.W_std / math.sqrt(heads.shape[-1] * values_in.shape[-1])
        out = heads @ self.W_out * scale
        if self.b is not None:
            out = out + layer.b_std * self.b
        return out.transpose(1, 2).reshape(n, -1, *x.shape[2:])

    def extra_repr(self) -> str:
        return f"{self.layer.describe()}, width={self.W_key.shape[-1]}"
