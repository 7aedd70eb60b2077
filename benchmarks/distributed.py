"""Beyond one process: Dask workers and resumable zarr stores against the in-process Gram, side by side.

The NTK Gram of a depth-3 ReLU MLP on N standard normal points in d = 784, float64, tiles of 512:

- in this process with one BLAS thread (the in-process baseline; each Dask worker has one thread too), and with
  the default threads;
- on a local Dask cluster (127.0.0.1) of 1 and of 2 single-threaded worker processes, into memory (a new Gram,
  made in shared memory, which the workers write into: `ntkit.gram.shared`);
- into a zarr store, in this process (a second thread writes each tile while the next is computed) and on 1 and 2
  workers (each worker writes its tiles straight into the store);
- resumed from a store whose writer was killed (SIGKILL) at 50% of its tiles, against a full run;
- matrix-free products K V (V: N x 10, one pass of a CG solve) in this process and on 2 workers (the tiles sent
  with each pass: a new cluster each round);
- a matrix-free CG solve of (K + ridge I) A = Y (ntkit.solvers, N = --cg-n, Y: N x 10) in this process and on
  2 workers (the products on the workers), with a worker count of iterations and the agreement of the two.

The Grams run in `--repeat` rounds (default 3), each round every configuration once, in the same order (new
clusters each round): this machine's speed drifts by 20% within minutes, and rounds spread that drift over every
configuration alike. The fastest run of each is reported. Every run's Gram is checked bitwise against the
in-process one. Goals (on an idle 2-core machine,
N = 20,000): 2 workers at least 1.7x faster than 1; 1 worker at most 15% slower than in-process; the store at most
15% slower than memory; the resume at most 55% of a full run.

    python benchmarks/distributed.py                 # N = 20,000: 3.2 GB per Gram in memory and on disk
    python benchmarks/distributed.py --n 6000        # a smaller run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# this script's folder comes first on sys.path, and this file's name would hide Dask's `distributed` package
sys.path = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ntkit as nk  # noqa: E402
from ntkit import gram  # noqa: E402
from ntkit.gram.distributed import local_cluster  # noqa: E402

KILLED_RUN = """
import sys, numpy as np, torch, ntkit as nk
torch.set_num_threads(1)
X = torch.from_numpy(np.load(sys.argv[1]))
nk.gram.evaluate(nk.MLP(int(sys.argv[3])).kernel_tiles(X, tile=int(sys.argv[4])), sys.argv[2], show_progress=False)
"""


def cpu_seconds(client=None) -> float:
    """CPU time (user + system) used so far by this process and, with a client, by its workers."""
    import psutil

    def used() -> float:
        times = psutil.Process().cpu_times()
        return times.user + times.system

    return used() + (sum(client.run(used).values()) if client is not None else 0.0)


def timed(fn, *args, watch=None, **kwargs):
    """fn's result, and its (wall seconds, CPU seconds of this process and the workers of `watch`, a client; by
    default fn's `client`): on a shared machine the CPU seconds show the work done, whatever the other jobs took."""
    client = watch if watch is not None else kwargs.get("client")
    cpu = cpu_seconds(client)
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    return result, (seconds, cpu_seconds(client) - cpu)


def digest(array) -> str:
    """SHA-256 of a Gram's bytes, read in blocks of rows (a tensor, a NumPy array or a zarr array)."""
    import hashlib

    sha = hashlib.sha256()
    for start in range(0, array.shape[0], 2048):
        block = array[start:start + 2048]
        sha.update(np.ascontiguousarray(block.numpy() if isinstance(block, torch.Tensor) else block).tobytes())
    return sha.hexdigest()


class Runs:
    """Every run of each configuration: its (wall, CPU seconds) and its Gram's digest. Noise on a shared machine
    only adds time, so the fastest run is the one closest to the work itself (as timeit advises)."""

    def __init__(self) -> None:
        self.times: dict[str, list[tuple[float, float]]] = {}
        self.digests: dict[str, set[str]] = {}

    def timed(self, key: str, fn, *args, **kwargs):
        """fn(*args, **kwargs), its seconds kept as a run of `key` (`timed`'s keywords work here)."""
        result, measured = timed(fn, *args, **kwargs)
        self.times.setdefault(key, []).append(measured)
        return result

    def run(self, key: str, fn, *args, before=None, **kwargs) -> None:
        """Call `before` (untimed), then time fn(*args, **kwargs) and digest the Gram it returns."""
        if before is not None:
            before()
        result = self.timed(key, fn, *args, **kwargs)
        self.digests.setdefault(key, set()).add(digest(result[0] if isinstance(result, list) else result))

    def fastest(self, key: str) -> tuple[str, tuple[float, float]]:
        """The digest of every run's Gram ("differs" when two runs differ) and the fastest run's seconds."""
        digests = self.digests[key]
        return (next(iter(digests)) if len(digests) == 1 else "differs"), min(self.times[key])


