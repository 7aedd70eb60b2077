"""Shared fixtures: seeded randomness and the location of the real MNIST digits."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit as nk

nk.set_progress(False)

ROOT = Path(__file__).resolve().parents[1]


def mnist_dir() -> Path | None:
    """The folder of real MNIST IDX files: $NTKIT_TEST_MNIST, else ../shared/data/mnist beside the project."""
    candidates = [os.environ.get("NTKIT_TEST_MNIST", ""), ROOT.parent / "shared" / "data" / "mnist"]
    for candidate in candidates:
        if candidate and Path(candidate, "t10k-images-idx3-ubyte.gz").exists():
            return Path(candidate)
    return None


@pytest.fixture
def mnist_path() -> Path:
    path = mnist_dir()
    if path is None:
        pytest.skip("the real MNIST files are not available here")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test with one torch thread: tiny problems and many small steps are as fast that way on an
    idle machine, and many times faster on a busy one (OpenMP threads spinning at every small op).
    Use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Hypothesis profiles for the fuzz suite (tests/test_fuzz_*.py): the default run uses "fast", a few dozen
# examples per test, always derandomized so a default run is reproducible; `--hypothesis-profile=slow`
# runs many more, derandomized (a fixed seed) when CI is set so failures reproduce there too.
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a dev dependency; without it the fuzz tests are skipped
    pass
else:
    _CI = bool(os.environ.get("CI"))
    _COMMON = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.data_too_large])
    settings.register_profile("fast", max_examples=50, derandomize=True, database=None, **_COMMON)
    settings.register_profile("slow", max_examples=1000, derandomize=_CI,
                              database=None if _CI else settings.default.database, **_COMMON)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
