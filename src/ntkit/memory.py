"""Memory estimates before large allocations: a clear `MemoryError` instead of an allocator failure or an
out-of-memory kill.

Every solver states the bytes it needs before allocating them (`require`); when that exceeds what the device
has free, it raises at once, naming N, the bytes needed and available, and a solver that would fit.
"""

from __future__ import annotations

import os
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
