"""Blocked, memory-bounded evaluation of a kernel on large inputs.

A kernel is any function that maps a block of rows X[i0:i1] and a block Y[j0:j1] to one or
more (i1 - i0, j1 - j0) tiles. `fill` evaluates it tile by tile into preallocated outputs
(torch tensors, NumPy arrays or NumPy memmaps), so the peak memory is the outputs plus a few
tiles. For a symmetric kernel (Y is X) only the tiles on and above the diagonal are computed
and each is mirrored into place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .progress import progress

TileFn = Callable[[slice, slice], Sequence[torch.Tensor]]
Output = torch.Tensor | np.ndarray


def default_tile(device: torch.device) -> int:
    """Tile edge: small enough to stay in cache on a CPU, large enough to fill a GPU."""
    return 8192 if device.type == "cuda" else 512


def allocate(shape: tuple[int, int], count: int, like: torch.Tensor) -> list[torch.Tensor]:
    """`count` empty outputs of `shape` with `like`'s dtype and device."""
    return [torch.empty(shape, dtype=like.dtype, device=like.device) for _ in range(count)]


def check_out(out: Output, shape: tuple[int, int], name: str = "out") -> None:
    """A preallocated output must be a writable 2-D array or tensor of the right shape."""
    if not isinstance(out, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a torch tensor or a NumPy array (a memmap works), got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    dtype_ok = out.dtype.is_floating_point if isinstance(out, torch.Tensor) else np.issubdtype(out.dtype, np.floating)
    if not dtype_ok:
        raise TypeError(f"{name} must have a floating dtype, got {out.dtype}")


def _write(out: Output, rows: slice, cols: slice, tile: torch.Tensor) -> None:
    if isinstance(out, torch.Tensor):
        out[rows, cols].copy_(tile)
    else:
        out[rows, cols] = tile.detach().cpu().numpy()


def fill(tile_fn: TileFn, n: int, m: int, outs: Sequence[Output], *, symmetric: bool, tile: int,
         desc: str = "kernel", show_progress: bool | None = None) -> None:
    """Evaluate `tile_fn` over all (rows, cols) tiles of an (n, m) grid into `outs`."""
    row_starts = range(0, n, tile)
    pairs = [(i, j) for i in row_starts for j in range(i if symmetric else 0, m, tile)]
    for i, j in progress(pairs, total=len(pairs), desc=desc, enabled=show_progress, minimum=64):
        rows, cols = slice(i, min(i + tile, n)), slice(j, min(j + tile, m))
        tiles = tile_fn(rows, cols)
        for out, block in zip(outs, tiles, strict=True):
            if symmetric and i == j:  # mirror the upper triangle: exactly symmetric despite rounding
                block = torch.triu(block) + torch.triu(block, 1).T
            _write(out, rows, cols, block)
            if symmetric and i != j:
                _write(out, cols, rows, block.T)
