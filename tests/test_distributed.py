"""The Dask backend on a local cluster of two worker processes (127.0.0.1): Grams, products and row passes
bitwise equal to one process, a worker killed with SIGKILL in the middle, a worker that raises, bad addresses."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import gram

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
cloudpickle = pytest.importorskip("cloudpickle")
from ntkit.gram import shared  # noqa: E402
from ntkit.gram.distributed import connect, local_cluster  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
pytestmark = pytest.mark.usefixtures("one_thread")  # one BLAS thread, as each worker has: the same bits
SRC = Path(nk.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client():
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def workers(client):
    """The client, with both workers up (a test before may have killed one; its nanny starts a new one)."""
    client.wait_for_workers(2, timeout=60)
    return client


def test_local_workers_run_without_the_profiler_and_with_slower_monitors(workers):
    from ntkit.gram.distributed import MONITOR_CONFIG

    def settings():
        import dask

        monitors = {key: dask.config.get(key) for key in MONITOR_CONFIG}
        return dask.config.get("distributed.worker.profile.enabled"), monitors

    assert list(workers.run(settings).values()) == [(False, MONITOR_CONFIG)] * 2
    ticks = workers.run_on_scheduler(lambda dask_scheduler: dask_scheduler.periodic_callbacks["tick"].callback_time)
    assert ticks == 1000  # milliseconds: the scheduler in this process took the setting too


def test_workers_reuse_freed_memory_once_they_compute_tiles(workers):
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536; a worker's first tile sets glibc's heap
    to keep freed memory for the next tile (`ntkit.memory.reuse_freed_memory`)."""
    import platform

    def first_tile() -> bool | None:
        import ntkit

        tiles = ntkit.MLP(2).kernel_tiles(torch.randn(40, 3, dtype=torch.float64), tile=8)
        tiles(slice(0, 8), slice(0, 8))
        return ntkit.memory._heap_set

    states = workers.run(first_tile)
    assert len(states) == 2
    assert set(states.values()) == {platform.libc_ver()[0] == "glibc"}


def test_inputs_go_straight_to_local_workers_unless_the_client_says_otherwise(workers):
    from ntkit.gram.distributed import _direct

    assert _direct(workers)  # both workers listen on 127.0.0.1
    with distributed.Client(workers.scheduler.address, direct_to_workers=False, set_as_default=False) as other:
        assert not _direct(other)


def test_tasks_hold_runs_of_tiles_long_enough_to_cost_little_and_enough_of_them_to_share():
    from ntkit.gram.distributed import BATCH, TASKS_PER_WORKER, batches

    pairs = [(i, j) for i in range(60) for j in range(i, 60)]  # 1830 tiles
    assert (BATCH, TASKS_PER_WORKER) == (16, 2)
    for workers, size, count in [(1, 16, 115), (2, 16, 115), (100, 10, 183), (1000, 1, 1830)]:
        runs = batches(pairs, workers)
        assert [pair for run in runs for pair in run] == pairs  # every tile once, in order
        assert {len(run) for run in runs[:-1]} == {size} and len(runs) == count
    runs = batches(pairs[:21], 2)  # the 21 tiles of a small CG pass: about two tasks per worker
    assert [len(run) for run in runs] == [6, 6, 6, 3]


def recording(tiles: gram.KernelTiles, folder: Path, kill_at: int | None = None) -> gram.KernelTiles:
    """The same kernel; every tile a worker computes leaves a file in `folder`. With `kill_at`, the worker
    computing the tile numbered `kill_at` (0-based, over all workers) kills itself with SIGKILL, once, in the
    middle of its task."""
    calls, marker, here = str(folder / "calls"), str(folder / "killed"), os.getpid()
    os.makedirs(calls, exist_ok=True)

    def fn(rows, cols):
        if os.getpid() == here:  # tiles computed in this process (a preconditioner's columns) are not counted
            return tiles.fn(rows, cols)
        start = rows.start if isinstance(rows, slice) else int(rows[0])
        open(os.path.join(calls, f"{start}-{cols.start}-{uuid.uuid4().hex}"), "w").close()
        if kill_at is not None and not os.path.exists(marker) and len(os.listdir(calls)) > kill_at:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return tiles.fn(rows, cols)

    return dataclasses.replace(tiles, fn=fn)


def pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


