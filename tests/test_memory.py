"""Tiled kernels reuse the memory they free (`ntkit.memory.reuse_freed_memory`): counted in page faults."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc settings")

SECOND_GRAM_FAULTS = textwrap.dedent("""
    import resource, torch, ntkit as nk
    from ntkit import gram
    torch.set_num_threads(1)
    X = torch.randn(2048, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tiles = nk.MLP(3).kernel_tiles(X, tile=512)
    K = torch.zeros(2048, 2048, dtype=torch.float64)          # the Gram's own pages touched once, here
    gram.tiles.fill(tiles, [K], show_progress=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    gram.tiles.fill(tiles, [K], show_progress=False)          # the same 10 tiles again
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, nk.memory._heap_set)
""")


def second_gram(env: dict[str, str]) -> tuple[int, str]:
    """Page faults of a second Gram into the same memory, in a new process with `env` added; whether the heap
    settings were in force."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", SECOND_GRAM_FAULTS], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[0]), out[1]


def test_tiles_reuse_freed_memory_even_under_dasks_trim_setting():
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536, which freezes glibc's mmap threshold at 128 kB: without
    the settings each 2 MB temporary of each tile is mapped and faulted anew (about 56,000 faults for these 10
    tiles); with them, freed memory is reused (0-1,024 faults seen: the interpreter's own; a 2048^2 float64 Gram has
    8,192 pages)."""
    faults, applied = second_gram({"MALLOC_TRIM_THRESHOLD_": "65536"})
    assert applied == "True"
    assert faults < 4096
    faults, applied = second_gram({})
    assert applied == "True"
    assert faults < 4096


def test_users_own_mmap_threshold_is_kept():
    """MALLOC_MMAP_THRESHOLD_ in the environment is the user's choice: left as it is (and this one makes every
    temporary a fresh mapping, which the count above would show)."""
    faults, applied = second_gram({"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert applied == "False"
    assert faults > 10_000
