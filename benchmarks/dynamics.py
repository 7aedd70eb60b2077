"""The Gaussian of infinitely wide trained networks at 50 times: ntkit against neural-tangents.

Task (the paper's network: ReLU, L = 4, beta = 0.1, d = 784, float64, inputs standard normal,
targets standard normal): mean and covariance on the test set at 50 log-spaced times, from the raw
inputs (the kernels are part of the work). ntkit runs three variants: mean + full covariance
(`return_cov=True`), mean + standard deviation only (`return_std=True`), and the mean alone.
neural-tangents runs `nt.predict.gradient_descent_mse_ensemble(...)(t, x_test, "ntk", compute_cov=True)`,
its way to get either of the first two. Both results are compared (max abs difference on the first
200 test points) so the timings are of the same numbers.

    python benchmarks/dynamics.py --sizes 1000 --nt-python /path/to/nt-venv/bin/python
    python benchmarks/dynamics.py --sizes 1000,3000 --repeat 1

neural-tangents is skipped, with a message, when neither --nt-python nor NT_PYTHON is given.
Timings are medians of --repeat runs (neural-tangents: --nt-repeat, default 1: it is slow).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import ntkit as nk
from ntkit.dynamics import InfiniteWidthGP

HERE = Path(__file__).resolve().parent
CHECK = 200          # test points compared with neural-tangents

NT_SCRIPT = r"""
import json, os, sys, time
os.environ["JAX_ENABLE_X64"] = "1"
import numpy as np
import jax
import neural_tangents as nt
from neural_tangents import stax
args = json.loads(sys.argv[1])
data = np.load(args["data"])
layers = []
for _ in range(args["depth"] - 1):
    layers += [stax.Dense(512, W_std=1.0, b_std=args["beta"], parameterization="ntk"), stax.Relu()]
layers += [stax.Dense(1, W_std=1.0, b_std=args["beta"], parameterization="ntk")]
_, _, kernel_fn = stax.serial(*layers)
times = []
for _ in range(args["repeat"]):
    start = time.perf_counter()
    predict = nt.predict.gradient_descent_mse_ensemble(kernel_fn, data["x_train"], data["y_train"][:, None])
    mean, cov = predict(t=data["times"], x_test=data["x_test"], get="ntk", compute_cov=True)
    cov.block_until_ready()
    times.append(time.perf_counter() - start)
c = args["check"]
np.savez(args["out"], mean=np.asarray(mean)[:, :c, 0], cov=np.asarray(cov)[:, :c, :c])
print(json.dumps({"seconds": times, "device": str(jax.devices()[0]), "jax": jax.__version__}))
"""


def problem(n_train: int, n_test: int, d: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.standard_normal((n_train, d)), "y_train": rng.standard_normal(n_train),
            "x_test": rng.standard_normal((n_test, d)), "times": np.logspace(0, 5, 50)}


def run_ntkit(data: dict[str, np.ndarray], depth: int, beta: float, what: str) -> tuple[float, tuple]:
    arch = nk.MLP(depth, "relu", beta=beta)
    start = time.perf_counter()
    gp = InfiniteWidthGP(arch, data["x_train"], data["y_train"], progress=False)
    result = gp.predict(data["x_test"], data["times"], return_cov=what == "cov", return_std=what == "std",
                        progress=False)
    return time.perf_counter() - start, result if isinstance(result, tuple) else (result,)


def run_nt(python: str, data: dict[str, np.ndarray], depth: int, beta: float, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp, "data.npz"), **data)
        args = {"data": str(Path(tmp, "data.npz")), "out": str(Path(tmp, "out.npz")), "depth": depth,
                "beta": beta, "repeat": repeat, "check": CHECK}
        proc = subprocess.run([python, "-c", NT_SCRIPT, json.dumps(args)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"neural-tangents failed:\n{proc.stderr[-3000:]}")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(Path(tmp, "out.npz")) as out:
            info["mean"], info["cov"] = out["mean"], out["cov"]
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000", help="comma-separated N (train = test = N)")
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nt-repeat", type=int, default=1)
    parser.add_argument("--nt-python", default=os.environ.get("NT_PYTHON"),
                        help="python of an environment with neural-tangents (default: $NT_PYTHON)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both tools (default: each tool's own default). On a shared machine "
                             "--threads 1 gives steadier, fairer numbers")
    parser.add_argument("--out", default=str(HERE / "results" / "dynamics.json"))
    args = parser.parse_args()
    nk.set_progress(False)
    if args.threads:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)          # read by SciPy's BLAS (loaded later) and by the NT child
        os.environ["XLA_FLAGS"] = (f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'} "
                                   f"intra_op_parallelism_threads={args.threads}")
        torch.set_num_threads(args.threads)
    if not args.nt_python:
        print("neural-tangents comparison skipped: pass --nt-python or set NT_PYTHON", file=sys.stderr)

    rows = []
    print(f"{'N':>6} {'what':>5} {'ntkit s':>9} {'NT s':>9} {'NT/ntkit':>9} {'max|mean diff|':>15} "
          f"{'max|cov diff|':>14}")
    for n in [int(s) for s in args.sizes.split(",")]:
        data = problem(n, n, args.d, args.seed)
        measured = {}
        for what in ("mean", "std", "cov"):     # cheapest first: the covariances' gigabytes are freed last
            seconds, result = [], None
            for _ in range(args.repeat):
                elapsed, result = run_ntkit(data, args.depth, args.beta, what)
                seconds.append(elapsed)
            kept = (np.array(result[0][:, :CHECK]), None if what == "mean" else       # copies: the rest is freed
                    np.array(result[1][:, :CHECK, :CHECK] if what == "cov" else result[1][:, :CHECK]))
            measured[what] = (seconds, kept)
            del result
        # neural-tangents runs after ntkit: the gigabytes its process frees slow down whatever runs next here
        nt_info = run_nt(args.nt_python, data, args.depth, args.beta, args.nt_repeat) if args.nt_python else None
        nt_seconds = statistics.median(nt_info["seconds"]) if nt_info else None
        for what, (seconds, (mean, spread)) in measured.items():
            median = statistics.median(seconds)
            row = {"n_train": n, "n_test": n, "d": args.d, "depth": args.depth, "times": 50, "what": what,
                   "ntkit_seconds": median, "ntkit_all_seconds": seconds, "threads": torch.get_num_threads()}
            mean_diff = cov_diff = None
            if nt_info is not None:
                row.update(nt_seconds=nt_seconds, nt_all_seconds=nt_info["seconds"], ratio=nt_seconds / median,
                           nt_device=nt_info["device"])
                mean_diff = float(np.abs(mean - nt_info["mean"]).max())
                if what == "cov":
                    cov_diff = float(np.abs(spread - nt_info["cov"]).max())
                elif what == "std":
                    nt_std = np.sqrt(np.clip(np.diagonal(nt_info["cov"], axis1=1, axis2=2), 0, None))
                    cov_diff = float(np.abs(spread - nt_std).max())
                row.update(max_abs_mean_diff=mean_diff, max_abs_cov_or_std_diff=cov_diff)
            rows.append(row)
            fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
            print(f"{n:>6} {what:>5} {median:>9.2f} {fmt(nt_seconds, '9.2f'):>9} "
                  f"{fmt(nt_seconds / median if nt_seconds else None, '9.2f'):>9} {fmt(mean_diff, '15.2e'):>15} "
                  f"{fmt(cov_diff, '14.2e'):>14}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"benchmark": "dynamics", "machine_cpus": os.cpu_count(), "rows": rows},
                                         indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
