"""Data for the paper's experiments: MNIST in its IDX files, and points on the unit circle.

MNIST (Section 6.3, Figure 3) is read from the standard IDX files (LeCun, Cortes, Burges), gzip
or not, looked for in this order:
    1. the folder given as `data_dir` (the CLI's --data-dir),
    2. the folder in the environment variable NTKIT_DATA,
    3. the cache folder ($XDG_CACHE_HOME/ntkit/mnist, by default ~/.cache/ntkit/mnist).
A folder may hold the files itself or in a subfolder `mnist/`. When they are nowhere and
`download=True`, they are downloaded once into the first of those folders that was given (the
cache otherwise) and checked against the MD5 of the uncompressed files. Where that is impossible
(offline), `load_digits` falls back to scikit-learn's bundled 8x8 digits and says so in its
`note`. A truncated or corrupt file raises `IDXFormatError` (or `ChecksumError`), never a partial load.

The unit circle (Figures 1 and 2): `circle_angles` and `circle_points`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._checks import check_choice, check_positive_int
from .progress import progress

SPLITS = ("train", "test")
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# MD5 of the uncompressed files (the same digits whatever gzip level a mirror used).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_COUNTS = {"train": 60_000, "test": 10_000}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
ENV_VAR = "NTKIT_DATA"

# IDX type codes -> big-endian NumPy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """An IDX file that is truncated, corrupt, or not an IDX file at all."""


class ChecksumError(ValueError):
    """A file whose content differs from the published MNIST file of the same name."""


class DownloadError(OSError):
    """No mirror could deliver a verified copy (offline, or every copy was bad)."""


# ------------------------------------------------------------------------------------ IDX files
def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (recognised by its magic bytes, not its name)."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:  # truncated stream, bad CRC, bad deflate data
        raise IDXFormatError(f"{path}: the gzip stream is truncated or corrupt ({exc}); "
                             "delete the file and download it again") from exc


def parse_idx(content: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file into an array of its dtype and shape.

    The header is two zero bytes, a type code, the number of dimensions, then each dimension as
    a big-endian uint32; the data follow, big-endian. The length must match the header exactly.
    """
    if len(content) < 4:
        raise IDXFormatError(f"{name}: {len(content)} bytes is too short for an IDX header")
    zero0, zero1, code, ndim = content[:4]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES or ndim == 0:
        codes = sorted(hex(c) for c in _IDX_DTYPES)
        raise IDXFormatError(f"{name}: not an IDX file (header bytes {content[:4].hex()}; expected 0000, "
                             f"a type code in {codes} and at least one dimension)")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise IDXFormatError(f"{name}: truncated inside the header ({len(content)} of {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(content) != expected:
        problem = "truncated" if len(content) < expected else "longer than its header says"
        raise IDXFormatError(f"{name}: {problem}: the header announces shape {shape} of {dtype.str} "
                             f"({expected} bytes in all) but the file has {len(content)} bytes")
    data = np.frombuffer(content, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, *, md5: str | None = None) -> np.ndarray:
    """Read one IDX file (gzip or not). With `md5`, the uncompressed content must have that MD5."""
    path = Path(path)
    content = _read_bytes(path)
    if md5 is not None:
        actual = hashlib.md5(content).hexdigest()
        if actual != md5:
            raise ChecksumError(f"{path}: MD5 of the uncompressed content is {actual}, expected {md5}: the "
                                "file is corrupt or not the published one (delete it to download it again, "
                                "or pass verify=False to read a modified copy)")
    return parse_idx(content, str(path))


# ------------------------------------------------------------------------------ finding MNIST
def default_cache_dir() -> Path:
    """Where downloads go when no folder is given: $XDG_CACHE_HOME/ntkit/mnist or ~/.cache/ntkit/mnist."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ntkit" / "mnist"


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders looked in, in order: `data_dir`, $NTKIT_DATA, the cache folder."""
    dirs = [Path(d).expanduser() for d in (data_dir, os.environ.get(ENV_VAR) or None) if d is not None]
    return [*dirs, default_cache_dir()]


def _find_file(folder: Path, name: str) -> Path | None:
    for where in (folder, folder / "mnist"):
        for candidate in (where / name, where / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def find_mnist(split: str = "test", data_dir: str | os.PathLike | None = None) -> tuple[Path, Path] | None:
    """Paths of the (images, labels) files of `split` in the first folder holding both, or None."""
    check_choice(split, "split", SPLITS)
    for folder in search_dirs(data_dir):
        found = [_find_file(folder, name) for name in MNIST_FILES[split]]
        if all(found):
            return found[0], found[1]
    return None


def download_mnist(dest: str | os.PathLike, split: str = "test", *, mirrors: tuple[str, ...] | None = None,
                   checksums: dict[str, str] | None = None, timeout: float = 20.0,
                   progress_bar: bool | None = None) -> tuple[Path, Path]:
    """Download the two gzip files of `split` into `dest` and verify the MD5 of their uncompressed content.

    Each file is tried at every mirror in turn (URL prefixes ending in '/'; default `MNIST_MIRRORS`;
    file:// URLs work too, for a local copy); it is written under a
    temporary name and renamed into place only once verified. Returns the (images, labels) paths.
    Raises DownloadError (an OSError) when no mirror could deliver a verified copy.
    """
    check_choice(split, "split", SPLITS)
    sums = MNIST_MD5 if checksums is None else checksums
    mirrors = MNIST_MIRRORS if mirrors is None else tuple(mirrors)
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in MNIST_FILES[split]:
        target, errors = dest / f"{name}.gz", []
        for mirror in mirrors:
            url = mirror + f"{name}.gz"
            try:
                _fetch_verified(url, target, sums.get(name), timeout, progress_bar)
                break
            except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
                errors.append(f"{mirror}: {getattr(exc, 'reason', exc)}")
        else:
            raise DownloadError(f"could not download {name}.gz from any of {len(mirrors)} mirrors; "
                                + " / ".join(errors))
        paths.append(target)
    return paths[0], paths[1]


def _fetch_verified(url: str, target: Path, md5: str | None, timeout: float,
                    progress_bar: bool | None) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            size = int(response.headers.get("Content-Length") or 0) if hasattr(response, "headers") else 0
            chunk = 1 << 16
            blocks = iter(lambda: response.read(chunk), b"")
            for block in progress(blocks, total=-(-size // chunk) if size else None,
                                  desc=f"download {target.name}", enabled=progress_bar):
                out.write(block)
        read_idx(temporary, md5=md5)  # decompresses, checks the MD5 and the IDX structure
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load_mnist(split: str = "test", data_dir: str | os.PathLike | None = None, *, download: bool = True,
               verify: bool = True, progress_bar: bool | None = None) -> tuple[np.ndarray, np.ndarray, Path]:
    """The MNIST `split` as (images uint8 (N, 28, 28), labels int64 (N,), folder it was read from).

    Looks in `search_dirs(data_dir)`; if absent and `download`, downloads it once (see module doc).
    `verify` checks the MD5 of each file against the published one. Raises FileNotFoundError when
    the files are absent and not downloaded, DownloadError when the download fails.
    """
    check_choice(split, "split", SPLITS)
    found = find_mnist(split, data_dir)
    if found is None:
        folders = ", ".join(str(d) for d in search_dirs(data_dir))
        if not download:
            raise FileNotFoundError(f"MNIST ({split} split) was not found in: {folders}")
        found = download_mnist(search_dirs(data_dir)[0], split, progress_bar=progress_bar)
    image_path, label_path = found
    images = read_idx(image_path, md5=MNIST_MD5[MNIST_FILES[split][0]] if verify else None)
    labels = read_idx(label_path, md5=MNIST_MD5[MNIST_FILES[split][1]] if verify else None)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IDXFormatError(f"{image_path}: expected uint8 images of shape (N, rows, cols), got "
                             f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise IDXFormatError(f"{label_path}: expected {images.shape[0]} labels (one per image), "
                             f"got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise IDXFormatError(f"{label_path}: labels must be digits 0-9, found {labels.min()}..{labels.max()}")
    return images, labels.astype(np.int64), image_path.parent


# ------------------------------------------------------------------------- a batch of digits
@dataclass
class Digits:
    """A batch of handwritten digits for Figure 3.

    X: (N, d) float64 pixels in [0, 1] (d = 784 for MNIST, 64 for the fallback), one row per digit.
    labels: (N,) int64 digits 0-9. images: (N, h, w) the same pixels as images.
    source: "mnist" or "sklearn-digits". note: a plain sentence saying what was loaded, and why
    when it is not MNIST (print it and put it in reports).
    """

    X: np.ndarray
    labels: np.ndarray
    images: np.ndarray
    source: str
    note: str

    @property
    def is_mnist(self) -> bool:
        return self.source == "mnist"


def load_digits(n: int, *, seed: int = 0, split: str = "test", data_dir: str | os.PathLike | None = None,
                download: bool = True, fallback: bool = True, progress_bar: bool | None = None) -> Digits:
    """`n` digits drawn without replacement (reproducibly from `seed`), pixels scaled to [0, 1].

    MNIST when it can be found or downloaded; otherwise, with `fallback`, scikit-learn's bundled
    8x8 digits (1,797 images, pixels 0-16 scaled to [0, 1]) with a `note` that says so. A corrupt
    MNIST file is an error, never a reason to fall back.
    """
    n = check_positive_int(n, "n")
    rng = np.random.default_rng(seed)
    try:
        images, labels, folder = load_mnist(split, data_dir, download=download, progress_bar=progress_bar)
        scale, source = 255.0, "mnist"
        note = f"MNIST {split} split ({images.shape[0]} digits, 28x28) from {folder}"
    except (FileNotFoundError, DownloadError) as exc:  # absent, or offline; a corrupt file is not caught
        if not fallback:
            raise
        why = "not found and downloading was turned off" if isinstance(exc, FileNotFoundError) else \
            f"not found and could not be downloaded ({exc})"
        images, labels, scale, source, note = _sklearn_digits(why)
    if n > images.shape[0]:
        raise ValueError(f"n must be at most {images.shape[0]} for {source}, got {n}")
    index = np.sort(rng.choice(images.shape[0], size=n, replace=False))
    chosen = images[index].astype(np.float64) / scale
    return Digits(chosen.reshape(n, -1), labels[index].astype(np.int64), chosen, source, note)


def _sklearn_digits(why: str) -> tuple[np.ndarray, np.ndarray, float, str, str]:
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError:
        raise FileNotFoundError(f"MNIST was {why}, and the offline fallback (scikit-learn's 8x8 digits) needs "
                                "scikit-learn: pip install scikit-learn, or give a folder of MNIST IDX files") from None

    bunch = sklearn_load_digits()
    note = (f"MNIST was {why}; using scikit-learn's bundled 8x8 digits instead (1797 images, 64 pixels): "
            "this is NOT MNIST. Give --data-dir or set NTKIT_DATA to a folder of MNIST IDX files "
            "for the paper's data.")
    return bunch.images, bunch.target, 16.0, "sklearn-digits", note


# ------------------------------------------------------------------------------ the unit circle
def circle_angles(n: int) -> np.ndarray:
    """`n` equally spaced angles gamma in [-pi, pi], both ends included (the paper's plotting range)."""
    n = check_positive_int(n, "n", minimum=2)
    return np.linspace(-np.pi, np.pi, n)


def circle_points(gamma: np.ndarray | float, order: str = "cos_sin") -> np.ndarray:
    """Points of the unit circle, shape (n, 2) float64.

    order="cos_sin": x = (cos gamma, sin gamma), Figure 1 (x0 = (1, 0) is gamma = 0).
    order="sin_cos": x = (sin gamma, cos gamma), Figure 2 (the paper plots f(sin gamma, cos gamma)).
    """
    check_choice(order, "order", ("cos_sin", "sin_cos"))
    g = np.atleast_1d(np.asarray(gamma, dtype=np.float64))
    if g.ndim != 1 or not np.all(np.isfinite(g)):
        raise ValueError(f"gamma must be a finite scalar or 1-D array, got shape {g.shape}")
    first, second = (np.cos(g), np.sin(g)) if order == "cos_sin" else (np.sin(g), np.cos(g))
    return np.stack([first, second], axis=1)


__all__ = [
    "MNIST_MD5", "ChecksumError", "Digits", "DownloadError", "IDXFormatError", "circle_angles",
    "circle_points", "default_cache_dir", "download_mnist", "find_mnist", "load_digits", "load_mnist",
    "parse_idx", "read_idx", "search_dirs",
]
