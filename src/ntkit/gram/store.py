"""Resumable on-disk Grams: a kernel's tiles written into a zarr store, each finished tile recorded.

A store is a zarr group (a folder "K.zarr", or any zarr group: object storage included) holding

- one (n, m) array per kernel name ("ntk", "nngp"), chunked exactly like the tiles, so each tile is one
  chunk and two writers never touch the same chunk;
- "done", a uint8 array with one entry per tile (chunks of one entry, so each record is its own object),
  set to 1 only after the tile and, for a symmetric kernel, its mirror are written. A chunk of a local store
  is written to a temporary file and renamed into place (by zarr, or past the page cache by
  `ntkit.gram.direct`), so after a kill at any moment a tile is either recorded finished with all its
  values written, or it is computed again;
- attributes "ntkit": the format marker, the `KernelTiles.fingerprint()` of the inputs and settings, and
  what they describe (shape, names, dtype, tile edge), so a store made for other inputs is refused.

Every chunk carries a CRC-32C checksum (zarr's `crc32c` codec), compared whenever it is read. Running the same
computation on the same store again resumes it: only the tiles not recorded, and the recorded tiles whose chunks
are missing or fail their checksum (`ntkit.gram.integrity`), are computed. `verify` checks a store on request.
`stored_tiles` reads a finished store back as a `KernelTiles`, so `matmul`, `map_row_blocks` and the solvers
stream a stored Gram from disk as they stream one recomputed from X (both in `stored.py`, importable from here; the
format marker, the record of finished tiles and the opening of an existing store are in `store_format.py`). zarr is
imported only when a store is used (`pip install "ntkit[dask]"`). Filling a store (in one process or on Dask) is
`ntkit.gram.dispatch`'s.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import integrity
from .store_format import DONE, FORMAT, VERSION, check_info, recorded, require_zarr, store_arrays, where_of
from .stored import StoredTile, stored_tiles, verify
from .tiles import KernelTiles, put, symmetric_tiles

__all__ = ["DONE", "FORMAT", "VERSION", "Background", "StoredTile", "TileWriter", "checksum_codec", "is_store",
           "open_store", "record", "recorded", "require_zarr", "stored_tiles", "to_resume", "verify", "write_tiles"]

def checksum_codec(group: Any) -> Any:
    """The CRC-32C codec for the arrays of `group`: zarr's own for format 3, numcodecs' for format 2 (a group the
    caller made with zarr_format=2)."""
    require_zarr()
    if group.metadata.zarr_format == 2:
        import numcodecs

        return numcodecs.CRC32C()
    import zarr.codecs

    return zarr.codecs.Crc32cCodec()


def is_store(out: Any) -> bool:
    """Whether `out` asks for a zarr store: a path (str or os.PathLike) ending in ".zarr", or a zarr group.
    Other paths are refused: an array output must be an array."""
    if isinstance(out, (str, os.PathLike)):
        if not os.fspath(out).rstrip("/").endswith(".zarr"):
            raise ValueError(f"out as a path must name a zarr store ending in '.zarr', got {os.fspath(out)!r}")
        return True
    zarr = sys.modules.get("zarr")  # a zarr object exists only if zarr was imported
    if zarr is None:
        return False
    if isinstance(out, zarr.Array):
        raise TypeError("out as a zarr object must be the zarr group that holds the Gram (its record of finished "
                        "tiles lives beside the arrays), not a zarr array; or pass a path ending in '.zarr'")
    return isinstance(out, zarr.Group)


def record(tiles: KernelTiles) -> dict[str, Any]:
    """What a store says about the Gram it holds (its "ntkit" attribute)."""
    return {"format": FORMAT, "version": VERSION, "fingerprint": tiles.fingerprint(), "shape": [tiles.n, tiles.m],
            "names": list(tiles.names), "symmetric": tiles.symmetric, "dtype": str(tiles.dtype).removeprefix("torch."),
            "tile": tiles.tile, "describe": tiles.describe}


class TileWriter:
    """Writes finished tiles into a store's arrays and records them: the one writer used in one process and on
    Dask workers (it pickles as its zarr arrays do: by the store's location)."""

    def __init__(self, arrays: list[Any], done: Any, tile: int):
        self.arrays, self.done, self.tile = arrays, done, tile

    def finished(self) -> np.ndarray:
        """(tiles down, tiles across) bools: which tiles are recorded as written."""
        return recorded(self.done)

    def write(self, tiles: KernelTiles, i: int, j: int, blocks: list[torch.Tensor]) -> None:
        """Write the tile at (i, j) (and its mirror), then record it: never recorded unless every chunk of it was
        written. A failed write (a full disk, an I/O error) raises an OSError naming the store and the tile."""
        try:
            put(tiles, self.arrays, i, j, blocks)
        except OSError as exc:
            where = self.done.store_path.store
            raise OSError(exc.errno, f"writing the kernel tile at rows {i}, columns {j} into the store {where} "
                                     f"failed ({exc.strerror or exc}); it is not recorded as finished: fix the "
                                     "cause and run the same call again to resume") from exc
        self.mark(i, j)

    def mark(self, i: int, j: int) -> None:
        self.done[i // self.tile, j // self.tile] = 1


def write_tiles(writer: TileWriter, tiles: KernelTiles, pairs: Sequence[tuple[int, int]],
                each: Callable[[Sequence[tuple[int, int]], Callable[[int, int], Any]], Any]) -> None:
    """Compute the tiles at `pairs` and write each whole tile, then its record, on a second thread (`Background`)
    while the next is computed: each(pairs, compute) runs compute(i, j) over the pairs (with a progress bar in one
    process, naming a failed tile on a Dask worker). A failed write raises here, and its tile is never recorded."""
    background = Background()
    try:
        each(pairs, lambda i, j: background.submit(writer.write, tiles, i, j, symmetric_tiles(tiles, i, j)))
    finally:
        background.close()


class Background:
    """Runs writes in one background thread, in the order given, with at most `depth` waiting: the next tile is
    computed while the last one is written. A failed write raises in the caller's thread."""

    def __init__(self, depth: int = 4):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ntkit-store")
        self.pending: deque[Future] = deque()
        self.depth = depth

    def submit(self, fn: Any, *args: Any) -> None:
        self.pending.append(self.pool.submit(fn, *args))
        while len(self.pending) > self.depth:
            self.pending.popleft().result()

    def close(self) -> None:
        """Wait for every write (also when the computation failed: the tiles queued are whole and recorded)."""
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True)


def _open_path(path: Path, tiles: KernelTiles) -> Any:
    """The zarr group at `path`: validated if it exists, else created whole under a temporary name and renamed
    into place (a kill while creating it leaves no half-made store at `path`). Its large chunks are written
    past the page cache (`direct.DirectStore`)."""
    zarr = require_zarr()
    from .direct import DirectStore

    if path.exists():
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # an empty folder: make the store in its place
        else:
            try:
                group = zarr.open_group(DirectStore(path), mode="r+")
            except Exception as exc:
                raise ValueError(f"out {str(path)!r} exists but is not an ntkit Gram store ({exc}); "
                                 "choose a new path or delete it") from exc
            _check_writable(path)
            return group
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"out {str(path)!r}: cannot create its folder {str(parent)!r}: {exc}") from exc
    _check_writable(parent)
    partial = parent / f".{path.name}.{uuid.uuid4().hex}.partial"
    try:
        _initialize(zarr.open_group(str(partial), mode="w", zarr_format=3), tiles)
        os.rename(partial, path)
    except OSError as exc:
        raise ValueError(f"out {str(path)!r} could not be created: {exc}") from exc
    finally:
        if partial.exists():
            import shutil

            shutil.rmtree(partial, ignore_errors=True)
    return zarr.open_group(DirectStore(path), mode="r+")


