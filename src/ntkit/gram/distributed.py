"""The Dask backend: a kernel's tiles as `dask.distributed` tasks.

Everything here runs the same tile code as one process (`ntkit.gram.tiles`), only scheduled by Dask:

- the `KernelTiles` (its tile function and inputs, `ntkit.gram.packed`: the inputs as out-of-band buffers) is
  scattered once per client (`send`: to one worker; Dask copies it to the others as their tasks need it) and
  reused by every later call on the same object (a solver's passes send X once);
- each task takes the tiles and a run of tile positions (`batches`): its Gram tiles are written by the worker
  straight into a new in-memory Gram that the client made in shared memory (`ntkit.gram.shared`: workers on
  the client's machine), or into a zarr store (`ntkit.gram.store`), which records each tile as finished once
  it is written; or else returned to the client, which writes them into place;
- matrix products and row-block passes return their small pieces, which the client adds up or yields in
  the order one process uses, so the result is bitwise that of one process with the same number of BLAS
  threads (Dask's workers run one each).

Dask retries the tasks of a worker that dies (up to `distributed.scheduler.allowed-failures` times); a
task that raises stops the computation with a RuntimeError naming the tile. Nothing here schedules tasks or
defines a format: Dask schedules and transports, zarr stores, and shared memory is a file the operating
system maps into several processes. Dask is imported only here and in `ntkit.gram.cluster` (starting or reaching
a cluster: `local_cluster`, `connect`, re-exported here) (`pip install "ntkit[dask]"`).
"""

from __future__ import annotations

import itertools
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from typing import Any
from urllib.parse import urlparse

import torch

from ..progress import progress
from . import shared
from .cluster import (  # noqa: F401  (part of this module's interface)
    DEFAULT_HOST,
    MONITOR_CONFIG,
    InsecureConnectionWarning,
    connect,
    local_cluster,
    plain_remote,
    require_distributed,
)
from .packed import Packed
from .store import write_tiles
from .tiles import KernelTiles, add_products, outputs, put, require_room, row_block, symmetric_tiles, tile_products

# ------------------------------------------------------------------------ sending the tile function once
_shared: dict[tuple[int, int], Any] = {}


def share(client: Any, tiles: KernelTiles) -> Any:
    """A future of `tiles`, packed (`ntkit.gram.packed`: its inputs travel without copies): sent on first use
    (`send`), then reused while `tiles` lives (and its future is intact) for the same client. Tasks take it as
    `packed` and call `packed.tiles()`."""
    key = (id(client), id(tiles))
    future = _shared.get(key)
    if future is not None and future.status == "finished" and future.client is client:
        return future
    future = send(client, Packed(tiles))
    _shared[key] = future
    weakref.finalize(tiles, _shared.pop, key, None)
    return future


def send(client: Any, value: Any) -> Any:
    """A future of `value`, scattered to one worker; Dask copies it to every other worker whose task needs it, as
    for any task's input (a worker that joins later included). Not `broadcast=True`: its copies are made by
    Dask's `replicate`, which took 0.1-1.9 s for X at N = 20,000 on two local workers (0.06-0.1 s to one), and
    Dask's Active Memory Manager drops such copies again once no task waits for them."""
    return client.scatter(value, hash=False, direct=_direct(client))


def _direct(client: Any) -> bool:
    """Whether to send data to the workers straight from the client (a third of the time of going through the
    scheduler, for X at N = 20,000 on two local workers): as the client says if it was told
    (`direct_to_workers`), else only when every worker listens on this machine's loopback address (reachable
    for sure; a remote cluster may accept only the scheduler's connections)."""
    if client.direct_to_workers is not None:
        return bool(client.direct_to_workers)

    def here(address: str) -> bool:
        url = urlparse(address)
        host = url.hostname or ""
        return url.scheme == "inproc" or host in ("localhost", "::1") or host.startswith("127.")

    addresses = list(client.nthreads())  # every worker (scheduler_info lists only 5 in some Dask versions)
    return bool(addresses) and all(map(here, addresses))


def check_client(client: Any) -> None:
    distributed = require_distributed()
    if not isinstance(client, distributed.Client):
        raise TypeError(f"client must be a dask.distributed.Client, got {type(client).__name__}")
    if client.status != "running":
        raise ValueError(f"client is not connected (status {client.status!r})")


# ------------------------------------------------------------------------------------ the tasks
BATCH = 16  # most tiles per task: the client and scheduler spend milliseconds on each task, on the workers' cores
TASKS_PER_WORKER = 2  # tasks per worker when the tiles are few (a CG pass): fewer, longer tasks cost less; with
# many tiles the runs of BATCH make many more tasks, and the last ones even out the finish

Batch = tuple[tuple[int, int], ...]


