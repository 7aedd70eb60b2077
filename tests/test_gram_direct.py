"""Gram stores written past the page cache (O_DIRECT): the same files and bytes as zarr's own local store,
for chunk sizes that are and are not whole device blocks, and zarr's buffered writes where the file system
refuses direct I/O."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import gram

zarr = pytest.importorskip("zarr")
direct = pytest.importorskip("ntkit.gram.direct")
pytestmark = pytest.mark.usefixtures("one_thread")


def no_direct_io(monkeypatch) -> list[int]:
    """Make every O_DIRECT open fail as on a file system without direct I/O; returns the refusals."""
    refused: list[int] = []
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if flags & getattr(os, "O_DIRECT", 0):  # as Linux does, the file is created before O_DIRECT is refused
            refused.append(flags)
            os.close(real_open(path, flags & ~os.O_DIRECT, *args, **kwargs))
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(direct.os, "open", refusing_open)
    return refused


@pytest.mark.parametrize("size", [direct.ALIGN, 64 * direct.ALIGN, 320_000, direct.SMALLEST + 3])
def test_put_direct_writes_exactly_the_bytes_whole_blocks_or_not(tmp_path, size):
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("this platform has no O_DIRECT")
    value = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    path = tmp_path / "c" / "0" / "1"
    if not direct.put_direct(path, memoryview(value)):
        pytest.skip("the temporary folder's file system refuses O_DIRECT")
    assert path.read_bytes() == value.tobytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["1"]  # the temporary file was renamed, none left
    smaller = value[: size // 2]  # a second write replaces the file whole
    assert direct.put_direct(path, memoryview(smaller))
    assert path.read_bytes() == smaller.tobytes()


def test_a_store_with_large_chunks_is_the_in_memory_gram_and_plain_zarr_reads_it(tmp_path):
    X = torch.randn(530, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    arch = nk.MLP(2, activation="erf", b_std=0.3)
    tiles = arch.kernel_tiles(X, get=("ntk", "nngp"), tile=200)  # chunks of 320,000 bytes: not whole 4 KiB blocks
    assert 200 * 200 * 8 >= direct.SMALLEST
    expected = gram.evaluate(tiles)
    gram.evaluate(tiles, tmp_path / "K.zarr", show_progress=False)
    stored = zarr.open_group(str(tmp_path / "K.zarr"), mode="r")  # zarr's own LocalStore
    for name, array in zip(("ntk", "nngp"), expected, strict=True):
        np.testing.assert_array_equal(stored[name][...], array.numpy())
    chunk = tmp_path / "K.zarr" / "ntk" / "c" / "2" / "0"  # an edge chunk: stored at the full chunk shape
    assert chunk.stat().st_size == 200 * 200 * 8 + 4  # and its CRC-32C
    assert not list((tmp_path / "K.zarr").rglob("*.partial"))


def test_where_direct_io_is_refused_the_store_writes_buffered_and_stays_equal(tmp_path, monkeypatch):
    refused = no_direct_io(monkeypatch)
    X = torch.randn(450, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tiles = nk.MLP(3).kernel_tiles(X, tile=200)
    expected = gram.evaluate(tiles)[0]
    (array,) = gram.evaluate(tiles, tmp_path / "K.zarr", show_progress=False)
    np.testing.assert_array_equal(array[...], expected.numpy())
    assert refused, "the Gram's chunks should have tried direct I/O first"
    assert not array.store.direct  # refused once, buffered from then on
    assert not list((tmp_path / "K.zarr").rglob("*.partial"))  # the file made before the refusal is gone


def test_an_error_other_than_a_refusal_is_raised_not_hidden(tmp_path, monkeypatch):
    def failing_write(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct.os, "write", failing_write)
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("this platform has no O_DIRECT")
    value = np.zeros(direct.SMALLEST, dtype=np.uint8)
    try:
        written = direct.put_direct(tmp_path / "chunk", memoryview(value))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
        assert not list(tmp_path.iterdir())  # no half-written file is left, under any name
    else:
        assert not written, "put_direct reported success for a failed write"
        pytest.skip("the temporary folder's file system refuses O_DIRECT")


def test_put_direct_names_what_is_wrong_with_its_value(tmp_path):
    with pytest.raises(TypeError, match="value must be a bytes-like object"):
        direct.put_direct(tmp_path / "chunk", [1, 2, 3])
    strided = np.zeros((64, 64))[:, ::2]
    with pytest.raises(ValueError, match="value must be C-contiguous"):
        direct.put_direct(tmp_path / "chunk", strided)
    assert not list(tmp_path.iterdir())  # nothing written
