"""`Mask`: padded positions of sequences (or images) of different lengths, as neural-tangents' masked inputs.

As the first layer, `Mask()` marks the positions of each example whose input is zero in every channel as padding
(neural-tangents' `mask_constant=0`: pad each sequence with zero vectors). The layers that mix positions then ignore
them, with neural-tangents' definitions:

    SelfAttention:   masked positions are no keys (softmax weight 0; the other mechanisms weight 0), and the
                     positional embeddings' covariance R is zero there
    GlobalAvgPool:   the mean over the unmasked positions only, Sigma'(x, y) = sum_{p, q unmasked} Sigma(x_p, y_q)
                     / (n_x n_y)

and the kernels at masked positions are zero (neural-tangents' remasking), so that nothing of the padding reaches an
output. Each example's mask comes from its input record in the self pass (Sigma(x_p, x_p) = 0), is kept with the
variances, and is read back by the tiles (`Pass`). In the finite network the `MaskModule` records the mask of its
input; the attention and pooling modules built after it in the same network read it.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Layer, LayerError, Pass, spatial_only
from .record import Record, self_variances

#: the MaskModule of the network being built (`Mask.module` sets it; `finite.modules` clears it for each network)
_BUILDING: list[MaskModule | None] = [None]


class Mask(Layer):
    """The first layer of a network on padded inputs: positions whose input is zero in every channel are padding,
    ignored by SelfAttention and GlobalAvgPool. Inputs (N, C, L) or (N, C, H, W)."""

    odd_preserving = True

    def out_shape(self, shape, where):
        spatial_only(shape, self, where)
        if where != "layer 0":
            raise LayerError(f"Mask ({where}) must be the first layer: it reads the padding from the inputs")
        return shape

    def apply(self, record: Record, ctx: Pass) -> Record:
        if ctx.is_self:
            valid = keep(ctx, (self_variances(record) != 0).flatten(1).to(record.sigma.dtype))
            ctx.masks = (valid, valid)
        else:
            ctx.masks = kept(ctx)
        return record

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        module = MaskModule()
        _BUILDING[0] = module
        return module


def keep(ctx: Pass, value: torch.Tensor) -> torch.Tensor:
    """In the self pass: keep a per-example tensor (first axis the examples) for the tiles, in the order the layers
    ask (as `Pass.variances` keeps the variances)."""
    ctx.kept.append(value)
    return value


def kept(ctx: Pass) -> tuple[torch.Tensor, torch.Tensor]:
    """In a tile: what `keep` kept for the rows and for the columns."""
    x, y = ctx.qx[ctx.index], ctx.qy[ctx.index]
    ctx.index += 1
    return x, y


def masks_of(ctx: Pass) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(valid_x, valid_y): 1 at the unmasked positions of the rows' and the columns' examples, (rows, P) and
    (cols, P) (or (B, P) each for pairs), 0 at padding; None without a Mask layer."""
    return getattr(ctx, "masks", None)


def pair_mask(masks: tuple[torch.Tensor, torch.Tensor], nbatch: int) -> torch.Tensor:
    """valid_x[p] valid_y[q] shaped like a record's (*batch, P, P)."""
    vx, vy = masks
    if nbatch == 2:
        return vx[:, None, :, None] * vy[None, :, None, :]
    return vx[:, :, None] * vy[:, None, :]


def masked_mean(record: Record, masks: tuple[torch.Tensor, torch.Tensor]) -> Record:
    """GlobalAvgPool over the unmasked positions of a "full" record: sum_{p, q} m_x[p] m_y[q] t / (n_x n_y)."""
    if record.layout != "full":
        raise LayerError("GlobalAvgPool after Mask needs every pair of positions")
    batch, P = record.sigma.shape[:record.nbatch], len(masks[0][0])
    weight = pair_mask(masks, record.nbatch)
    count = weight.sum((-2, -1)).clamp(min=1.0)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return (t.reshape(*batch, P, P) * weight).sum((-2, -1)) / count

    out = record.map(mean)
    return Record(out.sigma, out.theta, "flat", record.nbatch, ())


class MaskModule(nn.Module):
    """The identity, recording which positions of its input (N, C, *S) are zero in every channel."""

    def __init__(self):
        super().__init__()
        self.valid: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.valid = (x != 0).any(1).flatten(1).to(x.dtype)       # (N, P): 1 at the positions that are not padding
        return x


def new_network() -> None:
    """Before the modules of a network are built: no Mask yet."""
    _BUILDING[0] = None


def building_mask() -> MaskModule | None:
    """The MaskModule of the network being built, if its first layer is a Mask."""
    return _BUILDING[0]


def valid_positions(source: MaskModule | None, x: torch.Tensor) -> torch.Tensor | None:
    """The mask its MaskModule recorded in this forward pass, checked against x (N, C, *S); None without a Mask."""
    if source is None:
        return None
    valid = source.valid
    if valid is None or valid.shape != (x.shape[0], x[0, 0].numel()):
        raise LayerError(f"the network's Mask recorded positions of shape {None if valid is None else valid.shape}, "
                         f"not those of this layer's input {tuple(x.shape)}: run the whole network")
    return valid


class MaskedMean(nn.Module):
    """The mean over the positions of (N, C, *S) that its network's Mask did not mark as padding."""

    def __init__(self, source: MaskModule):
        super().__init__()
        self._source = [source]            # in a list: not a submodule of this one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        valid = valid_positions(self._source[0], x)
        return (x.flatten(2) * valid[:, None, :]).sum(2) / valid.sum(1, keepdim=True).clamp(min=1.0)