def busy(client) -> bool:
    """Whether the scheduler holds tasks or a worker still runs one (a task of a lost client runs to its end)."""
    running = client.run(lambda dask_worker: len(dask_worker.state.executing))
    return bool(client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) or sum(running.values()))


def executed(client) -> int:
    """Tasks the workers have run so far."""
    return sum(client.run(lambda dask_worker: dask_worker.state.executed_count).values())


@pytest.mark.parametrize("cross", [False, True])
def test_gram_on_two_workers_is_bitwise_the_in_process_gram(workers, cross):
    X = torch.randn(90, 6, dtype=torch.float64)
    Y = torch.randn(50, 6, dtype=torch.float64) if cross else None
    arch = nk.MLP(3, activation="erf", beta=0.2)
    addresses = [workers.scheduler.address, *workers.scheduler_info()["workers"]]
    assert all(address.startswith("tcp://127.0.0.1:") for address in addresses)  # loopback only
    S, K = arch.kernel(X, Y, get=("nngp", "ntk"), tile=16, client=workers)
    S0, K0 = arch.kernel(X, Y, get=("nngp", "ntk"), tile=16)
    assert torch.equal(S, S0) and torch.equal(K, K0)
    out = np.empty((90, 50 if cross else 90))  # the caller's own array
    arch.kernel(X.numpy(), None if Y is None else Y.numpy(), tile=16, out=out, client=workers)
    np.testing.assert_array_equal(out, K0.numpy())


def test_workers_write_the_store_and_resume_it_computing_only_the_missing_tiles(workers, tmp_path):
    X = torch.randn(100, 5, dtype=torch.float64)
    arch = nk.MLP(3)
    tiles = arch.kernel_tiles(X, get=("nngp", "ntk"), tile=16)
    path = tmp_path / "K.zarr"
    partial = dataclasses.replace(tiles, fn=lambda r, c: tiles.fn(r, c) if r.start < 48 else 1 / 0)
    with pytest.raises(ZeroDivisionError):  # in this process: the tiles of the first three rows of tiles
        gram.evaluate(partial, path)
    finished = int(np.asarray(zarr.open_group(str(path))["done"][...]).sum())
    assert finished == 7 + 6 + 5
    stored = gram.evaluate(recording(tiles, tmp_path), path, client=workers)
    assert len(os.listdir(tmp_path / "calls")) == len(tiles.pairs()) - finished
    S0, K0 = gram.evaluate(tiles)
    np.testing.assert_array_equal(stored[0][...], S0.numpy())
    np.testing.assert_array_equal(stored[1][...], K0.numpy())


KILLED_CLIENT = textwrap.dedent("""
    import sys, time, dataclasses
    import numpy as np, torch
    import ntkit as nk
    from ntkit.gram.distributed import connect
    X = torch.from_numpy(np.load(sys.argv[1]))
    tiles = nk.MLP(3).kernel_tiles(X, get=("nngp", "ntk"), tile=16)
    def slow(rows, cols):
        time.sleep(0.02)
        return tiles.fn(rows, cols)
    if __name__ == "__main__":
        with connect(sys.argv[3]) as client:
            nk.gram.evaluate(dataclasses.replace(tiles, fn=slow), sys.argv[2], client=client)
""")


def test_a_client_killed_mid_store_then_resumed_on_the_workers_is_bitwise_equal(workers, tmp_path):
    X = torch.randn(200, 5, dtype=torch.float64)
    np.save(tmp_path / "x.npy", X.numpy())
    path = tmp_path / "K.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(tmp_path / "x.npy"), str(path),
                                workers.scheduler.address], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    records, deadline = path / "done" / "c", time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if records.exists() and sum(1 for f in records.glob("*/*") if not f.name.endswith(".partial")) >= 20:
            break
        time.sleep(0.005)
    assert process.poll() is None, f"the run ended before it was killed: {process.communicate()}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    while busy(workers) and time.monotonic() < deadline:
        time.sleep(0.1)  # the scheduler drops the dead client's tasks; those running finish and are recorded
    tiles = nk.MLP(3).kernel_tiles(X, get=("nngp", "ntk"), tile=16)
    finished = int(np.asarray(zarr.open_group(str(path), mode="r")["done"][...]).sum())
    assert 20 <= finished < len(tiles.pairs())
    resumed = gram.evaluate(recording(tiles, tmp_path), path, client=workers)
    assert len(os.listdir(tmp_path / "calls")) == len(tiles.pairs()) - finished
    for array, reference in zip(resumed, gram.evaluate(tiles), strict=True):
        np.testing.assert_array_equal(array[...], reference.numpy())