def batches(pairs: Sequence[tuple[int, int]], workers: int = 1) -> list[Batch]:
    """Consecutive runs of tile positions, at most `BATCH` long and about `TASKS_PER_WORKER` per worker when
    the tiles are fewer than that many runs of `BATCH`. A lost worker costs its runs."""
    size = max(1, min(BATCH, -(-len(pairs) // (TASKS_PER_WORKER * max(workers, 1)))))
    return [tuple(pairs[start:start + size]) for start in range(0, len(pairs), size)]


def worker_count(client: Any) -> int:
    """The workers the scheduler knows of now (at least 1)."""
    return max(1, len(client.nthreads()))


def each_tile(batch: Batch, compute: Callable[[int, int], Any]) -> list[Any]:
    """compute(i, j) for the tiles of `batch`, in order; a failure names its tile."""
    results = []
    with torch.no_grad():
        for i, j in batch:
            try:
                results.append(compute(i, j))
            except Exception as exc:
                raise RuntimeError(f"the kernel tile at rows {i}, columns {j} failed: {type(exc).__name__}: {exc}"
                                   ) from exc
    return results


def _tile_task(packed: Packed, token: str | None, batch: Batch) -> list[list[torch.Tensor]] | None:
    """The tiles of `batch`: written into the client's shared-memory Gram when this worker mapped it
    (`ntkit.gram.shared`; then None is returned), else returned."""
    tiles = packed.tiles()
    outs = shared.attached(token) if token is not None else None
    if outs is None:
        return each_tile(batch, lambda i, j: [block.cpu() for block in symmetric_tiles(tiles, i, j)])
    each_tile(batch, lambda i, j: put(tiles, outs, i, j, symmetric_tiles(tiles, i, j)))
    return None


def _store_task(packed: Packed, writer: Any, batch: Batch) -> int:
    """Each tile written into the store, then recorded, by a second thread while the next is computed; the
    task ends when all of its tiles are written and recorded."""
    write_tiles(writer, packed.tiles(), batch, each_tile)
    return len(batch)


def _products_task(packed: Packed, V: torch.Tensor, name_index: int,
                   batch: Batch) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    tiles = packed.tiles()
    return each_tile(batch, lambda i, j: tile_products(tiles, V, i, j, name_index))


def _row_task(packed: Packed, fn: Callable, rows: slice) -> Any:
    with torch.no_grad():
        return fn(rows, row_block(packed.tiles(), rows))


RESENDS = 3  # times a run sends its inputs again after Dask lost them with the workers that held them


def _run(client: Any, task: Callable, tiles: KernelTiles, jobs: Sequence[Any], *, sent: Sequence[Any] = (),
         plain: Sequence[Any] = (), what: Callable[[Any], str], desc: str, show_progress: bool | None,
         minimum: int) -> Iterator[tuple[Any, Any]]:
    """Submit task(packed tiles, *sent, *plain, job) for every job, the tiles (`share`) and the values `sent`
    (`send`) as futures of data sent once, `plain` as they are; yield (job, result) as they finish. A task that
    raises cancels the rest and raises a RuntimeError naming its job.

    Dask retries the tasks of a worker that dies, but not data sent from the client: when the only worker that held
    it dies (before another worker copied it, or after Dask's memory manager dropped the copies between passes),
    Dask cancels the tasks that need it. Then the data is sent again and the unfinished jobs are submitted again,
    up to `RESENDS` times."""
    distributed = require_distributed()
    token = uuid.uuid4().hex[:10]
    name = getattr(task, "__name__", "task").strip("_")
    counter = itertools.count()

    def common() -> list[Any]:
        return [share(client, tiles), *(send(client, value) for value in sent), *plain]

    args = common()

    def submit(todo: Sequence[Any]) -> dict[Any, Any]:
        return {client.submit(task, *args, job, key=f"ntkit-{name}-{token}-{next(counter)}", retries=0): job
                for job in todo}

    pending = submit(jobs)

    def results() -> Iterator[tuple[Any, Any]]:
        nonlocal args, pending
        resent = 0
        finished = distributed.as_completed(list(pending), loop=client.loop)
        for future in finished:
            if future not in pending:  # cancelled by a resend below
                continue
            job = pending.pop(future)
            try:
                result = future.result()
            except Exception as exc:
                if isinstance(exc, CancelledError) and resent < RESENDS:  # the inputs were lost: send them again
                    resent += 1
                    client.cancel(list(pending))
                    args = common()
                    pending = submit([job, *pending.values()])
                    finished.update(pending)
                    continue
                raise RuntimeError(f"a Dask worker failed on {what(job)}: {type(exc).__name__}: {exc}") from exc
            yield job, result

    try:
        yield from progress(results(), total=len(jobs), desc=desc, enabled=show_progress, minimum=minimum)
    finally:
        if pending:
            client.cancel(list(pending))


def _batch_name(batch: Batch) -> str:
    (i, j), count = batch[0], len(batch)
    return f"the kernel tile{'s' if count > 1 else ''} from rows {i}, columns {j} ({count} tile{'s' * (count > 1)})"


def fill(client: Any, tiles: KernelTiles, outs: Sequence[Any], *, token: str | None = None, desc: str = "kernel",
         show_progress: bool | None = None) -> int:
    """`tiles.fill` on Dask: the workers compute the tiles, the client writes them into `outs`; workers that
    mapped the shared-memory Gram `token` (`outs` itself) write their tiles there. Returns the number of
    tiles the workers wrote themselves."""
    check_client(client)
    written = 0
    jobs = batches(tiles.pairs(), worker_count(client))
    for batch, blocks in _run(client, _tile_task, tiles, jobs, plain=[token], what=_batch_name, desc=desc,
                              show_progress=show_progress, minimum=16):
        if blocks is None:  # written by the worker
            written += len(batch)
            continue
        for (i, j), tile_blocks in zip(batch, blocks, strict=True):
            put(tiles, outs, i, j, tile_blocks)
    return written


def evaluate(client: Any, tiles: KernelTiles, out: Any, *, desc: str = "kernel",
             show_progress: bool | None = None) -> list[Any]:
    """`tiles.evaluate` into memory on Dask: into the caller's arrays (out), or new tensors (out=None). A new
    Gram on the CPU is made in shared memory when there is room (`ntkit.gram.shared`): the workers on this
    machine write their tiles into it, the others return theirs."""
    check_client(client)
    made = None
    if out is None and tiles.device.type == "cpu":
        require_room(tiles.shape, len(tiles.names), tiles.dtype, tiles.device)
        made = shared.create(tiles.shape, len(tiles.names), tiles.dtype)
    if made is None:
        outs = outputs(out, tiles)
        fill(client, tiles, outs, desc=desc, show_progress=show_progress)
        return outs
    paths, outs = made
    token = shared.new_token()
    try:
        client.run(shared.attach, token, paths, tiles.shape, tiles.dtype)
    finally:
        shared.unlink(paths)  # mapped by every worker that could: nothing is left behind
    try:
        fill(client, tiles, outs, token=token, desc=desc, show_progress=show_progress)
    finally:
        client.run(shared.detach, token)
    return outs


def fill_store(client: Any, tiles: KernelTiles, writer: Any, pairs: Sequence[tuple[int, int]], *,
               desc: str = "kernel", show_progress: bool | None = None) -> None:
    """Fill the tiles at `pairs` of a zarr store on Dask: each worker writes its tiles into the store and records
    them; the client receives only their count."""
    check_client(client)
    store = writer.done.store
    if type(store).__name__ == "MemoryStore":
        raise ValueError("out is a zarr group in this process's memory, which Dask workers cannot write: use a store "
                         "on disk or in object storage that every worker reaches")
    jobs = batches(list(pairs), worker_count(client))
    if not jobs:
        return
    for _ in _run(client, _store_task, tiles, jobs, sent=[writer], what=_batch_name, desc=desc,
                  show_progress=show_progress, minimum=16):
        pass


def matmul(client: Any, tiles: KernelTiles, V: torch.Tensor, out: torch.Tensor, name_index: int, *,
           desc: str = "kernel matvec", show_progress: bool | None = None) -> None:
    """out += K V on Dask: the workers compute each tile's products, the client adds them in the order of
    `tiles.pairs()` (that of one process)."""
    check_client(client)
    pairs = tiles.pairs()
    order = {pair: index for index, pair in enumerate(pairs)}
    waiting: dict[int, Any] = {}
    next_index = 0
    for batch, products in _run(client, _products_task, tiles, batches(pairs, worker_count(client)), sent=[V],
                                plain=[name_index], what=_batch_name, desc=desc, show_progress=show_progress,
                                minimum=16):
        for pair, pair_products in zip(batch, products, strict=True):
            waiting[order[pair]] = pair_products
        while next_index in waiting:
            add_products(tiles, out, *pairs[next_index], waiting.pop(next_index))
            next_index += 1


def map_row_blocks(client: Any, tiles: KernelTiles, fn: Callable, blocks: Sequence[slice], *,
                   desc: str = "kernel pass", show_progress: bool | None = None) -> Iterator[Any]:
    """fn(rows, [K[rows, :] for each name]) for each block of rows, as Dask tasks, yielded in block order."""
    check_client(client)
    order = {(rows.start, rows.stop): index for index, rows in enumerate(blocks)}
    waiting: dict[int, Any] = {}
    next_index = 0

    def what(rows: slice) -> str:
        return f"the kernel rows {rows.start}:{rows.stop}"

    for rows, result in _run(client, _row_task, tiles, list(blocks), sent=[fn], what=what, desc=desc,
                             show_progress=show_progress, minimum=8):
        waiting[order[(rows.start, rows.stop)]] = result
        while next_index in waiting:
            yield waiting.pop(next_index)
            next_index += 1
