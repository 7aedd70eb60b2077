"""Blocked, memory-bounded evaluation of a kernel given by its tile function.

A kernel on inputs X (n rows) and Y (m rows) is a `KernelTiles`: a function that maps a set of rows
of X and a set of rows of Y (each a slice or a 1-D int64 index tensor) to one (rows, cols) tile per
requested kernel ("ntk", "nngp", ...). Everything that evaluates kernels at scale goes through it:

- `fill` evaluates it tile by tile into preallocated outputs (torch tensors, NumPy arrays or
  memmaps), so the peak memory is the outputs plus a few tiles. For a symmetric kernel (Y is X)
  only the tiles on and above the diagonal are computed and each is mirrored into place.
- `matmul` computes K V without storing K (matrix-free solvers); `map_row_blocks` runs any
  function over blocks of full rows K[rows, :] (the passes of Nystrom solvers).

This module is the leaf of `ntkit.gram`: it runs tiles in this process only. `ntkit.gram.dispatch` builds the
public `evaluate`, `matmul` and `map_row_blocks` on it, sending the work to a zarr store (`store`) or to Dask
workers (`distributed`) when asked. The tile function is all a caller needs from an architecture; this module
never imports one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import memory
from ..progress import progress

Index = slice | torch.Tensor
TileFn = Callable[[Index, Index], Sequence[torch.Tensor]]
Output = torch.Tensor | np.ndarray


def default_tile(device: torch.device) -> int:
    """Tile edge: small enough to stay in cache on a CPU, large enough to fill a GPU."""
    return 8192 if device.type == "cuda" else 512


@dataclass(frozen=True)
class KernelTiles:
    """A kernel K(X, Y) given by its tile function: the seam between architectures and the layers
    that evaluate kernels (in memory, on disk, on Dask workers, inside solvers).

    Attributes:
        fn: (rows, cols) -> one tile per name, each (len(rows), len(cols)), in `dtype` on `device`.
            rows index X and cols index Y: slices, or 1-D int64 index tensors (any order, repeats allowed).
        n, m: the number of rows of X and of Y.
        names: what each tile is, e.g. ("nngp", "ntk").
        symmetric: Y is X (then K is symmetric and `fill` computes only the upper triangle of tiles).
        dtype, device: of the tiles.
        tile: the default tile edge.
        describe: a stable text of the architecture and its settings (part of `fingerprint`).
        inputs: the input tensors (X, and Y when not symmetric), for `fingerprint`.
        diag: for symmetric kernels, rows -> the exact diagonal K(x_i, x_i) of each name (1-D tensors).
    """

    fn: TileFn
    n: int
    m: int
    names: tuple[str, ...]
    symmetric: bool
    dtype: torch.dtype
    device: torch.device
    tile: int
    describe: str = ""
    inputs: tuple[torch.Tensor, ...] = field(default=(), repr=False)
    diag: Callable[[Index], Sequence[torch.Tensor]] | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.m)

    def __call__(self, rows: Index, cols: Index) -> Sequence[torch.Tensor]:
        if self.device.type == "cpu":
            memory.reuse_freed_memory()  # the tile's temporaries reuse the last tile's memory
        return self.fn(rows, cols)

    def pairs(self) -> list[tuple[int, int]]:
        """The (row start, column start) of every tile `fill` computes (upper triangle when symmetric)."""
        return [(i, j) for i in range(0, self.n, self.tile)
                for j in range(i if self.symmetric else 0, self.m, self.tile)]

    def slices(self, i: int, j: int) -> tuple[slice, slice]:
        """The rows and columns of the tile starting at (i, j)."""
        return slice(i, min(i + self.tile, self.n)), slice(j, min(j + self.tile, self.m))

    def fingerprint(self) -> str:
        """A SHA-256 digest of the inputs' bytes, shapes and dtypes, the names and `describe`:
        equal digests mean the same Gram (used to resume and to refuse mismatched stores)."""
        import hashlib

        digest = hashlib.sha256()
        digest.update(repr((self.describe, self.names, self.symmetric, self.n, self.m, str(self.dtype))).encode())
        for array in self.inputs:
            digest.update(repr((tuple(array.shape), str(array.dtype))).encode())
            digest.update(array.detach().cpu().contiguous().numpy())  # its bytes, without a copy
        return digest.hexdigest()

    def check_fingerprint(self) -> None:
        """A ValueError when part of the kernel (a user function) cannot be fingerprinted: a store could not tell
        its Gram from that of another function, so it refuses the kernel until the function is named."""
        from .._fingerprint import UNFINGERPRINTABLE

        start = self.describe.find(UNFINGERPRINTABLE)
        if start >= 0:
            part = self.describe[start:self.describe.find(">", start) + 1]
            raise ValueError(f"a Gram store needs a fingerprint of the kernel, and part of it has none ({part}). "
                             "Name the function: activation=ntkit.activations.Quadrature(fn, "
                             "fingerprint='my-activation-v1'), or use a registered activation name")


def require_room(shape: tuple[int, int], count: int, dtype: torch.dtype, device: torch.device) -> None:
    """A MemoryError naming the alternatives when `count` Grams of `shape` do not fit in memory."""
    nbytes = count * memory.array_bytes(shape, dtype)
    memory.require(nbytes, what=f"{count} Gram matri{'x' if count == 1 else 'ces'} of shape {shape}", n=shape[0],
                   device=device, alternative="out= (a NumPy memmap on disk), or the large-N solvers "
                                              "(InfiniteWidthGP(solver='nystrom' or 'cg'))")


def allocate(shape: tuple[int, int], count: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """`count` empty outputs of `shape`; a MemoryError naming the alternatives when they do not fit."""
    require_room(shape, count, dtype, device)
    return [torch.empty(shape, dtype=dtype, device=device) for _ in range(count)]


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


def write(out: Any, rows: slice, cols: slice, tile: torch.Tensor) -> None:
    """out[rows, cols] = tile for a torch tensor, or anything NumPy-like (arrays, memmaps, zarr arrays)."""
    if isinstance(out, torch.Tensor):
        out[rows, cols].copy_(tile)
    else:
        out[rows, cols] = tile.detach().cpu().numpy()


def symmetric_tiles(tiles: KernelTiles, i: int, j: int) -> list[torch.Tensor]:
    """The tiles at (i, j), with a diagonal tile of a symmetric kernel made exactly symmetric (its upper
    triangle mirrored)."""
    rows, cols = tiles.slices(i, j)
    blocks = list(tiles(rows, cols))
    if tiles.symmetric and i == j:
        blocks = [torch.triu(block) + torch.triu(block, 1).T for block in blocks]
    return blocks


def put(tiles: KernelTiles, outs: Sequence[Any], i: int, j: int, blocks: Sequence[torch.Tensor]) -> None:
    """Write the tiles `blocks` computed at (i, j) into `outs` (one per name), and their mirror at (j, i)
    for a symmetric kernel."""
    rows, cols = tiles.slices(i, j)
    for out, block in zip(outs, blocks, strict=True):
        write(out, rows, cols, block)
        if tiles.symmetric and i != j:  # transposed into a new tile first: faster than a strided copy
            write(out, cols, rows, block.T.contiguous())


def fill(tiles: KernelTiles, outs: Sequence[Any], *, desc: str = "kernel", show_progress: bool | None = None) -> None:
    """Evaluate `tiles` over its whole (n, m) grid into `outs` (one output per name)."""
    pairs = tiles.pairs()
    for i, j in progress(pairs, total=len(pairs), desc=desc, enabled=show_progress, minimum=64):
        put(tiles, outs, i, j, symmetric_tiles(tiles, i, j))


def outputs(out: Any, tiles: KernelTiles) -> list[Any]:
    """The arrays to fill: new tensors when `out` is None, else the caller's (one per name), checked."""
    names, shape = tiles.names, tiles.shape
    if out is None:
        return allocate(shape, len(names), tiles.dtype, tiles.device)
    outs = [out] if len(names) == 1 and not isinstance(out, tuple) else out
    if not isinstance(outs, (tuple, list)) or len(outs) != len(names):
        raise ValueError(f"out must hold {len(names)} arrays, one for each of get={names}")
    for index, array in enumerate(outs):
        check_out(array, shape, name="out" if len(names) == 1 else f"out[{index}]")
    return list(outs)


