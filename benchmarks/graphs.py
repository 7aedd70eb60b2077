"""Graph Neural Tangent Kernel (Du et al. 2019): ntkit's `Aggregate` against neural-tangents' `stax.Aggregate`, side by
side in one run.

A 3-layer GNTK: (Aggregate, node-wise Dense, ReLU) three times, a sum readout, Dense (W_std = 1, b_std = 0, so that the
padding of smaller graphs with isolated nodes of zero features changes nothing). N random undirected graphs of 20 to 60
nodes (edge probability 0.15, self-loops), 8 features per node, padded to 60 nodes; the symmetric NTK Gram in float64.
neural-tangents runs in its own environment (--nt-python or $NT_PYTHON; its kernel_fn jit-compiled, the compile call
excluded, the graphs given as dense patterns); both in fresh processes limited to --threads threads. Also the two
Grams' largest relative difference.

    python benchmarks/graphs.py --nt-python PATH/TO/venv/bin/python [--n 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from child_process import run_json

OUT = Path(__file__).resolve().parent / "results" / "graphs.json"

NT_SCRIPT = r"""
import json, os, resource, statistics, sys, time
os.environ["JAX_ENABLE_X64"] = "1"
import numpy as np, jax
from neural_tangents import stax
data, repeat, save = sys.argv[1], int(sys.argv[2]), sys.argv[3]
z = np.load(data)
x, A = np.moveaxis(z["features"], 1, -1), z["adjacency"]
layers = []
for _ in range(3):
    layers += [stax.Aggregate(), stax.Dense(1, W_std=1.0, b_std=0.0, parameterization="ntk"), stax.Relu()]
kernel_fn = stax.serial(*layers, stax.GlobalSumPool(), stax.Dense(1, W_std=1.0, b_std=0.0))[2]
f = jax.jit(lambda x, A: kernel_fn(x, None, "ntk", pattern=(A, A)))
k = f(x, A).block_until_ready()
times = []
for _ in range(repeat):
    t = time.perf_counter(); f(x, A).block_until_ready(); times.append(time.perf_counter() - t)
np.save(save, np.asarray(k))
print(json.dumps({"median_s": statistics.median(times),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

OURS_SCRIPT = r"""
import json, resource, statistics, sys, time
import numpy as np, torch, ntkit as nk
sys.path.insert(0, sys.argv[4])
from graphs import gntk
data, repeat, save = sys.argv[1], int(sys.argv[2]), sys.argv[3]
nk.set_progress(False)
z = np.load(data)
X = nk.layers.graphs(torch.as_tensor(z["features"]), torch.as_tensor(z["adjacency"]))
arch = gntk()
times = []
for _ in range(repeat):
    t = time.perf_counter(); K = arch.kernel(X); times.append(time.perf_counter() - t)
np.save(save, K.numpy())
print(json.dumps({"median_s": statistics.median(times),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def gntk():
    """The benchmark's GNTK as ntkit layers."""
    import ntkit as nk
    from ntkit.layers import Aggregate, GlobalSumPool

    layers = []
    for _ in range(3):
        layers += [Aggregate(), nk.Conv1d(1, b_std=0.0), nk.ReLU()]
    return nk.Sequential(*layers, GlobalSumPool(), nk.Linear(b_std=0.0))


def random_graphs(n: int, features: int, low: int, high: int, p: float, seed: int = 0):
    """n undirected graphs of low..high nodes with self-loops, padded to `high` nodes: features (n, C, high) and
    adjacency (n, high, high)."""
    rng = np.random.default_rng(seed)
    F = np.zeros((n, features, high))
    A = np.zeros((n, high, high))
    for i in range(n):
        v = int(rng.integers(low, high + 1))
        upper = np.triu(rng.random((v, v)) < p, 1)
        A[i, :v, :v] = upper + upper.T + np.eye(v)
        F[i, :, :v] = rng.standard_normal((features, v))
    return F, A




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nt-python", default=os.environ.get("NT_PYTHON"),
                        help="python of an environment with neural-tangents (default: $NT_PYTHON; skipped if unset)")
    parser.add_argument("--n", type=int, default=200, help="graphs (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls, the median reported (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="threads of each library (default 1)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    F, A = random_graphs(args.n, 8, 20, 60, 0.15)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "graphs.npz")
        np.savez(data, features=F, adjacency=A)
        here = str(Path(__file__).resolve().parent)
        ours = run_json([sys.executable, "-c", OURS_SCRIPT, data, str(args.repeat), str(Path(tmp) / "ours.npy"),
                         here], "ntkit", args.threads)
        rows["ntkit"] = ours
        theirs = None
        if args.nt_python:
            theirs = run_json([args.nt_python, "-c", NT_SCRIPT, data, str(args.repeat), str(Path(tmp) / "nt.npy")],
                              "neural-tangents", args.threads)
            rows["neural-tangents"] = theirs
        agreement = None
        if ours and theirs:
            mine, reference = np.load(Path(tmp) / "ours.npy"), np.load(Path(tmp) / "nt.npy")
            agreement = float(np.abs(mine - reference).max() / np.abs(reference).max())
    ratio = ours["median_s"] / theirs["median_s"] if ours and theirs else None
    print(f"3-layer GNTK, N = {args.n} graphs of 20-60 nodes (padded to 60), float64, {args.threads} thread(s)")
    print(f"{'':18s}{'time (s)':>10s}{'peak RSS (GB)':>15s}")
    for name, row in rows.items():
        if row:
            print(f"{name:18s}{row['median_s']:10.2f}{row['peak_rss_gb']:15.2f}")
    if ratio is not None:
        print(f"ntkit / neural-tangents time: {ratio:.2f}x; max relative difference of the Grams {agreement:.1e}")
    result = {"n": args.n, "nodes": [20, 60], "features": 8, "edge_probability": 0.15, "threads": args.threads,
              "dtype": "float64", "ntkit": ours, "neural_tangents": rows.get("neural-tangents"),
              "time_ratio": ratio, "max_rel_difference": agreement, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
