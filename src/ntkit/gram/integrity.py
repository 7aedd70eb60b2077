"""Checking the chunks of a Gram store: present, and equal to what was written (each carries a CRC-32C).

Every chunk of a store's arrays is encoded with zarr's `crc32c` codec: the checksum of its bytes is appended when
it is written and compared whenever it is decoded. This module checks the chunks of finished tiles without
trusting the record of finished tiles alone: a chunk that is missing (deleted, or a record edited to cover tiles
never written), that fails its checksum (overwritten, zeroed) or that cannot be decoded (truncated) makes its tile
bad. `ntkit.gram.store` uses it when a store is resumed (bad tiles are computed again), opened for reading, and
verified on request (`store.verify`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

WORKERS = 4  # chunks checked at once (reading them is I/O; the checksum of a 2 MB chunk takes about 0.2 ms)


class BadTile(NamedTuple):
    """A tile of a store that cannot be trusted: `row`, `col` its indices in the grid of tiles, `name` the array
    ("ntk", "nngp", or "done" for a tile never recorded as finished), `reason` what is wrong."""

    row: int
    col: int
    name: str
    reason: str


def chunk_key(array: Any, coords: tuple[int, int]) -> str:
    """The store key of the chunk at `coords` (indices in the grid of chunks) of a zarr array."""
    return f"{array.path}/{array.metadata.encode_chunk_key(coords)}" if array.path else \
        array.metadata.encode_chunk_key(coords)


def listed_keys(array: Any) -> set[str] | None:
    """Every key under the array's folder, or None where the store cannot list."""
    store = array.store_path.store
    if not getattr(store, "supports_listing", False):
        return None
    from zarr.core.sync import sync

    async def keys() -> list[str]:
        return [key async for key in store.list_prefix(f"{array.path}/")]

    return set(sync(keys()))


def chunk_problem(array: Any, coords: tuple[int, int], present: set[str] | None) -> str | None:
    """Why the chunk at `coords` cannot be trusted, or None: missing, or failing its checksum / decoding."""
    if present is not None and chunk_key(array, coords) not in present:
        return "chunk missing"
    rows, cols = (slice(c * size, (c + 1) * size) for c, size in zip(coords, array.chunks, strict=True))
    try:
        array[rows, cols]
    except Exception as exc:  # zarr's crc32c codec: ValueError; truncated or foreign bytes: decode errors
        return f"chunk unreadable ({type(exc).__name__}: {exc})"
    return None


def tile_chunks(row: int, col: int, symmetric: bool) -> list[tuple[int, int]]:
    """The chunks a finished tile wrote: its own, and its mirror's for a symmetric Gram off the diagonal."""
    return [(row, col)] + ([(col, row)] if symmetric and row != col else [])


def check(arrays: Sequence[Any], names: Sequence[str], tiles: Iterable[tuple[int, int]],
          symmetric: bool) -> list[BadTile]:
    """The bad tiles among `tiles` (indices in the grid of tiles, each recorded as finished), in every array:
    each of its chunks must be present and decode with a matching checksum. Chunks are checked in parallel."""
    tiles = list(tiles)
    present = [listed_keys(array) for array in arrays]
    jobs = [(name, array, keys, tile, coords) for name, array, keys in zip(names, arrays, present, strict=True)
            for tile in tiles for coords in tile_chunks(*tile, symmetric)]

    def run(job: tuple) -> BadTile | None:
        name, array, keys, (row, col), coords = job
        problem = chunk_problem(array, coords, keys)
        if problem is None:
            return None
        return BadTile(row, col, name, f"{problem} at chunk {chunk_key(array, coords)!r}")

    if not jobs:
        return []
    with ThreadPoolExecutor(min(WORKERS, len(jobs)), thread_name_prefix="ntkit-verify") as pool:
        found = [bad for bad in pool.map(run, jobs) if bad is not None]
    seen: set[tuple[int, int, str]] = set()
    unique = []
    for bad in found:  # one entry per tile and array (a tile's mirror chunk may fail too)
        if (bad.row, bad.col, bad.name) not in seen:
            seen.add((bad.row, bad.col, bad.name))
            unique.append(bad)
    return unique


def bad_positions(bad: Iterable[BadTile]) -> set[tuple[int, int]]:
    """The (row, col) tile indices of `bad`."""
    return {(tile.row, tile.col) for tile in bad}


def selection_chunks(selection: tuple[Any, Any], chunks: tuple[int, int], shape: tuple[int, int]
                     ) -> list[tuple[int, int]]:
    """The chunk indices an orthogonal selection (slices or integer arrays, as `StoredTile` reads) touches."""
    def along(index: Any, size: int, length: int) -> np.ndarray:
        points = np.arange(length)[index] if isinstance(index, slice) else np.asarray(index)
        return np.unique(points // size)

    down, across = (along(index, size, length) for index, size, length in zip(selection, chunks, shape, strict=True))
    return [(int(i), int(j)) for i in down for j in across]
