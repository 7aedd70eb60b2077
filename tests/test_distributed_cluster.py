"""A real Dask deployment on this machine: a `dask scheduler` and two `dask worker` processes on free ports of
127.0.0.1, started as a user starts them, used by ntkit, and shut down cleanly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import gram

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
from ntkit.gram.distributed import connect  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = Path(nk.__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dask(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "dask", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))


def test_a_real_scheduler_and_two_workers_compute_the_same_gram_and_shut_down_cleanly(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    scheduler = dask("scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard",
                     log=tmp_path / "scheduler.log")
    workers = [dask("worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                    "--name", f"w{k}", log=tmp_path / f"worker{k}.log") for k in range(2)]
    processes = [scheduler, *workers]
    try:
        client = None
        deadline = time.monotonic() + 60
        while client is None:  # the scheduler takes a moment to listen
            try:
                client = connect(address, timeout=5)
            except ConnectionError:
                if time.monotonic() > deadline or scheduler.poll() is not None:
                    raise
                time.sleep(0.5)
        with client:
            client.wait_for_workers(2, timeout=60)
            assert sorted(info["name"] for info in client.scheduler_info()["workers"].values()) == ["w0", "w1"]
            X = torch.randn(120, 5, dtype=torch.float64)
            tiles = nk.MLP(3).kernel_tiles(X, get=("nngp", "ntk"), tile=16)
            stored = gram.evaluate(tiles, tmp_path / "K.zarr", client=client)
            for array, reference in zip(stored, gram.evaluate(tiles), strict=True):
                np.testing.assert_array_equal(array[...], reference.numpy())
            V = torch.randn(120, 2, dtype=torch.float64)
            assert torch.equal(gram.matmul(tiles, V, client=client), gram.matmul(tiles, V))
            ran = {info["name"] for info in client.run(lambda dask_worker: {"name": dask_worker.name}).values()}
            assert ran == {"w0", "w1"}
            client.shutdown()  # stops the scheduler and the workers
        for process in processes:
            assert process.wait(timeout=60) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
