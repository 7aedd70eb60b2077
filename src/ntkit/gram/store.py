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

Running the same computation on the same store again resumes it: only the tiles not recorded are computed.
`stored_tiles` reads a finished store back as a `KernelTiles`, so `matmul`, `map_row_blocks` and the solvers
stream a stored Gram from disk as they stream one recomputed from X. zarr is imported only here, when a store
is used (`pip install "ntkit[dask]"`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .tiles import KernelTiles, fill, put

FORMAT = "ntkit-gram-store"
VERSION = 1
DONE = "done"


def require_zarr() -> Any:
    """The zarr module, or an ImportError that says how to install it."""
    try:
        import zarr
    except ImportError as exc:
        raise ImportError('writing a Gram to a zarr store needs zarr >= 3.1: pip install "ntkit[dask]"') from exc
    return zarr


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
        """Write the tile at (i, j) (and its mirror), then record it: never recorded before it is written."""
        put(tiles, self.arrays, i, j, blocks)
        self.mark(i, j)

    def mark(self, i: int, j: int) -> None:
        self.done[i // self.tile, j // self.tile] = 1


def recorded(done: Any) -> np.ndarray:
    """The record `done` as bools (True: the tile is written). Each entry is a chunk of its own, stored only
    once set to 1 (0, the fill value, is never written), so on a store that lists its keys the record is read
    by listing its chunks: milliseconds, where reading 1,600 one-byte chunks took 0.3 s."""
    store = done.store_path.store
    if getattr(store, "supports_listing", False):
        try:
            from zarr.core.sync import sync

            async def keys() -> list[str]:
                return [key async for key in store.list_prefix(f"{done.path}/")]

            present = set(sync(keys()))
        except (ImportError, AttributeError, NotImplementedError):
            pass
        else:
            down, across = done.shape
            return np.array([[f"{done.path}/{done.metadata.encode_chunk_key((i, j))}" in present
                              for j in range(across)] for i in range(down)], dtype=bool).reshape(down, across)
    return np.asarray(done[...]) == 1


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


class Deferred:
    """An array whose item assignments `Background` carries out (what `tiles.write` needs of an output)."""

    def __init__(self, array: Any, background: Background):
        self.array, self.background = array, background

    def __setitem__(self, key: Any, value: Any) -> None:
        self.background.submit(self.array.__setitem__, key, value)


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
    for name in tiles.names:  # NaN marks entries not yet computed; kernel values hardly compress
        group.create_array(name, shape=(tiles.n, tiles.m), chunks=(tiles.tile, tiles.tile), dtype=dtype,
                           fill_value=np.nan, compressors=None)
    group.create_array(DONE, shape=(down, across), chunks=(1, 1), dtype="uint8", fill_value=0)
    group.attrs["ntkit"] = record(tiles)


def open_store(out: Any, tiles: KernelTiles) -> tuple[TileWriter, KernelTiles]:
    """Open (create, or validate and resume) the store `out` for the Gram of `tiles`.

    Returns its writer and `tiles` with the store's tile edge (tiles and chunks must coincide). Raises
    ValueError for a path that exists but is not an ntkit store, a store of other inputs or settings, and a
    location that cannot be written; all before any tile is computed.
    """
    zarr = require_zarr()
    where = repr(os.fspath(out)) if isinstance(out, (str, os.PathLike)) else repr(out)
    if isinstance(out, (str, os.PathLike)):
        group = _open_path(Path(os.fspath(out)).expanduser().absolute(), tiles)  # workers may run elsewhere
    else:
        group = out
        if group.read_only:
            raise ValueError(f"out {where} is opened read-only: open it with mode='r+' or 'a' to write the Gram")
        if "ntkit" not in group.attrs:
            if len(list(group.keys())):
                raise ValueError(f"out {where} is a zarr group that holds other data, not an ntkit Gram store; "
                                 "pass an empty group or a new path")
            _initialize(group, tiles)
    info = group.attrs.get("ntkit")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"out {where} is a zarr store but not an ntkit Gram store (no ntkit attribute); "
                         "choose a new path or delete it")
    if info.get("version") != VERSION:
        raise ValueError(f"out {where} is an ntkit Gram store of format version {info.get('version')}, "
                         f"this ntkit reads version {VERSION}")
    if info.get("fingerprint") != tiles.fingerprint():
        theirs = {key: info.get(key) for key in ("shape", "names", "dtype", "describe")}
        ours = {key: value for key, value in record(tiles).items() if key in theirs}
        differ = [f"{key}: store {theirs[key]!r}, now {ours[key]!r}" for key in theirs if theirs[key] != ours[key]]
        raise ValueError(f"out {where} holds the Gram of other inputs or settings (fingerprints differ"
                         f"{'; ' + '; '.join(differ) if differ else ': the inputs differ'}). Use a new path, or "
                         "delete the store to start again")
    tile = int(info["tile"])
    try:
        # write_empty_chunks is a setting of the opened array, not of the store: without it zarr compares every
        # chunk with the fill value before writing it (which cost 3x the write itself)
        arrays = [group[name].with_config({"write_empty_chunks": True}) for name in tiles.names]
        done = group[DONE]
    except KeyError as exc:
        raise ValueError(f"out {where} is an incomplete ntkit Gram store (missing {exc}); delete it to start again"
                         ) from exc
    if not all(isinstance(array, zarr.Array) for array in [*arrays, done]):
        raise ValueError(f"out {where} is not a valid ntkit Gram store; delete it to start again")
    if tile != tiles.tile:
        tiles = dataclasses.replace(tiles, tile=tile)
    return TileWriter(arrays, done, tile), tiles


def evaluate(tiles: KernelTiles, out: Any, *, client: Any = None, show_progress: bool | None = None,
             desc: str = "kernel") -> list[Any]:
    """Fill the store `out` with the Gram of `tiles`, skipping the tiles it records as finished.

    Returns the store's zarr arrays, one per name (`array[...]` reads it as NumPy). With `client`, Dask workers
    compute the tiles and write them straight into the store (it must be reachable from the workers).
    """
    writer, tiles = open_store(out, tiles)
    finished = writer.finished()
    tile = writer.tile

    def skip(i: int, j: int) -> bool:
        return bool(finished[i // tile, j // tile])

    if client is not None:
        from . import distributed

        distributed.fill_store(client, tiles, writer, skip, desc=desc, show_progress=show_progress)
        finished = writer.finished()
        missing = sum(1 for i, j in tiles.pairs() if not finished[i // tile, j // tile])
        if missing:  # the workers wrote somewhere this process does not see
            raise RuntimeError(f"the Dask workers wrote every tile, but {missing} of {len(tiles.pairs())} are not in "
                               f"the store {out!r} as this process sees it: the store must be on storage that every "
                               "worker and this process share (a shared file system, or object storage)")
    else:  # one FIFO writer thread: a tile's chunks, then its record
        background = Background()
        try:
            with torch.no_grad():
                fill(tiles, [Deferred(array, background) for array in writer.arrays], desc=desc,
                     show_progress=show_progress, skip=skip, done=lambda i, j: background.submit(writer.mark, i, j))
        finally:
            background.close()
    return writer.arrays


class StoredTile:
    """The tile function of a finished store: (rows, cols) -> the stored tiles, read from disk (picklable)."""

    def __init__(self, arrays: list[Any]):
        self.arrays = arrays

    def __call__(self, rows: Any, cols: Any) -> list[torch.Tensor]:
        selection = tuple(index if isinstance(index, slice) else index.cpu().numpy() for index in (rows, cols))
        return [torch.from_numpy(np.ascontiguousarray(array.get_orthogonal_selection(selection)))
                for array in self.arrays]

    def diag(self, rows: Any) -> list[torch.Tensor]:
        index = np.arange(self.arrays[0].shape[0])[rows if isinstance(rows, slice) else rows.cpu().numpy()]
        return [torch.from_numpy(np.asarray(array.vindex[index, index])) for array in self.arrays]


def stored_tiles(out: Any, names: str | tuple[str, ...] | None = None) -> KernelTiles:
    """A finished store (a path ending in ".zarr", or a zarr group) as a `KernelTiles` that reads its tiles
    from disk: for `matmul`, `map_row_blocks` and the solvers (`solvers.KernelOperator`), in this process or on
    Dask workers that reach the store. `names`: the kernels to read (default: all the store holds).

    Raises ValueError for what is not an ntkit store and for a store with unfinished tiles."""
    zarr = require_zarr()
    if isinstance(out, (str, os.PathLike)):
        path = Path(os.fspath(out)).expanduser().absolute()
        try:
            group = zarr.open_group(str(path), mode="r")
        except Exception as exc:
            raise ValueError(f"{os.fspath(out)!r} is not an ntkit Gram store ({exc})") from exc
    else:
        group = out
    info = group.attrs.get("ntkit")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{out!r} is not an ntkit Gram store (no ntkit attribute)")
    wanted = tuple(info["names"]) if names is None else ((names,) if isinstance(names, str) else tuple(names))
    unknown = [name for name in wanted if name not in info["names"]]
    if unknown:
        raise ValueError(f"names {unknown} are not in the store {out!r}, which holds {info['names']}")
    n, m = info["shape"]
    tile, symmetric = int(info["tile"]), bool(info["symmetric"])
    finished = recorded(group[DONE])
    pairs = [(i, j) for i in range(0, n, tile) for j in range(i if symmetric else 0, m, tile)]
    missing = sum(1 for i, j in pairs if not finished[i // tile, j // tile])
    if missing:
        raise ValueError(f"the store {out!r} is unfinished ({missing} of {len(pairs)} tiles missing): run the same "
                         "kernel call with this out= again to finish it")
    reader = StoredTile([group[name] for name in wanted])
    return KernelTiles(reader, n, m, wanted, symmetric, getattr(torch, info["dtype"]), torch.device("cpu"), tile,
                       describe=f"stored: {info['describe']} ({info['fingerprint']})",
                       diag=reader.diag if symmetric else None)
