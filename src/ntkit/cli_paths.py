"""Checks of the `ntkit` command's output paths, made before any work: a path that cannot be written is a clear
error naming the option, not a traceback after the Gram is computed."""

from __future__ import annotations

import os
from pathlib import Path


def _first_existing(path: Path) -> Path:
    """The path itself or its nearest ancestor that exists."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_creatable(path: Path, option: str, what: str) -> None:
    """`path` (a file or folder to create) can be made: its nearest existing ancestor is a writable folder."""
    parent = _first_existing(path.parent if not path.exists() else path)
    if not parent.is_dir():
        raise ValueError(f"{option} {str(path)!r}: {str(parent)!r} is a file, not a folder, so the {what} cannot "
                         f"be written below it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {str(path)!r}: the folder {str(parent)!r} is not writable")


def check_file(path: str | Path, option: str, suffixes: tuple[str, ...]) -> Path:
    """An output file: ends with one of `suffixes`, is not a folder, and can be written."""
    file = Path(path)
    if file.suffix not in suffixes:
        raise ValueError(f"{option} {str(path)!r} must end with {' or '.join(suffixes)}")
    if file.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; give a file name such as "
                         f"{str(file / ('kernel' + suffixes[0]))!r}")
    if file.exists() and not os.access(file, os.W_OK):
        raise ValueError(f"{option} {str(path)!r} exists and is not writable")
    check_creatable(file, option, "file")
    return file


def check_store(path: str | Path, option: str) -> Path:
    """An output zarr store (a folder): not a regular file, and creatable or writable."""
    return _check_directory(Path(str(path).rstrip("/")), path, option, "store", "zarr store (a folder)")


def check_folder(path: str | Path, option: str) -> Path:
    """An output folder: not a file, and creatable or writable."""
    return _check_directory(Path(path), path, option, "folder", "folder")


def _check_directory(directory: Path, given: str | Path, option: str, kind: str, what: str) -> Path:
    """`directory` (given as `given`) is not a file, and is writable when it exists, or creatable."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{option} {str(given)!r} is a file, not a {what}")
    if directory.exists() and not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {str(given)!r}: the {kind} is not writable")
    check_creatable(directory, option, kind)
    return directory