def _check_writable(folder: Path) -> None:
    """Fail before any work if files cannot be created in `folder` (a read-only disk, missing permissions)."""
    probe = folder / f".ntkit-write-test-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"out {str(folder)!r} is not writable: {exc}") from exc


def _initialize(group: Any, tiles: KernelTiles) -> None:
    """Create the Gram arrays and the record of finished tiles in an empty group; the ntkit attribute last."""
    down, across = -(-tiles.n // tiles.tile), -(-tiles.m // tiles.tile)
    dtype = str(tiles.dtype).removeprefix("torch.")
    checksum = [checksum_codec(group)]  # kernel values hardly compress: a checksum only
    for name in tiles.names:  # NaN marks entries not yet computed
        group.create_array(name, shape=(tiles.n, tiles.m), chunks=(tiles.tile, tiles.tile), dtype=dtype,
                           fill_value=np.nan, compressors=checksum)
    group.create_array(DONE, shape=(down, across), chunks=(1, 1), dtype="uint8", fill_value=0, compressors=checksum)
    group.attrs["ntkit"] = record(tiles)


def open_store(out: Any, tiles: KernelTiles) -> tuple[TileWriter, KernelTiles]:
    """Open (create, or validate and resume) the store `out` for the Gram of `tiles`.

    Returns its writer and `tiles` with the store's tile edge (tiles and chunks must coincide; a different
    `tiles.tile` is overridden with a warning). Raises ValueError for a path that exists but is not an ntkit store,
    a store of other inputs or settings, a damaged store, a kernel that cannot be fingerprinted, and a location
    that cannot be written; all before any tile is computed.
    """
    where = f"out {where_of(out)}"
    tiles.check_fingerprint()
    if isinstance(out, (str, os.PathLike)):
        group = _open_path(Path(os.fspath(out)).expanduser().absolute(), tiles)  # workers may run elsewhere
    else:
        group = out
        if group.read_only:
            raise ValueError(f"{where} is opened read-only: open it with mode='r+' or 'a' to write the Gram")
        if "ntkit" not in group.attrs:
            if len(list(group.keys())):
                raise ValueError(f"{where} is a zarr group that holds other data, not an ntkit Gram store; "
                                 "pass an empty group or a new path")
            _initialize(group, tiles)
    info = check_info(group.attrs.get("ntkit"), where)
    if info.get("fingerprint") != tiles.fingerprint():
        theirs = {key: info.get(key) for key in ("shape", "names", "dtype", "describe")}
        ours = {key: value for key, value in record(tiles).items() if key in theirs}
        differ = [f"{key}: store {theirs[key]!r}, now {ours[key]!r}" for key in theirs if theirs[key] != ours[key]]
        raise ValueError(f"{where} holds the Gram of other inputs or settings (fingerprints differ"
                         f"{'; ' + '; '.join(differ) if differ else ': the inputs differ'}). Use a new path, or "
                         "delete the store to start again")
    arrays, done = store_arrays(group, tiles.names, where)
    # write_empty_chunks is a setting of the opened array, not of the store: without it zarr compares every
    # chunk with the fill value before writing it (which cost 3x the write itself)
    arrays = [array.with_config({"write_empty_chunks": True}) for array in arrays]
    tile = int(info["tile"])
    if tile != tiles.tile:
        warnings.warn(f"{where} was made with tiles of {tile}; it is resumed with those, not tile={tiles.tile} (the "
                      "values of the tiles computed now may differ from a fresh run with tile="
                      f"{tiles.tile} by rounding)", UserWarning, stacklevel=3)
        tiles = dataclasses.replace(tiles, tile=tile)
    return TileWriter(arrays, done, tile), tiles


def to_resume(writer: TileWriter, tiles: KernelTiles, out: Any) -> np.ndarray:
    """(tiles down, tiles across) bools: the tiles to skip when resuming, those recorded as finished whose chunks
    are all present and pass their checksums. Recorded tiles that fail are computed again, with a warning that
    names them."""
    finished = writer.finished()
    bad = integrity.check(writer.arrays, tiles.names, zip(*np.nonzero(finished), strict=True), tiles.symmetric)
    if bad:
        for row, col in integrity.bad_positions(bad):
            finished[row, col] = False
        shown = "; ".join(f"tile ({b.row}, {b.col}) of {b.name!r}: {b.reason}" for b in bad[:5])
        count = len(integrity.bad_positions(bad))
        warnings.warn(f"the store {where_of(out)} records {count} tile(s) as finished whose "
                      f"chunks are missing or damaged ({shown}{'; ...' if len(bad) > 5 else ''}): computing them "
                      "again", UserWarning, stacklevel=3)
    return finished
