"""The MNIST IDX loader and the unit-circle helpers (ntkit.data).

IDX files are written here byte by byte with `struct` (independently of the parser), gzip or not,
whole, truncated, padded and corrupted; the real MNIST test split is checked against its
published MD5, counts and first labels where it is available.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from ntkit import data

IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
             np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of `array`: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, content: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


def fake_mnist(folder: Path, n: int = 20, seed: int = 0, compress: bool = True,
               split: str = "test") -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """A small MNIST look-alike under the standard names; returns images, labels and their MD5s."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, array in zip(data.MNIST_FILES[split], (images, labels), strict=True):
        content = idx_bytes(array)
        write(folder / (name + (".gz" if compress else "")), content, compress)
        sums[name] = hashlib.md5(content).hexdigest()
    return images, labels, sums


# ------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_read_idx_round_trip(tmp_path: Path, compress: bool, dtype: str, rng: np.random.Generator) -> None:
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = write(tmp_path / "a.idx", idx_bytes(array), compress)
    read = data.read_idx(path)
    assert read.shape == (3, 4, 5) and read.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(read, array)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_file_is_an_error(tmp_path: Path, compress: bool) -> None:
    content = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    path = write(tmp_path / "short", content[:-7], compress)
    with pytest.raises(data.IDXFormatError, match="truncated"):
        data.read_idx(path)
    with pytest.raises(data.IDXFormatError, match="truncated inside the header"):
        data.read_idx(write(tmp_path / "header", content[:9], compress))


