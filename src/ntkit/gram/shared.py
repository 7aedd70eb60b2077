"""In-memory Grams that Dask workers on this machine write into directly, through shared memory.

A worker that returns its tiles makes the client receive every byte of the Gram over a socket and copy it
into place: the client becomes the bottleneck of a many-worker node (on 2 cores it cost a third of the work
of the tiles themselves). So when `ntkit.gram.distributed` fills a new in-memory Gram on the CPU, and the
shared-memory folder (`SHARED_DIR`, a tmpfs) has room, the Gram is made as files there, mapped by the
client (`torch.from_file(shared=True)`), and every worker that can open those files maps them too and
writes its tiles straight into them. A worker that cannot (on another machine) returns its tiles as
before, so the result is the same, bitwise, either way.

The files are unlinked as soon as the workers have mapped them: nothing is left behind when a process is
killed, and the memory is freed when the last mapping goes (the client's tensor, which the caller owns, and
the workers', dropped at the end of the computation).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

from .. import memory

SHARED_DIR = Path("/dev/shm")
MARGIN = 1.05   # tmpfs room required beyond the Gram: a mapping of a full tmpfs fails with SIGBUS, not an error

_attached: dict[str, list[torch.Tensor]] = {}   # on a worker: token -> the Gram's mapped outputs


def _map(path: str, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    return torch.from_file(path, shared=True, size=shape[0] * shape[1], dtype=dtype).view(shape)


def create(shape: tuple[int, int], count: int, dtype: torch.dtype) -> tuple[list[str], list[torch.Tensor]] | None:
    """`count` new Grams of `shape` as files in `SHARED_DIR`, mapped here: (paths, tensors); None when the
    folder is absent or too small for them (then the caller allocates ordinary memory)."""
    nbytes = count * memory.array_bytes(shape, dtype)
    try:
        info = os.statvfs(SHARED_DIR)
    except OSError:
        return None
    if not SHARED_DIR.is_dir() or info.f_bavail * info.f_frsize < MARGIN * nbytes or nbytes == 0:
        return None
    paths = [str(SHARED_DIR / f"ntkit-gram-{uuid.uuid4().hex}") for _ in range(count)]
    try:
        for path in paths:
            with open(path, "xb") as file:
                file.truncate(nbytes // count)
        return paths, [_map(path, shape, dtype) for path in paths]
    except OSError:
        unlink(paths)
        return None


def unlink(paths: list[str]) -> None:
    """Remove the files (the mappings stay valid until they are dropped)."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def attach(token: str, paths: list[str], shape: tuple[int, int], dtype: torch.dtype) -> bool:
    """On a worker: map the client's Gram files, if this worker sees them (same machine); whether it did.
    The files are opened, never created: a worker elsewhere finds no such file."""
    expected = memory.array_bytes(shape, dtype)
    try:
        for path in paths:
            if os.stat(path).st_size != expected:
                return False
        _attached[token] = [_map(path, shape, dtype) for path in paths]
    except OSError:
        return False
    return True


def attached(token: str) -> list[torch.Tensor] | None:
    """On a worker: the outputs mapped under `token`, or None when this worker returns its tiles instead."""
    return _attached.get(token)


def detach(token: str) -> None:
    """On a worker: drop its mappings of the Gram `token`."""
    _attached.pop(token, None)


def new_token() -> str:
    return uuid.uuid4().hex
