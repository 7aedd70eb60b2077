"""Hostile cases against Gram stores: failed writes, user functions that share a name, damaged chunks and records.

Each case ends in a right answer or a clear refusal: a failed write is never recorded as finished, a resume
recomputes every tile whose chunks are missing or fail their checksum, two different functions never share a
store, and a damaged store read for a solver raises an error that names the store and the chunk.
"""

from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import gram
from ntkit.activations import Quadrature
from ntkit.gram import direct
from ntkit.gram.store import stored_tiles, verify

zarr = pytest.importorskip("zarr")
pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(60, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
ARCH = nk.MLP(3, activation="erf", beta=0.2)
TILE = 16  # 4 x 4 tiles, 10 of them in the upper triangle


def failing_writes(monkeypatch, error: int, after: int) -> list:
    """Make the store's chunk writer raise OSError(`error`) for every data chunk after the first `after`."""
    seen: list = []
    original = direct.DirectStore._write

    def write(self, key, value):
        if key.startswith("ntk/c/"):
            seen.append(key)
            if len(seen) > after:
                raise OSError(error, errno.errorcode[error])
        return original(self, key, value)

    monkeypatch.setattr(direct.DirectStore, "_write", write)
    return seen


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_a_failed_chunk_write_is_never_recorded_and_the_rerun_repairs_the_store(tmp_path, monkeypatch, error):
    path = tmp_path / "K.zarr"
    with monkeypatch.context() as patch:
        failing_writes(patch, error, after=5)
        with pytest.raises(OSError, match="is not recorded as finished") as raised:
            ARCH.kernel(X, tile=TILE, out=path)
    assert raised.value.errno == error
    bad = verify(path)
    assert bad and {tile.name for tile in bad} == {"done"}  # only unfinished tiles: no recorded tile lacks data
    assert len(bad) < 10
    with pytest.raises(ValueError, match="unfinished"):
        stored_tiles(path)
    again = ARCH.kernel(X, tile=TILE, out=path)  # the same call, once the disk is healthy
    np.testing.assert_array_equal(again[...], ARCH.kernel(X, tile=TILE).numpy())
    assert verify(path) == [] and not np.isnan(again[...]).any()


def test_a_failed_write_on_a_dask_worker_is_never_recorded(tmp_path):
    distributed = pytest.importorskip("distributed")
    from ntkit.gram.distributed import local_cluster

    def break_writes():  # runs in each worker process (sent by value: defined here)
        import errno as codes

        from ntkit.gram import direct as worker_direct

        original = worker_direct.DirectStore._write
        count = []

        def write(self, key, value):
            if key.startswith("ntk/c/"):
                count.append(key)
                if len(count) > 3:
                    raise OSError(codes.ENOSPC, "No space left on device")
            return original(self, key, value)

        worker_direct.DirectStore._write = write

    path = tmp_path / "K.zarr"
    with local_cluster(1) as cluster, distributed.Client(cluster) as client:
        client.run(break_writes)
        with pytest.raises(RuntimeError, match="No space left on device"):
            ARCH.kernel(X, tile=TILE, out=path, client=client)
    assert {tile.name for tile in verify(path)} == {"done"}
    again = ARCH.kernel(X, tile=TILE, out=path)
    np.testing.assert_array_equal(again[...], ARCH.kernel(X, tile=TILE).numpy())


def test_two_functions_with_one_name_never_share_a_store(tmp_path):
    path = tmp_path / "K.zarr"
    tanh = nk.MLP(3, activation=lambda x: torch.tanh(x))
    nk.MLP(3, activation=lambda x: torch.tanh(x)).kernel(X, tile=TILE, out=path)  # the same code: one store
    tanh.kernel(X, tile=TILE, out=path)
    sine = nk.MLP(3, activation=lambda x: torch.sin(2 * x))
    with pytest.raises(ValueError, match="other inputs or settings"):
        sine.kernel(X, tile=TILE, out=path)

    def f1(x):
        return torch.tanh(x)

    first = nk.MLP(2, activation=f1)

    def f1(x):  # noqa: F811  (redefined with another body, as in a notebook)
        return torch.tanh(3 * x)

    assert first.describe() != nk.MLP(2, activation=f1).describe()
    scale = 2.0

    def scaled(x, a=scale):
        return torch.tanh(a * x)

    def make(a):
        return lambda x: torch.tanh(a * x)

    assert nk.MLP(2, activation=make(1.0)).describe() != nk.MLP(2, activation=make(2.0)).describe()  # closures
    assert nk.MLP(2, activation=scaled).describe() != nk.MLP(2, activation=lambda x, a=3.0: torch.tanh(a * x)
                                                            ).describe()


def test_a_function_that_cannot_be_fingerprinted_is_refused_by_a_store_until_named(tmp_path):
    module = torch.nn.Linear(1, 1).double()  # has parameters: its values may change between two runs
    arch = nk.MLP(2, activation=lambda x: module(x.unsqueeze(-1)).squeeze(-1))
    with pytest.raises(ValueError, match="fingerprint='my-activation-v1'"):
        arch.kernel(X[:8], out=tmp_path / "K.zarr")
    assert not (tmp_path / "K.zarr").exists()
    named = nk.MLP(2, activation=Quadrature(lambda x: module(x.unsqueeze(-1)).squeeze(-1), fingerprint="lin-v1"))
    stored = named.kernel(X[:8], out=tmp_path / "K.zarr")
    np.testing.assert_allclose(stored[...], named.kernel(X[:8]).numpy(), rtol=0, atol=0)
    with pytest.raises(TypeError, match="fingerprint must be a non-empty string"):
        Quadrature(torch.tanh, fingerprint="")


def chunk(path, name: str, i: int, j: int):
    return path / name / "c" / str(i) / str(j)


@pytest.mark.parametrize("damage", ["garbage", "zeros", "deleted", "truncated", "record"])
def test_a_damaged_store_is_found_reported_by_tile_and_repaired_by_a_resume(tmp_path, damage):
    path = tmp_path / "K.zarr"
    expected = ARCH.kernel(X, tile=TILE).numpy()
    ARCH.kernel(X, tile=TILE, out=path)
    target = chunk(path, "ntk", 1, 2)
    size = target.stat().st_size
    if damage == "garbage":
        target.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    elif damage == "zeros":
        target.write_bytes(bytes(size))
    elif damage == "deleted":
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[: size // 2])
    else:  # a record edited to cover a tile that was never written: made by deleting that tile's chunks
        target.unlink()
        chunk(path, "ntk", 2, 1).unlink()
    bad = verify(path)
    assert [(tile.row, tile.col, tile.name) for tile in bad] == [(1, 2, "ntk")]
    assert "ntk/c/1/2" in bad[0].reason or "ntk/c/2/1" in bad[0].reason
    with pytest.raises(ValueError, match=r"K\.zarr"):  # reading it for a solver names the store
        tiles = stored_tiles(path)
        gram.matmul(tiles, torch.ones(60, 1, dtype=torch.float64))
    calls = []
    original = ARCH.kernel_tiles(X, tile=TILE)

    def counted(rows, cols):
        calls.append((rows.start, cols.start))
        return original.fn(rows, cols)

    import dataclasses

    with pytest.warns(UserWarning, match=r"tile \(1, 2\) of 'ntk'"):
        repaired = gram.evaluate(dataclasses.replace(original, fn=counted), path)
    assert calls == [(16, 32)]  # only the damaged tile is computed again
    np.testing.assert_array_equal(repaired[0][...], expected)
    assert verify(path) == []


def test_broken_metadata_and_foreign_folders_give_errors_that_name_the_store(tmp_path):
    path = tmp_path / "K.zarr"
    ARCH.kernel(X, tile=TILE, out=path)
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    (path / "ntk" / "zarr.json").write_text("{ not json")
    for call in (lambda: verify(path), lambda: stored_tiles(path)):
        with pytest.raises(ValueError, match=r"K\.zarr.*damaged"):
            call()
    with pytest.raises(ValueError, match=r"K\.zarr"):
        ARCH.kernel(X, tile=TILE, out=path)
    (copy / "zarr.json").write_text("")
    with pytest.raises(ValueError, match=r"copy\.zarr.*not an ntkit Gram store"):
        verify(copy)
    with pytest.raises(ValueError, match="does not exist"):
        verify(tmp_path / "none.zarr")


def test_a_store_of_the_earlier_format_without_checksums_is_refused(tmp_path):
    path = tmp_path / "K.zarr"
    ARCH.kernel(X, tile=TILE, out=path)
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["ntkit"] = {**group.attrs["ntkit"], "version": 1}
    with pytest.raises(ValueError, match="format version 1.*checksums"):
        ARCH.kernel(X, tile=TILE, out=path)