def test_matmul_and_row_passes_on_workers_are_bitwise_the_in_process_ones(workers):
    X = torch.randn(120, 4, dtype=torch.float64)
    for tiles in (nk.MLP(3).kernel_tiles(X, get=("nngp", "ntk"), tile=32),
                  nk.MLP(2).kernel_tiles(X, X[:70], tile=32)):
        V = torch.randn(tiles.m, 3, dtype=torch.float64)
        for index in range(len(tiles.names)):
            assert torch.equal(gram.matmul(tiles, V, name_index=index, client=workers),
                               gram.matmul(tiles, V, name_index=index))
        weights = torch.randn(tiles.m, dtype=torch.float64)

        def project(rows, blocks, weights=weights):
            return rows.start, blocks[0] @ weights

        there = list(gram.map_row_blocks(tiles, project, block=25, client=workers))
        here = list(gram.map_row_blocks(tiles, project, block=25))
        assert [start for start, _ in there] == list(range(0, 120, 25))  # in order
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(there, here, strict=True))


def test_workers_stream_a_stored_gram_into_products(workers, tmp_path):
    from ntkit.gram.store import stored_tiles

    X = torch.randn(100, 4, dtype=torch.float64)
    tiles = nk.MLP(2).kernel_tiles(X, tile=32)
    gram.evaluate(tiles, tmp_path / "K.zarr", client=workers)
    V = torch.randn(100, 2, dtype=torch.float64)
    assert torch.equal(gram.matmul(stored_tiles(tmp_path / "K.zarr"), V, client=workers), gram.matmul(tiles, V))


def test_a_worker_killed_mid_gram_changes_nothing(workers, tmp_path):
    X = torch.randn(160, 5, dtype=torch.float64)
    tiles = nk.MLP(3).kernel_tiles(X, tile=16)
    before = pids(workers)
    K = gram.evaluate(recording(tiles, tmp_path, kill_at=20), client=workers)[0]
    assert (tmp_path / "killed").exists()
    assert torch.equal(K, gram.evaluate(tiles)[0])
    workers.wait_for_workers(2, timeout=60)
    assert len(pids(workers) - before) == 1  # one worker died and its nanny started another


def test_a_worker_killed_mid_store_changes_nothing(workers, tmp_path):
    X = torch.randn(160, 5, dtype=torch.float64)
    tiles = nk.MLP(3).kernel_tiles(X, get=("nngp", "ntk"), tile=16)
    stored = gram.evaluate(recording(tiles, tmp_path, kill_at=30), tmp_path / "K.zarr", client=workers)
    assert (tmp_path / "killed").exists()
    assert np.asarray(zarr.open_group(str(tmp_path / "K.zarr"))["done"][...]).sum() == len(tiles.pairs())
    for array, reference in zip(stored, gram.evaluate(tiles), strict=True):
        np.testing.assert_array_equal(array[...], reference.numpy())


def test_a_worker_killed_mid_matmul_changes_nothing(workers, tmp_path):
    X = torch.randn(200, 5, dtype=torch.float64)
    tiles = nk.MLP(3).kernel_tiles(X, tile=20)
    V = torch.randn(200, 2, dtype=torch.float64)
    KV = gram.matmul(recording(tiles, tmp_path, kill_at=25), V, client=workers)
    assert (tmp_path / "killed").exists()
    assert torch.equal(KV, gram.matmul(tiles, V))


def test_inputs_lost_with_the_only_worker_holding_them_are_sent_again(workers, monkeypatch):
    """Dask cannot recompute data sent from the client: when the one worker holding it dies, the tasks that need
    it are cancelled. The run sends its inputs again and submits those tasks again: the product is unchanged."""
    from ntkit.gram import distributed as backend

    holder = sorted(workers.nthreads())[0]
    sends, original = [], backend.send

    def send(client, value):
        if len(sends) == 1:  # V, the second value sent: held by one worker, which dies before any task ran
            future = client.scatter(value, workers=[holder], hash=False)
            os.kill(client.run(os.getpid, workers=[holder])[holder], signal.SIGKILL)
        else:
            future = original(client, value)
        sends.append(future)
        return future

    monkeypatch.setattr(backend, "send", send)
    tiles = nk.MLP(3).kernel_tiles(torch.randn(60, 4, dtype=torch.float64), tile=20)
    V = torch.randn(60, 2, dtype=torch.float64)
    KV = gram.matmul(tiles, V, client=workers)
    assert torch.equal(KV, gram.matmul(tiles, V))
    assert sends[1].status != "finished"  # the first V was lost
    assert 3 <= len(sends) <= 2 * (1 + backend.RESENDS)  # sent again (the tiles too, if they were lost with it)


