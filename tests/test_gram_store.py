"""Resumable zarr Gram stores: equal to the in-memory Gram bit for bit, resumed after a SIGKILL with only the
unfinished tiles computed again, and refused when they belong to other inputs or cannot be written."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import gram

zarr = pytest.importorskip("zarr")
pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(nk.__file__).resolve().parents[1]


def counting(tiles: gram.KernelTiles, calls: list) -> gram.KernelTiles:
    """The same kernel, with each tile computation recorded in `calls`."""

    def fn(rows, cols):
        calls.append((rows.start, cols.start))
        return tiles.fn(rows, cols)

    return dataclasses.replace(tiles, fn=fn)


def upper_pairs(finished: np.ndarray) -> int:
    return int(np.triu(finished).sum())


@pytest.mark.parametrize("cross", [False, True])
def test_store_holds_the_in_memory_gram_bitwise_and_says_what_it_holds(tmp_path, cross):
    X = torch.randn(70, 5, dtype=torch.float64)
    Y = torch.randn(45, 5, dtype=torch.float64) if cross else None
    arch = nk.MLP(3, activation="erf", beta=0.2)
    S, K = arch.kernel(X, Y, get=("nngp", "ntk"), tile=16)
    stored = arch.kernel(X, Y, get=("nngp", "ntk"), tile=16, out=tmp_path / "K.zarr")
    assert all(isinstance(array, zarr.Array) for array in stored)
    np.testing.assert_array_equal(stored[0][...], S.numpy())
    np.testing.assert_array_equal(stored[1][...], K.numpy())
    group = zarr.open_group(str(tmp_path / "K.zarr"), mode="r")
    info = group.attrs["ntkit"]
    tiles = arch.kernel_tiles(X, Y, get=("nngp", "ntk"), tile=16)
    assert info["format"] == "ntkit-gram-store" and info["fingerprint"] == tiles.fingerprint()
    assert group["ntk"].chunks == (16, 16)  # one chunk per tile
    finished = np.asarray(group["done"][...])
    expected = np.ones((5, 3 if cross else 5), dtype=np.uint8)
    np.testing.assert_array_equal(finished, expected if cross else np.triu(expected))


def test_a_finished_store_is_not_computed_again_and_a_single_name_returns_one_array(tmp_path):
    X = torch.randn(40, 3, dtype=torch.float64)
    arch = nk.MLP(2)
    first = arch.kernel(X, tile=16, out=str(tmp_path / "K.zarr"))
    calls: list = []
    again = gram.evaluate(counting(arch.kernel_tiles(X, tile=16), calls), str(tmp_path / "K.zarr"))
    assert calls == []
    np.testing.assert_array_equal(again[0][...], first[...])
    np.testing.assert_array_equal(first[...], arch.kernel(X, tile=16).numpy())


def stopping(tiles: gram.KernelTiles, after: int) -> gram.KernelTiles:
    """The same kernel, raising at its tile number `after` (counted from 0) as a crash would."""
    calls: list = []

    def fn(rows, cols):
        if len(calls) == after:
            raise RuntimeError("stopped")
        calls.append(1)
        return tiles.fn(rows, cols)

    return dataclasses.replace(tiles, fn=fn)


def test_resume_uses_the_stores_tile_edge(tmp_path):
    X = torch.randn(50, 4, dtype=torch.float64)
    arch = nk.MLP(3)
    path = tmp_path / "K.zarr"
    with pytest.raises(RuntimeError, match="stopped"):
        gram.evaluate(stopping(arch.kernel_tiles(X, tile=16), after=4), path)
    with pytest.warns(UserWarning, match="made with tiles of 16; it is resumed with those, not tile=32"):
        resumed = arch.kernel(X, tile=32, out=path)  # another tile edge asked for: the store's is used, and said
    np.testing.assert_array_equal(resumed[...], arch.kernel(X, tile=16).numpy())


KILLED_RUN = textwrap.dedent("""
    import sys, time, dataclasses
    import numpy as np, torch
    import ntkit as nk
    torch.set_num_threads(1)
    X = torch.from_numpy(np.load(sys.argv[1]))
    tiles = nk.MLP(3, beta=0.3).kernel_tiles(X, get=("nngp", "ntk"), tile=16)
    def slow(rows, cols):
        time.sleep(0.01)
        return tiles.fn(rows, cols)
    nk.gram.evaluate(dataclasses.replace(tiles, fn=slow), sys.argv[2])
    print("finished")