def test_extra_bytes_and_bad_header_are_errors(tmp_path: Path) -> None:
    content = idx_bytes(np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(data.IDXFormatError, match="longer than its header"):
        data.read_idx(write(tmp_path / "long", content + b"\0", False))
    with pytest.raises(data.IDXFormatError, match="not an IDX file"):
        data.read_idx(write(tmp_path / "png", b"\x89PNG\r\n\x1a\n" + content, False))
    with pytest.raises(data.IDXFormatError, match="not an IDX file"):
        data.read_idx(write(tmp_path / "code", b"\0\0\x42\x02" + content[4:], False))
    with pytest.raises(data.IDXFormatError, match="too short"):
        data.read_idx(write(tmp_path / "empty", b"", False))


def test_truncated_or_corrupt_gzip_is_an_error(tmp_path: Path, rng: np.random.Generator) -> None:
    packed = gzip.compress(idx_bytes(rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)))
    with pytest.raises(data.IDXFormatError, match="gzip stream is truncated or corrupt"):
        data.read_idx(write(tmp_path / "cut.gz", packed[: len(packed) // 2], False))
    flipped = bytearray(packed)
    flipped[len(packed) // 2] ^= 0xFF  # breaks the deflate data or the CRC
    with pytest.raises(data.IDXFormatError, match="gzip stream is truncated or corrupt"):
        data.read_idx(write(tmp_path / "flip.gz", bytes(flipped), False))


def test_checksum_mismatch_is_an_error(tmp_path: Path) -> None:
    content = idx_bytes(np.arange(10, dtype=np.uint8))
    path = write(tmp_path / "labels", content, False)
    assert data.read_idx(path, md5=hashlib.md5(content).hexdigest()).tolist() == list(range(10))
    with pytest.raises(data.ChecksumError, match="MD5"):
        data.read_idx(path, md5="0" * 32)


# --------------------------------------------------------------------------- the real digits
def test_real_mnist_test_split(mnist_path: Path) -> None:
    images, labels, folder = data.load_mnist("test", mnist_path, download=False)  # verifies the MD5s
    assert folder == mnist_path
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.tolist()[:10] == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the published first test labels
    # published class counts of the MNIST test set
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert images.max() == 255 and images.min() == 0


def test_real_mnist_batch(mnist_path: Path) -> None:
    batch = data.load_digits(512, seed=3, data_dir=mnist_path, download=False)
    assert batch.is_mnist and "MNIST test split" in batch.note
    assert batch.X.shape == (512, 784) and batch.X.dtype == np.float64
    assert 0.0 <= batch.X.min() and batch.X.max() == 1.0
    np.testing.assert_array_equal(batch.X, batch.images.reshape(512, -1))
    again = data.load_digits(512, seed=3, data_dir=mnist_path, download=False)
    np.testing.assert_array_equal(again.X, batch.X)
    assert not np.array_equal(data.load_digits(512, seed=4, data_dir=mnist_path, download=False).X, batch.X)
    images, labels, _ = data.load_mnist("test", mnist_path, download=False)
    # each chosen row is one real digit with its own label
    row = np.flatnonzero((images.reshape(10_000, -1) == np.round(batch.X[0] * 255)).all(axis=1))
    assert labels[row[0]] == batch.labels[0]


# ------------------------------------------------------------------- finding and downloading
@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No NTKIT_DATA, an empty cache, and no mirror that could reach the network."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "MNIST_MIRRORS", ((tmp_path / "no-mirror").as_uri() + "/",))
    return tmp_path


def test_search_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given, env, cache = isolated / "given", isolated / "env", data.default_cache_dir()
    assert cache == isolated / "cache" / "ntkit" / "mnist"
    assert data.find_mnist("test") is None
    cached, _, cache_sums = fake_mnist(cache, seed=1)
    monkeypatch.setitem(data.MNIST_MD5, "t10k-images-idx3-ubyte", cache_sums["t10k-images-idx3-ubyte"])
    monkeypatch.setitem(data.MNIST_MD5, "t10k-labels-idx1-ubyte", cache_sums["t10k-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.load_mnist("test", download=False)[0], cached)
    env_images, _, _ = fake_mnist(env / "mnist", seed=2, compress=False)  # in a mnist/ subfolder, not gzip
    monkeypatch.setenv(data.ENV_VAR, str(env))
    assert data.find_mnist("test")[0] == env / "mnist" / "t10k-images-idx3-ubyte"
    np.testing.assert_array_equal(data.load_mnist("test", verify=False, download=False)[0], env_images)
    given_images, _, _ = fake_mnist(given, seed=3)
    loaded = data.load_mnist("test", given, verify=False, download=False)[0]
    np.testing.assert_array_equal(loaded, given_images)
    assert data.find_mnist("train", given) is None
    with pytest.raises(data.ChecksumError):  # the look-alike is not the published file
        data.load_mnist("test", given, download=False)


def test_download_once_and_verify(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = isolated / "server"
    images, labels, sums = fake_mnist(server, n=30)
    bad = isolated / "bad"
    fake_mnist(bad, n=30, seed=9)  # same names, other content: fails the checksum
    mirrors = ((isolated / "nowhere").as_uri() + "/", bad.as_uri() + "/", server.as_uri() + "/")
    for name, digest in sums.items():
        monkeypatch.setitem(data.MNIST_MD5, name, digest)
    monkeypatch.setattr(data, "MNIST_MIRRORS", mirrors)
    dest = isolated / "given"
    got_images, got_labels, folder = data.load_mnist("test", dest)
    assert folder == dest and sorted(p.name for p in dest.iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]  # verified copies only, no leftovers
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    monkeypatch.setattr(data, "MNIST_MIRRORS", ())  # found locally now: no second download
    np.testing.assert_array_equal(data.load_mnist("test", dest)[0], images)


def test_download_failure(isolated: Path) -> None:
    bad = isolated / "bad"
    fake_mnist(bad)
    with pytest.raises(data.DownloadError, match="could not download t10k-images-idx3-ubyte.gz"):
        data.download_mnist(isolated / "dest", "test", mirrors=(bad.as_uri() + "/",))
    assert list((isolated / "dest").iterdir()) == []  # nothing partial left behind


def test_fallback_to_sklearn_digits(isolated: Path) -> None:
    for download in (False, True):  # not allowed to download / the download fails
        batch = data.load_digits(100, seed=0, data_dir=isolated / "none", download=download)
        assert batch.source == "sklearn-digits" and not batch.is_mnist
        assert "NOT MNIST" in batch.note
        assert batch.X.shape == (100, 64) and batch.X.min() >= 0.0 and batch.X.max() <= 1.0
    assert "could not be downloaded" in batch.note
    with pytest.raises(FileNotFoundError):
        data.load_digits(10, data_dir=isolated / "none", download=False, fallback=False)
    with pytest.raises(ValueError, match="at most 1797"):
        data.load_digits(2000, data_dir=isolated / "none", download=False)


def test_corrupt_mnist_never_falls_back(isolated: Path) -> None:
    folder = isolated / "given"
    fake_mnist(folder)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.IDXFormatError):
        data.load_digits(10, data_dir=folder, download=False)


def test_label_count_must_match(isolated: Path) -> None:
    folder = isolated / "given"
    fake_mnist(folder, n=20)
    labels = np.zeros(19, dtype=np.uint8)
    write(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(labels), True)
    with pytest.raises(data.IDXFormatError, match="expected 20 labels"):
        data.load_mnist("test", folder, verify=False, download=False)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        data.find_mnist("validation")
    with pytest.raises(TypeError, match="n must be an integer"):
        data.load_digits(2.5)
    with pytest.raises(ValueError, match="order"):
        data.circle_points(0.0, order="xy")
    with pytest.raises(ValueError, match="gamma"):
        data.circle_points([0.0, np.nan])


# ------------------------------------------------------------------------------ unit circle
def test_circle() -> None:
    gamma = data.circle_angles(9)
    assert gamma[0] == -np.pi and gamma[-1] == np.pi and np.allclose(np.diff(gamma), np.pi / 4)
    for order in ("cos_sin", "sin_cos"):
        x = data.circle_points(gamma, order)
        assert x.shape == (9, 2)
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0)
    np.testing.assert_allclose(data.circle_points(0.0), [[1.0, 0.0]])  # Figure 1's x0
    np.testing.assert_allclose(data.circle_points(np.pi / 2, "sin_cos"), [[1.0, 0.0]], atol=1e-15)


def test_fallback_without_scikit_learn(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    with pytest.raises(FileNotFoundError, match="needs scikit-learn"):
        data.load_digits(10, data_dir=isolated / "none", download=False)