def test_a_cg_solve_with_a_worker_killed_mid_solve_gives_the_same_answer(workers, tmp_path):
    from ntkit.solvers import KernelOperator, cg

    X = torch.randn(200, 5, dtype=torch.float64)
    Y = torch.randn(200, 2, dtype=torch.float64)
    tiles = nk.MLP(3).kernel_tiles(X, tile=40)
    per_pass = len(tiles.pairs())
    ridge = 0.5
    op = KernelOperator(recording(tiles, tmp_path, kill_at=3 * per_pass + 5), client=workers)
    there = cg.solve(op, Y, ridge, rank=30)
    assert (tmp_path / "killed").exists() and there.iterations > 4  # killed in the fourth pass over K
    here = cg.solve(KernelOperator(tiles), Y, ridge, rank=30)
    assert there.converged and here.converged
    torch.testing.assert_close(there.solution, here.solution, rtol=1e-9, atol=0)
    K = gram.evaluate(tiles)[0]
    exact = torch.linalg.solve(K + ridge * torch.eye(200, dtype=torch.float64), Y)
    torch.testing.assert_close(there.solution, exact, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("solver", ["cg", "nystrom"])
def test_infinite_width_gp_with_a_client_predicts_as_in_one_process(workers, solver):
    X, X_test = torch.randn(120, 4, dtype=torch.float64), torch.randn(30, 4, dtype=torch.float64)
    y = torch.sin(X[:, 0]) + X[:, 1]
    # a budget below the Gram's bytes (cg) and K(X, centres)'s (nystrom): their passes stream tiles on the workers
    options = {"solver": solver, "ridge": 1e-2, "memory_budget": 60_000,
               **({"n_centers": 40} if solver == "nystrom" else {})}
    before = executed(workers)
    there = nk.InfiniteWidthGP(nk.MLP(3), X, y, client=workers, **options).predict(X_test)
    assert executed(workers) - before >= 2  # the workers did the passes (the solve's and the prediction's)
    here = nk.InfiniteWidthGP(nk.MLP(3), X, y, **options).predict(X_test)
    torch.testing.assert_close(there, here, rtol=1e-8, atol=1e-10)


def test_a_worker_that_raises_gives_a_clear_error_and_nothing_is_recorded_for_its_tile(workers, tmp_path):
    X = torch.randn(64, 3, dtype=torch.float64)
    tiles = nk.MLP(2).kernel_tiles(X, tile=16)

    def failing(rows, cols):
        if (rows.start, cols.start) == (16, 32):
            raise MemoryError("simulated: out of memory")
        return tiles.fn(rows, cols)

    path = tmp_path / "K.zarr"
    with pytest.raises(RuntimeError, match=r"tile at rows 16, columns 32 failed: MemoryError: simulated"):
        gram.evaluate(dataclasses.replace(tiles, fn=failing), path, client=workers)
    assert np.asarray(zarr.open_group(str(path))["done"][1, 2]) == 0
    with pytest.raises(RuntimeError, match="MemoryError"):
        gram.evaluate(dataclasses.replace(tiles, fn=failing), client=workers)
    resumed = gram.evaluate(tiles, path, client=workers)
    np.testing.assert_array_equal(resumed[0][...], gram.evaluate(tiles)[0].numpy())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_wrong_or_silent_scheduler_address_fails_with_a_clear_error():
    with pytest.raises(ConnectionError, match="no Dask scheduler answered"):
        connect(f"tcp://127.0.0.1:{free_port()}", timeout=1)  # nothing listens there
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        with pytest.raises(ConnectionError, match="within 1 s"):
            connect(f"tcp://127.0.0.1:{silent.getsockname()[1]}", timeout=1)
    with pytest.raises(ValueError, match="not one Dask can use"):
        connect("127.0.0.1", timeout=1)
    with pytest.raises(TypeError, match="scheduler address"):
        connect(8786)
    with pytest.raises(TypeError, match="client must be a dask.distributed.Client"):
        nk.MLP(2).kernel(torch.randn(5, 2), client="tcp://127.0.0.1:8786")


def test_a_store_in_this_process_memory_is_refused_for_workers(workers):
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    with pytest.raises(ValueError, match="cannot write"):
        nk.MLP(2).kernel(torch.randn(10, 2), out=group, client=workers)


def ntkit(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "ntkit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_cli_writes_a_store_on_a_scheduler_and_reports_a_bad_one(workers, tmp_path, rng):
    X = rng.standard_normal((60, 4))
    np.save(tmp_path / "x.npy", X)
    done = ntkit("kernel", "--input", "x.npy", "--depth", "3", "--get", "both", "--out", "K.zarr",
                 "--scheduler", workers.scheduler.address, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    group = zarr.open_group(str(tmp_path / "K.zarr"), mode="r")
    S, K = nk.MLP(3).kernel(X, get=("nngp", "ntk"))
    np.testing.assert_array_equal(group["ntk"][...], K)
    np.testing.assert_array_equal(group["nngp"][...], S)
    done = ntkit("kernel", "--input", "x.npy", "--out", "K2.zarr", "--scheduler", f"tcp://127.0.0.1:{free_port()}",
                 "--timeout", "1", cwd=tmp_path)
    assert done.returncode == 2 and "no Dask scheduler answered" in done.stderr
    assert not (tmp_path / "K2.zarr").exists()


@pytest.mark.slow
def test_cli_with_local_workers_writes_the_same_store(tmp_path, rng):
    X = rng.standard_normal((60, 4))
    np.save(tmp_path / "x.npy", X)
    done = ntkit("kernel", "--input", "x.npy", "--out", "K.zarr", "--workers", "2", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "K.zarr"), mode="r")["ntk"][...],
                                  nk.MLP(4).kernel(X))


# ------------------------------------------------------------------------------ shared-memory Grams
needs_shm = pytest.mark.skipif(not shared.SHARED_DIR.is_dir(), reason="no shared-memory folder on this system")


def gram_files() -> set[str]:
    return {name for name in os.listdir(shared.SHARED_DIR) if name.startswith("ntkit-gram-")}


@needs_shm
def test_workers_on_this_machine_write_a_new_gram_into_shared_memory(workers):
    X = torch.randn(120, 7, dtype=torch.float64)
    tiles = nk.MLP(3, activation="erf").kernel_tiles(X, get=("nngp", "ntk"), tile=16)
    expected = gram.evaluate(tiles)
    before = gram_files()
    paths, outs = shared.create(tiles.shape, 2, tiles.dtype)
    token = shared.new_token()
    assert all(workers.run(shared.attach, token, paths, tiles.shape, tiles.dtype).values())
    shared.unlink(paths)
    written = gram.distributed.fill(workers, tiles, outs, token=token)
    workers.run(shared.detach, token)
    assert written == len(tiles.pairs())     # every tile written by a worker, none sent back
    assert all(torch.equal(out, ref) for out, ref in zip(outs, expected, strict=True))
    # what a user calls: the same Gram, bitwise, and nothing left in the folder or mapped by the workers
    S, K = nk.MLP(3, activation="erf").kernel(X, get=("nngp", "ntk"), tile=16, client=workers)
    assert torch.equal(S, expected[0]) and torch.equal(K, expected[1])
    assert gram_files() <= before
    assert not any(workers.run(lambda: len(shared._attached)).values())


@needs_shm
def test_a_worker_that_cannot_see_the_shared_gram_returns_its_tiles(workers, tmp_path):
    missing = str(shared.SHARED_DIR / f"ntkit-gram-{uuid.uuid4().hex}")
    assert not shared.attach("absent", [missing], (4, 4), torch.float64)   # on another machine: no such file
    assert not os.path.exists(missing)                                      # and none was created
    X = torch.randn(70, 4, dtype=torch.float64)
    tiles = nk.MLP(2).kernel_tiles(X, tile=16)
    out = torch.empty(70, 70, dtype=torch.float64)
    assert gram.distributed.fill(workers, tiles, [out], token="absent") == 0   # every tile returned
    assert torch.equal(out, gram.evaluate(tiles)[0])