""")


@pytest.mark.parametrize("kill_after", [1, 60])
def test_sigkill_at_any_moment_then_resume_is_bitwise_equal_and_recomputes_only_unfinished_tiles(
        tmp_path, kill_after):
    X = torch.randn(300, 6, dtype=torch.float64)
    np.save(tmp_path / "x.npy", X.numpy())
    path = tmp_path / "K.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "NTKIT_PROGRESS": "0"}
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path / "x.npy"), str(path)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    records = path / "done" / "c"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if records.exists() and sum(1 for _ in records.glob("*/*") if not _.name.endswith(".partial")) >= kill_after:
            break
        time.sleep(0.002)
    assert process.poll() is None, f"the run ended before it was killed: {process.communicate()}"
    process.send_signal(signal.SIGKILL)
    process.wait()

    arch = nk.MLP(3, beta=0.3)
    tiles = arch.kernel_tiles(X, get=("nngp", "ntk"), tile=16)
    finished = np.asarray(zarr.open_group(str(path), mode="r")["done"][...]) == 1
    total = len(tiles.pairs())
    assert kill_after <= upper_pairs(finished) < total  # killed in the middle
    calls: list = []
    resumed = gram.evaluate(counting(tiles, calls), path)
    assert len(calls) == total - upper_pairs(finished)
    assert not any(finished[i // 16, j // 16] for i, j in calls)
    S, K = arch.kernel(X, get=("nngp", "ntk"), tile=16)
    np.testing.assert_array_equal(resumed[0][...], S.numpy())
    np.testing.assert_array_equal(resumed[1][...], K.numpy())


def test_a_tile_that_raises_is_not_recorded_and_the_rest_resumes(tmp_path):
    X = torch.randn(48, 3, dtype=torch.float64)
    tiles = nk.MLP(2).kernel_tiles(X, tile=16)

    def failing(rows, cols):
        if (rows.start, cols.start) == (16, 32):
            raise MemoryError("simulated: out of memory")
        return tiles.fn(rows, cols)

    with pytest.raises(MemoryError, match="simulated"):
        gram.evaluate(dataclasses.replace(tiles, fn=failing), tmp_path / "K.zarr")
    finished = np.asarray(zarr.open_group(str(tmp_path / "K.zarr"))["done"][...]) == 1
    assert not finished[1, 2] and finished[0, 0]
    calls: list = []
    resumed = gram.evaluate(counting(tiles, calls), tmp_path / "K.zarr")
    assert (16, 32) in calls and (0, 0) not in calls
    np.testing.assert_array_equal(resumed[0][...], gram.evaluate(tiles)[0].numpy())


@pytest.mark.parametrize("change", ["inputs", "depth", "names", "cross"])
def test_a_store_of_other_inputs_or_settings_is_refused_before_any_work(tmp_path, change):
    X = torch.randn(30, 3, dtype=torch.float64)
    nk.MLP(2).kernel(X, tile=16, out=tmp_path / "K.zarr")
    other = {"inputs": nk.MLP(2).kernel_tiles(X + 1e-12, tile=16),
             "depth": nk.MLP(3).kernel_tiles(X, tile=16),
             "names": nk.MLP(2).kernel_tiles(X, get="nngp", tile=16),
             "cross": nk.MLP(2).kernel_tiles(X, X, tile=16)}[change]
    calls: list = []
    with pytest.raises(ValueError, match="other inputs or settings"):
        gram.evaluate(counting(other, calls), tmp_path / "K.zarr")
    assert calls == []


def test_what_is_not_an_ntkit_store_is_refused(tmp_path):
    X = torch.randn(20, 3, dtype=torch.float64)
    arch = nk.MLP(2)
    (tmp_path / "file.zarr").write_text("not a store")
    (tmp_path / "folder.zarr").mkdir()
    (tmp_path / "folder.zarr" / "notes.txt").write_text("something else")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_array("x", shape=(2,), dtype="f8")
    for name in ("file.zarr", "folder.zarr", "other.zarr"):
        with pytest.raises(ValueError, match="not an ntkit Gram store"):
            arch.kernel(X, out=tmp_path / name)
    assert (tmp_path / "folder.zarr" / "notes.txt").read_text() == "something else"
    with pytest.raises(ValueError, match="must name a zarr store ending in '.zarr'"):
        arch.kernel(X, out=str(tmp_path / "K.npy"))
    with pytest.raises(TypeError, match="zarr group"):
        arch.kernel(X, out=zarr.create_array(store=str(tmp_path / "array.zarr"), shape=(20, 20), dtype="f8"))
    (tmp_path / "empty.zarr").mkdir()  # an empty folder is fine: the store is made there
    np.testing.assert_array_equal(arch.kernel(X, out=tmp_path / "empty.zarr")[...], arch.kernel(X).numpy())


def test_a_zarr_group_works_as_the_store_and_a_read_only_one_is_refused_before_any_work(tmp_path):
    X = torch.randn(25, 3, dtype=torch.float64)
    tiles = nk.MLP(2).kernel_tiles(X, tile=8)
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    np.testing.assert_array_equal(gram.evaluate(tiles, group)[0][...], gram.evaluate(tiles)[0].numpy())
    with pytest.raises(RuntimeError, match="stopped"):
        gram.evaluate(stopping(tiles, after=3), tmp_path / "K.zarr")
    calls: list = []
    with pytest.raises(ValueError, match="read-only"):
        gram.evaluate(counting(tiles, calls), zarr.open_group(str(tmp_path / "K.zarr"), mode="r"))
    assert calls == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_folder_is_refused_before_any_work(tmp_path):
    X = torch.randn(20, 3, dtype=torch.float64)
    tiles = nk.MLP(2).kernel_tiles(X, tile=8)
    gram.evaluate(tiles, tmp_path / "done.zarr")
    (tmp_path / "locked").mkdir()
    calls: list = []
    try:
        for path in (tmp_path / "done.zarr", tmp_path / "locked"):
            path.chmod(0o555)
        for out in (tmp_path / "locked" / "K.zarr", tmp_path / "done.zarr"):
            with pytest.raises(ValueError, match="not writable"):
                gram.evaluate(counting(tiles, calls), out)
    finally:
        for path in (tmp_path / "done.zarr", tmp_path / "locked"):
            path.chmod(0o755)
    assert calls == []


def test_ntkit_works_without_dask_and_zarr_and_says_how_to_get_them(tmp_path):
    script = textwrap.dedent("""
        import sys
        for name in ("zarr", "dask", "distributed"):
            sys.modules[name] = None  # as if not installed
        import torch, ntkit as nk
        X = torch.randn(10, 3, dtype=torch.float64)
        K = nk.MLP(2).kernel(X)
        assert K.shape == (10, 10) and "zarr" not in str(type(K))
        for call in (lambda: nk.MLP(2).kernel(X, out="K.zarr"),
                     lambda: nk.gram.distributed.local_cluster(1)):
            try:
                call()
            except ImportError as exc:
                print(exc)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('pip install "ntkit[dask]"') == 2
    assert not (tmp_path / "K.zarr").exists()


