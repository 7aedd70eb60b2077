"""Where a kernel's tiles run: in this process, into a resumable zarr store, or on Dask workers.

The public `evaluate`, `matmul` and `map_row_blocks` of `ntkit.gram`. Each takes a `KernelTiles` and sends the work
to `tiles` (this process), `store` (a zarr store: the tiles recorded, resumed, checked) or `distributed` (Dask),
which import zarr and Dask only when used. This module sits above the three: none of them imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..progress import progress
from . import distributed, store
from .tiles import KernelTiles, check_matmul, local_evaluate, local_matmul, local_row_blocks, row_blocks


def evaluate(tiles: KernelTiles, out: Any = None, *, show_progress: bool | None = None,
             client: Any = None) -> list[Any]:
    """Evaluate the whole Gram of `tiles`: into new tensors (out=None), the caller's arrays (one per name,
    a memmap included), or a resumable zarr store (out: a path ending in ".zarr", or a zarr group; see
    `ntkit.gram.store`). Returns the filled outputs, one per name (zarr arrays for a store). What every
    architecture's `kernel` calls.

    client: a `dask.distributed.Client`: the tiles become Dask tasks (`ntkit.gram.distributed`); the result
        is bitwise the same as in one process with the workers' number of BLAS threads.
    """
    desc = f"{'+'.join(tiles.names)} kernel"
    if store.is_store(out):
        return evaluate_store(tiles, out, client=client, show_progress=show_progress, desc=desc)
    if client is not None:
        return distributed.evaluate(client, tiles, out, desc=desc, show_progress=show_progress)
    return local_evaluate(tiles, out, show_progress=show_progress)


def evaluate_store(tiles: KernelTiles, out: Any, *, client: Any = None, show_progress: bool | None = None,
                   desc: str = "kernel") -> list[Any]:
    """Fill the store `out` with the Gram of `tiles`, skipping the tiles it records as finished whose chunks are
    intact (`store.to_resume`). Returns the store's zarr arrays, one per name. With `client`, Dask workers compute
    the tiles and write them straight into the store (it must be reachable from the workers)."""
    writer, tiles = store.open_store(out, tiles)
    finished = store.to_resume(writer, tiles, out)
    tile = writer.tile
    todo = [(i, j) for i, j in tiles.pairs() if not finished[i // tile, j // tile]]
    if client is not None:
        distributed.fill_store(client, tiles, writer, todo, desc=desc, show_progress=show_progress)
        finished = writer.finished()
        missing = sum(1 for i, j in tiles.pairs() if not finished[i // tile, j // tile])
        if missing:  # the workers wrote somewhere this process does not see
            raise RuntimeError(f"the Dask workers wrote every tile, but {missing} of {len(tiles.pairs())} are not in "
                               f"the store {out!r} as this process sees it: the store must be on storage that every "
                               "worker and this process share (a shared file system, or object storage)")
        return writer.arrays

    def each(pairs: list[tuple[int, int]], compute: Callable[[int, int], Any]) -> None:
        with torch.no_grad():
            for i, j in progress(pairs, total=len(pairs), desc=desc, enabled=show_progress, minimum=64):
                compute(i, j)

    store.write_tiles(writer, tiles, todo, each)
    return writer.arrays


def map_row_blocks(tiles: KernelTiles, fn: Callable[[slice, list[torch.Tensor]], Any], *, block: int | None = None,
                   desc: str = "kernel pass", show_progress: bool | None = None, client: Any = None) -> Iterator[Any]:
    """fn(rows, [K[rows, :] for each name]) for consecutive blocks of rows, yielded in order.

    Each block of full rows is built from tiles of at most `tiles.tile` columns; only one block is in
    memory at a time (block x m entries per name). The building block of streamed solver passes.

    client: a `dask.distributed.Client`: each block and fn on it run as a Dask task (fn is cloudpickled and
        sent once); the results still come in order.
    """
    blocks = row_blocks(tiles.n, tiles.tile if block is None else block)
    if client is not None:
        return distributed.map_row_blocks(client, tiles, fn, blocks, desc=desc, show_progress=show_progress)
    return local_row_blocks(tiles, fn, blocks, desc=desc, show_progress=show_progress)


def matmul(tiles: KernelTiles, V: torch.Tensor, *, name_index: int = 0, desc: str = "kernel matvec",
           show_progress: bool | None = None, client: Any = None) -> torch.Tensor:
    """K V for the kernel `tiles.names[name_index]` and V (m, k), without storing K: (n, k).

    A symmetric kernel computes only the tiles on and above the diagonal and uses each twice
    (K_ij V_j into rows i, K_ij^T V_i into rows j): half the kernel evaluations.

    client: a `dask.distributed.Client`: the tile products run as Dask tasks and are added up in the same
        order as in one process (the same result, bitwise, with the same number of BLAS threads).
    """
    V = check_matmul(tiles, V)
    out = torch.zeros(tiles.n, V.shape[1], dtype=tiles.dtype, device=tiles.device)
    if client is not None:
        distributed.matmul(client, tiles, V, out, name_index, desc=desc, show_progress=show_progress)
        return out
    return local_matmul(tiles, V, out, name_index, desc=desc, show_progress=show_progress)