def local_evaluate(tiles: KernelTiles, out: Any = None, *, show_progress: bool | None = None) -> list[Any]:
    """The whole Gram of `tiles` in this process: into new tensors (out=None) or the caller's arrays (one per name,
    a memmap included). Returns the filled outputs, one per name."""
    outs = outputs(out, tiles)
    with torch.no_grad():
        fill(tiles, outs, desc=f"{'+'.join(tiles.names)} kernel", show_progress=show_progress)
    return outs


def row_blocks(n: int, block: int) -> list[slice]:
    """Consecutive slices of at most `block` rows covering range(n)."""
    return [slice(i, min(i + block, n)) for i in range(0, n, block)]


def row_block(tiles: KernelTiles, rows: slice) -> list[torch.Tensor]:
    """The full rows K[rows, :] of each name, built from tiles of at most `tiles.tile` columns."""
    parts = [tiles(rows, cols) for cols in row_blocks(tiles.m, tiles.tile)]
    return [torch.cat([part[k] for part in parts], dim=1) for k in range(len(tiles.names))]


def local_row_blocks(tiles: KernelTiles, fn: Callable[[slice, list[torch.Tensor]], Any], blocks: Sequence[slice], *,
                     desc: str = "kernel pass", show_progress: bool | None = None) -> Iterator[Any]:
    """fn(rows, [K[rows, :] for each name]) for each block of rows, in this process, yielded in order. Each block
    of full rows is built from tiles of at most `tiles.tile` columns; only one block is in memory at a time."""
    for rows in progress(blocks, total=len(blocks), desc=desc, enabled=show_progress, minimum=8):
        yield fn(rows, row_block(tiles, rows))