def test_a_finished_store_streams_into_products_and_a_cg_solve(tmp_path):
    from ntkit.gram.store import stored_tiles
    from ntkit.solvers import KernelOperator, cg

    X = torch.randn(150, 4, dtype=torch.float64)
    arch = nk.MLP(3)
    tiles = arch.kernel_tiles(X, get=("nngp", "ntk"), tile=32)
    with pytest.raises(RuntimeError, match="stopped"):
        gram.evaluate(stopping(tiles, after=5), tmp_path / "K.zarr")
    with pytest.raises(ValueError, match="unfinished"):
        stored_tiles(tmp_path / "K.zarr")
    gram.evaluate(tiles, tmp_path / "K.zarr")
    stored = stored_tiles(tmp_path / "K.zarr", "ntk")
    assert stored.shape == (150, 150) and stored.symmetric and stored.names == ("ntk",)
    V = torch.randn(150, 3, dtype=torch.float64)
    assert torch.equal(gram.matmul(stored, V), gram.matmul(tiles, V, name_index=1))  # the same tiles, read back
    np.testing.assert_array_equal(stored.diag(slice(0, 150))[0].numpy(), arch.kernel_diag(X.numpy()))
    Y = torch.randn(150, 2, dtype=torch.float64)
    from_disk = cg.solve(KernelOperator(stored), Y, 0.1, rank=10)
    recomputed = cg.solve(KernelOperator(arch.kernel_tiles(X, tile=32)), Y, 0.1, rank=10)
    assert from_disk.iterations > 3 and from_disk.converged
    torch.testing.assert_close(from_disk.solution, recomputed.solution, rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="not in the store"):
        stored_tiles(tmp_path / "K.zarr", "other")
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(ValueError, match="not an ntkit Gram store"):
        stored_tiles(tmp_path / "plain.zarr")


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("where", ["folder", "memory"])
def test_the_record_read_by_listing_is_the_record_read_by_value(tmp_path, zarr_format, where):
    from ntkit.gram.store import open_store, recorded

    X = torch.randn(700, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    tiles = nk.MLP(2).kernel_tiles(X, tile=100)
    group = zarr.open_group(str(tmp_path / "K.zarr") if where == "folder" else zarr.storage.MemoryStore(),
                            mode="w", zarr_format=zarr_format)
    writer, tiles = open_store(group, tiles)
    for index, (i, j) in enumerate(tiles.pairs()):
        if index % 3 != 1:
            writer.mark(i, j)
    by_value = np.asarray(group["done"][...]) == 1
    assert by_value.sum() == len([k for k in range(len(tiles.pairs())) if k % 3 != 1])
    np.testing.assert_array_equal(recorded(group["done"]), by_value)
