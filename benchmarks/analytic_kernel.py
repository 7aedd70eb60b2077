"""Analytic NTK Theta^(L) of the paper's network: ntkit against neural-tangents, side by side.

Fully-connected ReLU, L = 4, d = 784, beta = 0.1, standard normal inputs, the symmetric Gram
K(X, X) for N in --sizes, float32 and float64. neural-tangents runs in its own environment
(--nt-python, or the NT_PYTHON environment variable; its kernel_fn jit-compiled, compile time
excluded). Also reported: the time of the X @ X.T matmul alone (the floor any method pays), the time of the
same network written as layers, nk.Sequential(Linear, ReLU, ..., Linear), which runs the same fused recursion
(its ratio to MLP should be 1 within noise), and the agreement of the two libraries in float64.

    python benchmarks/analytic_kernel.py --sizes 1000 4000 10000 --nt-python PATH/TO/venv/bin/python
    python benchmarks/analytic_kernel.py --device cuda --sizes 30000 --dtypes float32 --compile   # GPU goal
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import ntkit as nk

NT_SCRIPT = r"""
import json, os, statistics, sys, time
n, d, depth, beta, x64, repeat, seed, save = sys.argv[1:9]
if x64 == "1":
    os.environ["JAX_ENABLE_X64"] = "1"
import numpy as np, jax
from neural_tangents import stax
layers = []
for _ in range(int(depth) - 1):
    layers += [stax.Dense(512, W_std=1.0, b_std=float(beta), parameterization="ntk"), stax.Relu()]
layers += [stax.Dense(1, W_std=1.0, b_std=float(beta), parameterization="ntk")]
kernel_fn = stax.serial(*layers)[2]
dtype = np.float64 if x64 == "1" else np.float32
x = np.random.default_rng(int(seed)).standard_normal((int(n), int(d))).astype(dtype)
f = jax.jit(lambda x: kernel_fn(x, x, "ntk"))
k = f(x).block_until_ready()
times = []
for _ in range(int(repeat)):
    t = time.perf_counter(); f(x).block_until_ready(); times.append(time.perf_counter() - t)
if save != "-":
    np.save(save, np.asarray(k))
print(json.dumps({"median_s": statistics.median(times), "device": str(jax.devices()[0])}))
"""


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_nt(nt_python: str, n: int, d: int, depth: int, beta: float, x64: bool, repeat: int, seed: int,
           save: str | None) -> dict | None:
    cmd = [nt_python, "-c", NT_SCRIPT, str(n), str(d), str(depth), str(beta), "1" if x64 else "0",
           str(repeat), str(seed), save or "-"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"neural-tangents failed at N={n}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 10000])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nt-python", default=os.environ.get("NT_PYTHON"),
                        help="python of an environment with neural-tangents (default: $NT_PYTHON; skipped if unset)")
    parser.add_argument("--compile", action="store_true",
                        help="time MLP.kernel(..., compile=True): the torch.compile-fused recursion (for GPUs)")
    parser.add_argument("--agreement-n", type=int, default=2000, help="N of the float64 agreement check")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "analytic_kernel.json"))
    args = parser.parse_args()
    nk.set_progress(False)
    arch = nk.MLP(depth=args.depth, activation="relu", beta=args.beta)
    chain = nk.Sequential(*[layer for _ in range(args.depth - 1) for layer in (nk.Linear(b_std=args.beta), nk.ReLU())],
                          nk.Linear(b_std=args.beta))
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for n in args.sizes:
            x = np.random.default_rng(0).standard_normal((n, args.d))
            X = torch.as_tensor(x, dtype=dtype, device=args.device)
            ours = median_time(lambda X=X: arch.kernel(X, compile=args.compile), args.repeat)
            matmul = median_time(lambda X=X: X @ X.T, args.repeat)
            layered = median_time(lambda X=X: chain.kernel(X, compile=args.compile), args.repeat)
            nt = run_nt(args.nt_python, n, args.d, args.depth, args.beta, dtype_name == "float64",
                        args.repeat, 0, None) if args.nt_python else None
            row = {"n": n, "dtype": dtype_name, "device": args.device, "compile": args.compile,
                   "ntkit_s": ours, "matmul_s": matmul, "sequential_s": layered, "sequential_over_mlp": layered / ours,
                   "ntkit_over_matmul": ours / matmul, "neural_tangents_s": nt and nt["median_s"],
                   "ntkit_over_nt": nt and ours / nt["median_s"]}
            rows.append(row)
            versus = f"  neural-tangents {nt['median_s']:8.3f}s  ntkit/nt {ours / nt['median_s']:5.2f}" if nt else ""
            print(f"N={n:6d} {dtype_name}: ntkit {ours:8.3f}s  matmul {matmul:7.3f}s  "
                  f"ntkit/matmul {ours / matmul:5.2f}  Sequential/MLP {layered / ours:5.2f}{versus}", flush=True)

    agreement = None
    if args.nt_python:
        with tempfile.TemporaryDirectory() as tmp:
            save = str(Path(tmp) / "nt.npy")
            if run_nt(args.nt_python, args.agreement_n, args.d, args.depth, args.beta, True, 1, 0, save):
                reference = np.load(save)
                x = np.random.default_rng(0).standard_normal((args.agreement_n, args.d))
                ours = arch.kernel(x)
                diff = np.abs(ours - reference)
                off = ~np.eye(len(x), dtype=bool)
                agreement = {
                    "n": args.agreement_n,
                    "max_rel_offdiagonal": float(diff[off].max() / np.abs(reference).max()),
                    "max_rel_all": float(diff.max() / np.abs(reference).max()),
                    "max_rel_diagonal_vs_exact": float(np.abs(np.diag(reference) - arch.kernel_diag(x)).max()
                                                       / np.abs(reference).max()),
                }
                print(f"float64 agreement at N={args.agreement_n}: off-diagonal max rel "
                      f"{agreement['max_rel_offdiagonal']:.2e}; diagonal: neural-tangents vs the exact "
                      f"diagonal {agreement['max_rel_diagonal_vs_exact']:.2e} (its arccos rounding)")

    print()
    print(f"{'N':>6} {'dtype':>8} {'ntkit s':>9} {'matmul s':>9} {'ntkit/mm':>9} {'seq/MLP':>9} {'NT s':>9} "
          f"{'ntkit/NT':>9}")
    for r in rows:
        nt_s = f"{r['neural_tangents_s']:9.3f}" if r["neural_tangents_s"] else f"{'-':>9}"
        ratio = f"{r['ntkit_over_nt']:9.2f}" if r["ntkit_over_nt"] else f"{'-':>9}"
        print(f"{r['n']:6d} {r['dtype']:>8} {r['ntkit_s']:9.3f} {r['matmul_s']:9.3f} "
              f"{r['ntkit_over_matmul']:9.2f} {r['sequential_over_mlp']:9.2f} {nt_s} {ratio}")
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "rows": rows, "agreement": agreement}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