def tile_products(tiles: KernelTiles, V: torch.Tensor, i: int, j: int,
                  name_index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The two products of the tile at (i, j) in K V: K_ij V_j (into rows i) and, for a symmetric kernel off
    the diagonal, K_ij^T V_i (into rows j; else None)."""
    rows, cols = tiles.slices(i, j)
    block = symmetric_tiles(tiles, i, j)[name_index]
    mirror = block.T @ V[rows] if tiles.symmetric and i != j else None
    return block @ V[cols], mirror


def add_products(tiles: KernelTiles, out: torch.Tensor, i: int, j: int,
                 products: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    """Add the products of the tile at (i, j) into K V (`out`), in the one order every path uses."""
    rows, cols = tiles.slices(i, j)
    out[rows] += products[0]
    if products[1] is not None:
        out[cols] += products[1]


def check_matmul(tiles: KernelTiles, V: torch.Tensor) -> torch.Tensor:
    """V (m, k) in the tiles' dtype and device, or a ValueError for the wrong number of rows."""
    if V.shape[0] != tiles.m:
        raise ValueError(f"V must have {tiles.m} rows, got shape {tuple(V.shape)}")
    return V.to(dtype=tiles.dtype, device=tiles.device)


def local_matmul(tiles: KernelTiles, V: torch.Tensor, out: torch.Tensor, name_index: int = 0, *,
                 desc: str = "kernel matvec", show_progress: bool | None = None) -> torch.Tensor:
    """out += K V in this process, tile by tile in the order of `tiles.pairs()` (that of every path)."""
    pairs = tiles.pairs()
    for i, j in progress(pairs, total=len(pairs), desc=desc, enabled=show_progress, minimum=64):
        add_products(tiles, out, i, j, tile_products(tiles, V, i, j, name_index))
    return out
