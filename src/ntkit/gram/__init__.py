"""Tiles: the one seam between a kernel (an architecture) and everything that evaluates it at scale.

An architecture describes its kernel on inputs (X, Y) as a `KernelTiles`: a tile function
(rows, cols) -> tiles plus the shape, names, dtype and device. This layer evaluates it into memory
(`fill`), applies it to vectors without storing it (`matmul`, `map_row_blocks`), and never imports
the architectures. The solvers (`ntkit.solvers`) work on the same record. `store` keeps a Gram in a
resumable zarr store (checksummed: `store.verify`) and `distributed` runs the tiles on Dask; both import zarr
and Dask only when used. Modules, lowest first: `tiles` (the record, in one process), `integrity`, `store_format`,
`stored` (reading a store), `store` (writing one), `packed`, `shared`, `cluster` (reaching Dask), `distributed`, and
`dispatch` (the public `evaluate`, `matmul`, `map_row_blocks`, which choose among them); none imports one above it.
"""

from . import distributed, store
from .dispatch import evaluate, map_row_blocks, matmul
from .tiles import (
    Index,
    KernelTiles,
    Output,
    TileFn,
    allocate,
    check_out,
    default_tile,
    fill,
    row_blocks,
)

__all__ = ["Index", "KernelTiles", "Output", "TileFn", "allocate", "check_out", "default_tile", "distributed",
           "evaluate", "fill", "map_row_blocks", "matmul", "row_blocks", "store"]
