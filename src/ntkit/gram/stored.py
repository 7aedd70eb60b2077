"""Reading a finished Gram store back: `stored_tiles` (a `KernelTiles` whose tiles are read from disk, every chunk
checked against its checksum) and `verify` (every tile of a store checked on request). The writing side is
`store.py`, which also makes both names importable from there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import integrity
from .integrity import BadTile
from .store_format import DONE, open_read, recorded, store_arrays, tile_pairs
from .tiles import KernelTiles


class StoredTile:
    """The tile function of a finished store: (rows, cols) -> the stored tiles, read from disk (picklable).
    A chunk that fails its checksum or cannot be decoded raises a ValueError naming the store and the chunk."""

    def __init__(self, arrays: list[Any], where: str):
        self.arrays, self.where = arrays, where

    def _read(self, array: Any, selection: tuple[Any, Any], read: Any) -> np.ndarray:
        try:
            return np.ascontiguousarray(read(selection))
        except Exception as exc:
            chunks = integrity.selection_chunks(selection, array.chunks, array.shape)
            problems = [f"{integrity.chunk_key(array, c)!r}: {problem}" for c in chunks
                        if (problem := integrity.chunk_problem(array, c, None)) is not None]
            raise ValueError(f"reading the store {self.where} failed ({type(exc).__name__}: {exc}); damaged: "
                             f"{'; '.join(problems) or 'no single chunk found'}. `ntkit.gram.store.verify` lists "
                             "every damaged tile; compute the Gram again into this store to repair it") from exc

    def __call__(self, rows: Any, cols: Any) -> list[torch.Tensor]:
        selection = tuple(index if isinstance(index, slice) else index.cpu().numpy() for index in (rows, cols))
        return [torch.from_numpy(self._read(array, selection, array.get_orthogonal_selection))
                for array in self.arrays]

    def diag(self, rows: Any) -> list[torch.Tensor]:
        index = np.arange(self.arrays[0].shape[0])[rows if isinstance(rows, slice) else rows.cpu().numpy()]
        return [torch.from_numpy(self._read(array, (index, index), lambda sel, a=array: a.vindex[sel]))
                for array in self.arrays]


def verify(out: Any) -> list[BadTile]:
    """Check every tile of the store `out` (a path ending in ".zarr", or a zarr group): recorded as finished, each
    of its chunks present and matching its checksum. Returns the bad tiles (`integrity.BadTile`: indices in the
    grid of tiles, the array, the reason; a tile never finished has name "done"); an empty list means the store
    holds its whole Gram intact. Raises ValueError for what is not an ntkit Gram store."""
    group, info, where = open_read(out)
    arrays, done = store_arrays(group, info["names"], where)
    finished = recorded(done)
    pairs = tile_pairs(info)
    unfinished = [BadTile(i, j, DONE, "not computed yet") for i, j in pairs if not finished[i, j]]
    done_pairs = [(i, j) for i, j in pairs if finished[i, j]]
    return sorted(unfinished + integrity.check(arrays, info["names"], done_pairs, bool(info["symmetric"])))


def stored_tiles(out: Any, names: str | tuple[str, ...] | None = None) -> KernelTiles:
    """A finished store (a path ending in ".zarr", or a zarr group) as a `KernelTiles` that reads its tiles
    from disk: for `matmul`, `map_row_blocks` and the solvers (`solvers.KernelOperator`), in this process or on
    Dask workers that reach the store. `names`: the kernels to read (default: all the store holds).

    Every chunk is checked to be present when the store is opened, and against its checksum whenever it is read.
    Raises ValueError for what is not an ntkit store, a store with unfinished tiles or missing chunks, and a
    chunk that fails its checksum (naming the store and the chunk)."""
    group, info, where = open_read(out)
    wanted = tuple(info["names"]) if names is None else ((names,) if isinstance(names, str) else tuple(names))
    unknown = [name for name in wanted if name not in info["names"]]
    if unknown:
        raise ValueError(f"names {unknown} are not in {where}, which holds {info['names']}")
    n, m = info["shape"]
    tile, symmetric = int(info["tile"]), bool(info["symmetric"])
    arrays, done = store_arrays(group, wanted, where)
    finished = recorded(done)
    pairs = tile_pairs(info)
    missing = sum(1 for i, j in pairs if not finished[i, j])
    if missing:
        raise ValueError(f"{where} is unfinished ({missing} of {len(pairs)} tiles missing): run the same "
                         "kernel call with this out= again to finish it")
    absent = [f"{integrity.chunk_key(array, c)!r}" for array in arrays if (keys := integrity.listed_keys(array))
              is not None for i, j in pairs for c in integrity.tile_chunks(i, j, symmetric)
              if integrity.chunk_key(array, c) not in keys]
    if absent:
        raise ValueError(f"{where} records every tile as finished but {len(absent)} chunk(s) are missing "
                         f"({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''}): run the same kernel call "
                         "with this out= again to compute them")
    reader = StoredTile(arrays, where)
    return KernelTiles(reader, n, m, wanted, symmetric, getattr(torch, info["dtype"]), torch.device("cpu"), tile,
                       describe=f"stored: {info['describe']} ({info['fingerprint']})",
                       diag=reader.diag if symmetric else None)
