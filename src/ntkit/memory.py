"""Memory estimates before large allocations: a clear `MemoryError` instead of an allocator failure or an
out-of-memory kill.

Every solver states the bytes it needs before allocating them (`require`); when that exceeds what the device
has free, it raises at once, naming N, the bytes needed and available, and a solver that would fit.

Tiled kernels also keep the memory they free for the next tile (`reuse_freed_memory`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from pathlib import Path

import torch


def format_bytes(nbytes: float) -> str:
    """1.5e9 -> '1.50 GB' (decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{int(nbytes)} B"


def array_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes of a dense array of `shape` and `dtype`."""
    count = 1
    for size in shape:
        count *= int(size)
    return count * torch.empty((), dtype=dtype).element_size()


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, when there is one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory free for new allocations on `device`: the GPU's free memory, or on a CPU the kernel's
    MemAvailable (page cache that can be dropped included), capped by a cgroup limit."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if free is None:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = _cgroup_free()
    return int(free if cgroup is None else min(free, cgroup))


def require(nbytes: float, *, what: str, n: int, device: torch.device | str, alternative: str,
            available: int | None = None) -> None:
    """Raise MemoryError when `nbytes` exceed the memory free on `device` (or `available`, when given)."""
    free = available_bytes(device) if available is None else int(available)
    if nbytes > free:
        raise MemoryError(f"{what} for N = {n:,} needs about {format_bytes(nbytes)} but {format_bytes(free)} is "
                          f"available on {torch.device(device)}; use {alternative}")


# glibc's malloc gives blocks above M_MMAP_THRESHOLD their own mapping, returned to the operating system when freed,
# and trims the top of its heap once more than M_TRIM_THRESHOLD is free there. Both start at 128 kB and adapt to
# the program only now and then, so a tile's temporaries (2 MB each at 512 x 512 in float64) were often mapped,
# page-faulted and unmapped anew for every tile: a 1-thread Gram at N = 20,000 took 19 s instead of 15 s here, with
# 5 s of system time instead of 1.7 s. (number in <malloc.h>, bytes)
HEAP_SETTINGS = {"M_MMAP_THRESHOLD": (-3, 32 * 2**20), "M_TRIM_THRESHOLD": (-1, 128 * 2**20)}
_heap_set: bool | None = None


def reuse_freed_memory() -> bool:
    """Let this process reuse the memory it frees for blocks of up to 32 MB (`HEAP_SETTINGS`), instead of
    returning it to the operating system and faulting it in again; whether the settings are in force.

    Called before a kernel tile is computed on the CPU (`KernelTiles.__call__`), so in-process Grams and Dask
    workers alike get it (Dask's nanny starts workers with `MALLOC_TRIM_THRESHOLD_=65536`, the opposite). It sets
    glibc's mallopt once per process; a process holds at most 128 MB of freed memory more. Nothing is changed
    where the C library is not glibc, or where the environment sets `MALLOC_MMAP_THRESHOLD_` (the user's own
    choice of these settings).
    """
    global _heap_set
    if _heap_set is None:
        _heap_set = False
        if platform.libc_ver()[0] == "glibc" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            try:
                mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
            except (OSError, AttributeError):
                return False
            _heap_set = all(mallopt(number, value) == 1 for number, value in HEAP_SETTINGS.values())
    return _heap_set
