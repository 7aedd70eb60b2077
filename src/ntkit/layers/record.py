"""The kernel record that flows through the layers, and the spatial operations on it.

A record holds, for a block of example pairs, Sigma (the NNGP covariance of the layer's outputs) and
Theta (the NTK), both over the spatial positions the architecture needs (Arora et al. 2019, Section 3):

    layout "flat":  (*batch,)              no spatial axes (after Flatten, GlobalAvgPool or for (N, d) inputs)
    layout "diag":  (*batch, *S)           Sigma(x_p, y_p) at each position p only: what Flatten + Linear needs
    layout "full":  (*batch, *S, *S)       Sigma(x_p, y_q) for every pair of positions: what pooling needs

`batch` is (rows, cols) for a tile of example pairs, or (B,) for each example paired with itself (the pass
that computes the per-example variances q(x_p) = Sigma(x_p, x_p) that every nonlinearity needs). S is the
spatial shape: (H, W) for images, (L,) for sequences. Channel counts are infinite: a channel axis never appears.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

LAYOUTS = ("flat", "diag", "full")


@dataclass(frozen=True)
class Record:
    """Sigma and Theta on a block (theta None when only the NNGP is wanted, a 0-d zero before any weight layer).

    nbatch: 2 for a tile of pairs (rows, cols), 1 for examples paired with themselves.
    spatial: the spatial shape S of the layer's output (empty for "flat").
    """

    sigma: torch.Tensor
    theta: torch.Tensor | None
    layout: str
    nbatch: int
    spatial: tuple[int, ...]

    def map(self, fn) -> Record:
        """The same record with fn applied to Sigma and Theta."""
        theta = self.theta if self.theta is None or self.theta.ndim == 0 else fn(self.theta)
        return replace(self, sigma=fn(self.sigma), theta=theta)

    def x_axis(self, k: int) -> int:
        """The tensor axis of spatial dimension k of the first example (x)."""
        return self.nbatch + k

    def y_axis(self, k: int) -> int:
        """The tensor axis of spatial dimension k of the second example (y); "full" layout only."""
        return self.nbatch + len(self.spatial) + k


def at_pairs(record: Record, i: torch.Tensor, j: torch.Tensor) -> Record:
    """The pairs (i[b], j[b]) of a flat record of a tile (rows, cols): a record with one batch axis, like the pairs
    of `paired_input_record` (a 0-d Theta, before any weight layer, stays as it is)."""
    theta = record.theta if record.theta is None or record.theta.ndim == 0 else record.theta[i, j]
    return Record(record.sigma[i, j], theta, record.layout, 1, record.spatial)


def paired_input_record(X: torch.Tensor, Y: torch.Tensor, layout: str, want_ntk: bool) -> Record:
    """The input layer's kernel for the pairs (X[b], Y[b]), b < B: a record with one batch axis, like the self pass
    (used for the upper triangle of a symmetric tile)."""
    B, channels, spatial = X.shape[0], X.shape[1], tuple(X.shape[2:])
    if layout == "full":
        Xf, Yf = X.reshape(B, channels, -1), Y.reshape(B, channels, -1)
        sigma = torch.bmm(Xf.transpose(1, 2), Yf).reshape(B, *spatial, *spatial) / channels
    else:
        sigma = (X * Y).sum(1) / channels
    theta = sigma.new_zeros(()) if want_ntk else None
    return Record(sigma.contiguous(), theta, layout, 1, spatial if layout != "flat" else ())


def input_record(X: torch.Tensor, Y: torch.Tensor | None, layout: str, want_ntk: bool) -> Record:
    """The input layer's kernel: Sigma^(0)(x_p, y_q) = sum_c x[c, p] y[c, q] / C, with Theta^(0) = 0.

    X is (r, C, *S) (or (r, d)); Y likewise (c, C, *S), or None for the self pass (each x with itself).
    The input layer has no parameters, so its Theta is zero (the next weight layer adds its Sigma).
    """
    spatial = tuple(X.shape[2:])
    channels = X.shape[1]
    r = X.shape[0]
    Xf = X.reshape(r, channels, -1)                                                  # (r, C, P)
    if Y is None:
        if layout == "flat":
            sigma = (X * X).sum(1) / channels
        elif layout == "diag":
            sigma = (Xf * Xf).sum(1).reshape(r, *spatial) / channels
        else:
            sigma = torch.einsum("acp,acq->apq", Xf, Xf).reshape(r, *spatial, *spatial) / channels
        nbatch = 1
    else:
        c = Y.shape[0]
        Yf = Y.reshape(c, channels, -1)
        if layout == "flat":
            sigma = X @ Y.T / channels
        elif layout == "diag" and channels <= 16:  # few channels: broadcast products
            sigma = Xf[:, None, 0] * Yf[None, :, 0]
            for ch in range(1, channels):
                sigma.addcmul_(Xf[:, None, ch], Yf[None, :, ch])
            sigma = sigma.reshape(r, c, *spatial) / channels
        elif layout == "diag":  # one (r, C) @ (C, c) product per position
            sigma = torch.bmm(Xf.permute(2, 0, 1).contiguous(), Yf.permute(2, 1, 0).contiguous()).permute(1, 2, 0)
            sigma = sigma.reshape(r, c, *spatial) / channels
        else:
            P = Xf.shape[2]
            a = Xf.permute(0, 2, 1).reshape(r * P, channels)
            b = Yf.permute(0, 2, 1).reshape(c * P, channels)
            sigma = (a @ b.T).reshape(r, P, c, P).permute(0, 2, 1, 3).reshape(r, c, *spatial, *spatial) / channels
        nbatch = 2
    theta = sigma.new_zeros(()) if want_ntk else None  # a 0-d zero: weight layers replace it by their Sigma
    return Record(sigma.contiguous(), theta, layout, nbatch, spatial if layout != "flat" else ())


# ------------------------------------------------------------------------------------- variances
def self_variances(record: Record, t: torch.Tensor | None = None) -> torch.Tensor:
    """q(x_p) = Sigma(x_p, x_p) of a self record (nbatch 1): (B, *S), or (B,) when flat; of `t` (the record's
    Theta) in place of Sigma when given."""
    t = record.sigma if t is None else t
    if record.layout in ("flat", "diag"):
        return t
    B, S = t.shape[0], record.spatial
    P = _prod(S)
    return t.reshape(B, P, P).diagonal(dim1=1, dim2=2).reshape(B, *S)


def broadcast_variances(record: Record, qx: torch.Tensor, qy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q(x_p) and q(y_q) shaped to broadcast against the record's Sigma."""
    S = record.spatial
    ones = (1,) * len(S)
    if record.nbatch == 1:
        if record.layout == "full":
            B = qx.shape[0]
            return qx.reshape(B, *S, *ones), qy.reshape(B, *ones, *S)
        return qx, qy
    r, c = qx.shape[0], qy.shape[0]
    if record.layout == "full":
        return qx.reshape(r, 1, *S, *ones), qy.reshape(1, c, *ones, *S)
    return qx.reshape(r, 1, *S), qy.reshape(1, c, *S)


