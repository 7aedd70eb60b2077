"""`Dropout`: each unit kept with probability `rate` and scaled by 1 / rate in training (neural-tangents'
`stax.Dropout(rate, mode="train")`; `rate` is the keep rate, as there). Two different examples get independent masks,
so only a unit with itself sees E[m^2] / rate^2 = 1 / rate:

    Sigma'(x_p, y_q) = Sigma(x_p, y_q) (1 / rate if x is y and p = q, else 1)

and the same for Theta. "x is y" is the same example: the diagonal of a symmetric Gram and, as everywhere in ntkit,
any pair of identical examples (their kernel is the diagonal value: a nugget of (1 / rate - 1) Sigma(x, x)). The
output is not Gaussian: a weight layer must come before the next nonlinearity. mode="test" is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_choice, check_real
from .base import Layer
from .record import Record


class Dropout(Layer):
    """Dropout with keep probability `rate` in (0, 1] (the finite module: torch's nn.Dropout(p=1 - rate))."""

    def __init__(self, rate: float, mode: str = "train"):
        self.rate = float(check_real(rate, "rate", minimum=0.0))
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"rate (the keep probability) must be in (0, 1], got {rate!r}")
        self.mode = check_choice(mode, "mode", ("train", "test"))

    def describe(self) -> str:
        return f"Dropout(rate={self.rate!r}, mode={self.mode!r})"

    def gaussian(self, in_gaussian, where):
        return in_gaussian if self.mode == "test" or self.rate == 1.0 else False

    def apply(self, record: Record, ctx) -> Record:
        if self.mode == "test" or self.rate == 1.0 or not ctx.is_self:
            return record
        factor = 1.0 / self.rate
        return record.map(lambda t: _scale_diagonal(t, record, factor))

    def module(self, in_shape, out_channels, generator, dtype) -> nn.Module:
        return nn.Dropout(p=1.0 - self.rate) if self.mode == "train" else nn.Identity()


def _scale_diagonal(t: torch.Tensor, record: Record, factor: float) -> torch.Tensor:
    """t with each position paired with itself (all of a "flat" or "diag" self record) times `factor`."""
    if record.layout != "full":
        return t * factor
    B, P = t.shape[0], 1
    for s in record.spatial:
        P *= s
    out = t.reshape(B, P, P).clone()
    out.diagonal(dim1=1, dim2=2).mul_(factor)
    return out.reshape(t.shape)