def kill_at_half(X: np.ndarray, path: Path, depth: int, tile: int, total: int, workdir: Path) -> int:
    """Run the store in a subprocess and SIGKILL it once half of its tiles are recorded; the tiles recorded."""
    np.save(workdir / "x.npy", X)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NTKIT_PROGRESS": "0"}
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(workdir / "x.npy"), str(path), str(depth),
                                str(tile)], env=env)
    records = path / "done" / "c"
    while process.poll() is None:
        if records.exists() and sum(1 for f in records.glob("*/*") if not f.name.endswith(".partial")) >= total / 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    import zarr

    return int(np.asarray(zarr.open_group(str(path), mode="r")["done"][...]).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--k", type=int, default=10, help="columns of V in the products K V")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each Gram; the fastest is reported")
    parser.add_argument("--cg-n", type=int, default=3000, help="points of the CG solve (0: skip it)")
    parser.add_argument("--ridge", type=float, default=0.1, help="ridge of the CG solve")
    parser.add_argument("--workdir", default=None, help="folder for the stores (default: a temporary folder)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "distributed.json"))
    args = parser.parse_args()
    import distributed

    nk.set_progress(False)
    default_threads = torch.get_num_threads()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ntkit-distributed-"))
    workdir.mkdir(parents=True, exist_ok=True)
    arch = nk.MLP(args.depth)
    X = torch.randn(args.n, args.d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    V = torch.randn(args.n, args.k, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    total = len(arch.kernel_tiles(X, tile=args.tile).pairs())
    rows: list[dict] = []

    def record(key: str, what: str, seconds: float, cpu: float, found: str | None = None, **extra) -> None:
        equal = None if found is None else found == reference
        rows.append({"key": key, "what": what, "seconds": seconds, "cpu_seconds": cpu, "bitwise_equal": equal,
                     **extra})
        same = "" if equal is None else ("  bitwise equal" if equal else "  DIFFERS")
        print(f"{what:<62} {seconds:8.2f} s {cpu:8.2f} s{same}", flush=True)

    def fresh(path: Path):  # every store a new one
        return lambda: shutil.rmtree(path, ignore_errors=True)

    from ntkit.solvers import KernelOperator, cg

    runs = Runs()
    finished: list[int] = []    # the tiles recorded before each kill
    products: dict[str, list[torch.Tensor]] = {"matmul": [], "workers2_matmul": []}
    solves: dict[str, list] = {"cg": [], "workers2_cg": []}
    Y = V[:args.cg_n]

    def killed_at_half(path: Path):  # a new store, its writer killed at half, before each resume
        def kill() -> None:
            fresh(path)()
            finished.append(kill_at_half(X.numpy(), path, args.depth, args.tile, total, workdir))
        return kill

    def passes(key: str, client=None) -> None:  # one K V and one CG solve (the tiles sent anew on a new cluster)
        products[key].append(runs.timed(key, gram.matmul, arch.kernel_tiles(X, tile=args.tile), V, client=client))
        if args.cg_n:
            operator = KernelOperator(arch.kernel_tiles(X[:args.cg_n], tile=args.tile), client=client)
            solve = key.replace("matmul", "cg")
            solves[solve].append(runs.timed(solve, cg.solve, operator, Y, args.ridge, watch=client))

    # every in-memory Gram is a new one, as `arch.kernel(X)` returns it (its pages are touched for the first time)
    for round_ in range(1, args.repeat + 1):
        torch.set_num_threads(1)
        runs.run("memory", arch.kernel, X, tile=args.tile)
        torch.set_num_threads(default_threads)
        runs.run("memory_threads", arch.kernel, X, tile=args.tile)
        torch.set_num_threads(1)
        path = workdir / "inprocess.zarr"
        runs.run("store", arch.kernel, X, tile=args.tile, out=path, before=fresh(path))
        runs.run("resume", arch.kernel, X, tile=args.tile, out=path, before=killed_at_half(path))
        shutil.rmtree(path)
        passes("matmul")
        for workers in (1, 2):
            with local_cluster(workers) as cluster, distributed.Client(cluster) as client:
                client.run(lambda: __import__("ntkit"))  # workers started, as a long job's would be
                runs.run(f"workers{workers}", arch.kernel, X, tile=args.tile, client=client)
                path = workdir / "workers.zarr"
                runs.run(f"workers{workers}_store", arch.kernel, X, tile=args.tile, out=path, client=client,
                         before=fresh(path))
                shutil.rmtree(path)
                if workers == 2:
                    passes("workers2_matmul", client)
        print(f"round {round_}/{args.repeat}: " + ", ".join(f"{key} {times[-1][0]:.2f} s"
                                                             for key, times in runs.times.items()), flush=True)

    print(f"\n{'':<62} {'wall':>10} {'CPU':>10}")
    reference, (seconds, cpu) = runs.fastest("memory")
    record("memory", "in-process, 1 thread (memory)", seconds, cpu)
    _, (seconds, cpu) = runs.fastest("memory_threads")
    record("memory_threads", f"in-process, {default_threads} threads (memory)", seconds, cpu)
    found, (seconds, cpu) = runs.fastest("store")
    record("store", "in-process, 1 thread (zarr store)", seconds, cpu, found)
    at = f"{min(finished)}" if min(finished) == max(finished) else f"{min(finished)}-{max(finished)}"
    found, (seconds, cpu) = runs.fastest("resume")
    record("resume", f"resume after SIGKILL at {at}/{total} tiles (store)", seconds, cpu, found,
           finished_before=finished, total_tiles=total)
    record("matmul", "in-process, 1 thread: K V", *min(runs.times["matmul"]))
    if args.cg_n:
        solved = solves["cg"][0]
        record("cg", f"in-process, 1 thread: CG solve, N = {args.cg_n} ({solved.iterations} iterations)",
               *min(runs.times["cg"]), residual=solved.residual)
    for workers in (1, 2):
        name = f"{workers} worker{'s' if workers > 1 else ''} x 1 thread"
        found, (seconds, cpu) = runs.fastest(f"workers{workers}")
        record(f"workers{workers}", f"{name} (memory)", seconds, cpu, found)
        found, (seconds, cpu) = runs.fastest(f"workers{workers}_store")
        record(f"workers{workers}_store", f"{name} (zarr store, written by the workers)", seconds, cpu, found)
    record("workers2_matmul", "2 workers x 1 thread: K V", *min(runs.times["workers2_matmul"]))
    rows[-1]["bitwise_equal"] = all(torch.equal(KV, products["matmul"][0])
                                    for KV in products["matmul"] + products["workers2_matmul"])
    if args.cg_n:
        there = solves["workers2_cg"][0]
        difference = max(float((other.solution - solved.solution).norm() / solved.solution.norm())
                         for other in solves["cg"] + solves["workers2_cg"])
        record("workers2_cg", f"2 workers x 1 thread: CG solve ({there.iterations} iterations, "
               f"largest relative difference {difference:.1e})", *min(runs.times["workers2_cg"]),
               residual=there.residual, relative_difference=difference)
    torch.set_num_threads(default_threads)

    find = {row["key"]: row["seconds"] for row in rows}
    ratios = {
        "2 workers vs 1 worker, memory (speedup; goal >= 1.7)": find["workers1"] / find["workers2"],
        "2 workers vs 1 worker, store (speedup; reported)": find["workers1_store"] / find["workers2_store"],
        "1 worker vs in-process (time ratio; goal <= 1.15)": find["workers1"] / find["memory"],
        "zarr store vs memory (time ratio; goal <= 1.15)": find["store"] / find["memory"],
        "resume after kill at 50% vs full run (time ratio; goal <= 0.55)": find["resume"] / find["store"],
        "2 workers (store) vs in-process (memory) (speedup)": find["memory"] / find["workers2_store"],
        "K V on 2 workers vs in-process (speedup)": find["matmul"] / find["workers2_matmul"],
    }
    if args.cg_n:
        ratios["CG solve on 2 workers vs in-process (speedup)"] = find["cg"] / find["workers2_cg"]
    cpu = {row["key"]: row["cpu_seconds"] for row in rows}
    cpu_ratios = {  # the work done, as the machine's other jobs do not change it: overheads of each path
        "1 worker vs in-process (CPU seconds, all processes)": cpu["workers1"] / cpu["memory"],
        "2 workers vs in-process (CPU seconds, all processes)": cpu["workers2"] / cpu["memory"],
        "2 workers, store vs in-process, memory (CPU seconds)": cpu["workers2_store"] / cpu["memory"],
        "zarr store vs memory, in-process (CPU seconds)": cpu["store"] / cpu["memory"],
        "resume vs full store run (CPU seconds)": cpu["resume"] / cpu["store"],
    }
    print()
    for name, value in [*ratios.items(), *cpu_ratios.items()]:
        print(f"{name:<66} {value:6.2f}")
    result = {"n": args.n, "d": args.d, "depth": args.depth, "tile": args.tile, "k": args.k, "dtype": "float64",
              "tiles": total, "default_threads": default_threads, "load_average": os.getloadavg(),
              "machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "dask": distributed.__version__, "rows": rows, "ratios": ratios, "cpu_ratios": cpu_ratios,
              "rounds": {key: [list(run) for run in times] for key, times in runs.times.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