# ----------------------------------------------------------------------------- spatial operations
def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(low, high) padding of "same" (as in XLA and torch): the output has ceil(size / stride) positions."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def out_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """Positions along one axis after a window of `kernel` with `stride` and `padding`."""
    if padding == "valid":
        return (size - kernel) // stride + 1
    return -(-size // stride)


def _pad(t: torch.Tensor, axes: tuple[int, ...], low: int, high: int, mode: str) -> torch.Tensor:
    """Pad each of `axes` by (low, high) with zeros (mode "same") or periodically (mode "circular")."""
    if low == 0 and high == 0:
        return t
    if mode == "circular":
        for axis in axes:
            size = t.shape[axis]
            t = t.index_select(axis, torch.arange(-low, size + high, device=t.device) % size)
        return t
    shape = list(t.shape)
    interior = [slice(None)] * t.ndim
    for axis in axes:
        shape[axis] += low + high
        interior[axis] = slice(low, low + t.shape[axis])
    padded = t.new_zeros(shape)
    padded[tuple(interior)] = t
    return padded


def _window_slice(t: torch.Tensor, axes: tuple[int, ...], start: int, count: int, stride: int) -> torch.Tensor:
    """t[..., start : start + stride * (count - 1) + 1 : stride, ...] on each of `axes`."""
    index = [slice(None)] * t.ndim
    for axis in axes:
        index[axis] = slice(start, start + stride * (count - 1) + 1, stride)
    return t[tuple(index)]


def _shifted_sum(t: torch.Tensor, axes: tuple[int, ...], kernel: int, scale: float) -> torch.Tensor:
    """sum_d t shifted by d - low on every axis of `axes` (zeros shifted in): "same" padding with stride 1 without
    a padded copy, one pass over memory per offset."""
    low = same_pads(t.shape[axes[0]], kernel, 1)[0]
    size = t.shape[axes[0]]
    total = t * scale if scale != 1.0 else t.clone()
    for d in range(kernel):
        shift = d - low
        if shift == 0 or abs(shift) >= size:
            continue
        out_index = [slice(None)] * t.ndim
        in_index = [slice(None)] * t.ndim
        for axis in axes:
            out_index[axis] = slice(max(0, -shift), size - max(0, shift))
            in_index[axis] = slice(max(0, shift), size - max(0, -shift))
        total[tuple(out_index)].add_(t[tuple(in_index)], alpha=scale)
    return total


def window_sum(t: torch.Tensor, axes: tuple[int, ...], kernel: int, stride: int, padding: str,
               scale: float = 1.0) -> torch.Tensor:
    """The sum over a window of `kernel` offsets, taken at the same offset on every axis of `axes` (a new tensor).

    For a convolution, axes = (x axis, y axis) of one spatial dimension ("full") or the single shared axis
    ("diag"): Sigma'(x_i, y_j) = (1 / k) sum_d Sigma(x_{s i + d}, y_{s j + d}) (Arora et al. 2019, eq. 7) is this sum
    over k; the padded positions are zero ("same") or wrapped ("circular"). Pooling calls it once per axis.
    Every term is multiplied by `scale` (a float) in the same pass.
    """
    size = t.shape[axes[0]]
    if padding == "same" and stride == 1:
        return _shifted_sum(t, axes, kernel, scale)
    count = out_size(size, kernel, stride, padding)
    if padding != "valid":
        t = _pad(t, axes, *same_pads(size, kernel, stride), padding)
    total = _window_slice(t, axes, 0, count, stride) * scale
    for d in range(1, kernel):
        total.add_(_window_slice(t, axes, d, count, stride), alpha=scale)
    return total


def full_to_diag(record: Record) -> Record:
    """Keep only Sigma(x_p, y_p) and Theta(x_p, y_p): the positions' diagonal of a "full" record."""
    if record.layout != "full":
        return record
    batch, S = record.sigma.shape[:record.nbatch], record.spatial
    P = _prod(S)

    def diagonal(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*batch, P, P).diagonal(dim1=-2, dim2=-1).reshape(*batch, *S).contiguous()

    return replace(record.map(diagonal), layout="diag")


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out
