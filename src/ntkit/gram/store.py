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
stream a stored Gram from disk as they stream one recomputed from X. zarr is imported only here, when a store
is used (`pip install "ntkit[dask]"`). Filling a store (in one process or on Dask) is `ntkit.gram.dispatch`'s.
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
from .integrity import BadTile
from .tiles import KernelTiles, put, symmetric_tiles

FORMAT = "ntkit-gram-store"
VERSION = 2  # 2: every chunk carries a CRC-32C checksum (version 1 had none)
DONE = "done"


def require_zarr() -> Any:
    """The zarr module, or an ImportError that says how to install it."""
    try:
        import zarr
    except ImportError as exc:
        raise ImportError('writing a Gram to a zarr store needs zarr >= 3.1: pip install "ntkit[dask]"') from exc
    return zarr


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


def _where(out: Any) -> str:
    return repr(os.fspath(out)) if isinstance(out, (str, os.PathLike)) else repr(out)


def _check_info(info: Any, where: str) -> dict[str, Any]:
    """The store's "ntkit" attribute, validated: an ntkit Gram store of this format version."""
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{where} is a zarr store but not an ntkit Gram store (no ntkit attribute); "
                         "choose a new path or delete it")
    if info.get("version") != VERSION:
        raise ValueError(f"{where} is an ntkit Gram store of format version {info.get('version')}, this ntkit reads "
                         f"version {VERSION} (its chunks carry checksums): delete it and compute the Gram again")
    return info


def _arrays(group: Any, names: Sequence[str], where: str) -> tuple[list[Any], Any]:
    """The arrays `names` and the record of finished tiles of a store, or a ValueError naming what is broken."""
    zarr = require_zarr()
    try:
        arrays, done = [group[name] for name in names], group[DONE]
    except Exception as exc:  # a missing array (KeyError) or broken array metadata (JSON, zarr errors)
        raise ValueError(f"{where} is a damaged ntkit Gram store (cannot open its array {exc}: "
                         f"{type(exc).__name__}); delete it and compute the Gram again") from exc
    if not all(isinstance(array, zarr.Array) for array in [*arrays, done]):
        raise ValueError(f"{where} is not a valid ntkit Gram store; delete it to start again")
    return arrays, done


def open_store(out: Any, tiles: KernelTiles) -> tuple[TileWriter, KernelTiles]:
    """Open (create, or validate and resume) the store `out` for the Gram of `tiles`.

    Returns its writer and `tiles` with the store's tile edge (tiles and chunks must coincide; a different
    `tiles.tile` is overridden with a warning). Raises ValueError for a path that exists but is not an ntkit store,
    a store of other inputs or settings, a damaged store, a kernel that cannot be fingerprinted, and a location
    that cannot be written; all before any tile is computed.
    """
    where = f"out {_where(out)}"
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
    info = _check_info(group.attrs.get("ntkit"), where)
    if info.get("fingerprint") != tiles.fingerprint():
        theirs = {key: info.get(key) for key in ("shape", "names", "dtype", "describe")}
        ours = {key: value for key, value in record(tiles).items() if key in theirs}
        differ = [f"{key}: store {theirs[key]!r}, now {ours[key]!r}" for key in theirs if theirs[key] != ours[key]]
        raise ValueError(f"{where} holds the Gram of other inputs or settings (fingerprints differ"
                         f"{'; ' + '; '.join(differ) if differ else ': the inputs differ'}). Use a new path, or "
                         "delete the store to start again")
    arrays, done = _arrays(group, tiles.names, where)
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
        warnings.warn(f"the store {_where(out)} records {len(integrity.bad_positions(bad))} tile(s) as finished whose "
                      f"chunks are missing or damaged ({shown}{'; ...' if len(bad) > 5 else ''}): computing them "
                      "again", UserWarning, stacklevel=3)
    return finished


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


def _open_read(out: Any) -> tuple[Any, dict[str, Any], str]:
    """(group, its validated "ntkit" attribute, a printable name) of an existing store, opened read-only."""
    zarr = require_zarr()
    where = f"the store {_where(out)}"
    if isinstance(out, (str, os.PathLike)):
        path = Path(os.fspath(out)).expanduser().absolute()
        if not path.exists():
            raise ValueError(f"{where} does not exist")
        try:
            group = zarr.open_group(str(path), mode="r")
            info = group.attrs.get("ntkit")
        except Exception as exc:
            raise ValueError(f"{where} is not an ntkit Gram store (cannot read it: {type(exc).__name__}: {exc})"
                             ) from exc
    else:
        group = out
        info = group.attrs.get("ntkit")
    return group, _check_info(info, where), where


def _pairs(info: dict[str, Any]) -> list[tuple[int, int]]:
    """Indices (in the grid of tiles) of every tile a finished store holds (the upper triangle when symmetric)."""
    n, m = info["shape"]
    tile, symmetric = int(info["tile"]), bool(info["symmetric"])
    down, across = -(-n // tile), -(-m // tile)
    return [(i, j) for i in range(down) for j in range(i if symmetric else 0, across)]


def verify(out: Any) -> list[BadTile]:
    """Check every tile of the store `out` (a path ending in ".zarr", or a zarr group): recorded as finished, each
    of its chunks present and matching its checksum. Returns the bad tiles (`integrity.BadTile`: indices in the
    grid of tiles, the array, the reason; a tile never finished has name "done"); an empty list means the store
    holds its whole Gram intact. Raises ValueError for what is not an ntkit Gram store."""
    group, info, where = _open_read(out)
    arrays, done = _arrays(group, info["names"], where)
    finished = recorded(done)
    pairs = _pairs(info)
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
    group, info, where = _open_read(out)
    wanted = tuple(info["names"]) if names is None else ((names,) if isinstance(names, str) else tuple(names))
    unknown = [name for name in wanted if name not in info["names"]]
    if unknown:
        raise ValueError(f"names {unknown} are not in {where}, which holds {info['names']}")
    n, m = info["shape"]
    tile, symmetric = int(info["tile"]), bool(info["symmetric"])
    arrays, done = _arrays(group, wanted, where)
    finished = recorded(done)
    pairs = _pairs(info)
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
