"""The cost of a scikit-learn kernel with its hyperparameter gradient, NTK against RBF with one length scale per
feature (ARD), in one run.

`kernel(X, eval_gradient=True)` is what GaussianProcessRegressor's optimizer calls at every step. At the size of
scikit-learn's diabetes data (N = 353 training points, d = 10 features; the data themselves, standardised, when
scikit-learn ships them), side by side, median of `--repeats` calls in interleaved rounds:

- RBF(length_scale=np.ones(d)): 10 hyperparameters, scikit-learn's closed-form gradient;
- NTK(depth=2) and NTK(depth=4) (ReLU MLP): W_std and b_std, ntkit's gradient in closed form, carried through the
  recursion (`ntkit.sklearn.gradient`);
- NTK(depth=2, scale_bounds=(...), W_std_bounds="fixed"): the non-redundant form (b_std and the output scale);
- NTK(depth=2) with one W_std and b_std per layer (4 hyperparameters), and with erf;
- NNGP(depth=2);
- NTK(depth=2) by reverse-mode autograd (the path every other architecture takes), for reference.

Prints a table with the ratio to the RBF-ARD kernel, in wall time and in CPU time (all threads; less sensitive to
other work on a shared machine), and writes JSON (default benchmarks/results/sklearn_kernel_gradient.json).

    python benchmarks/sklearn_kernel_gradient.py --repeats 30 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_diabetes
from sklearn.gaussian_process.kernels import RBF

import ntkit as nk
from ntkit.sklearn import NNGP, NTK

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sklearn_kernel_gradient.json"


class Autograd(NTK):
    """NTK whose gradient takes the reverse-mode autograd path of architectures without closed forms."""

    def _chain_gradient(self, X, chain, values, free_names):
        free = [h for h in self.hyperparameters if not h.fixed]
        return self._autograd_gradient(X, values, free, free_names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    nk.set_progress(False)
    X = load_diabetes().data[:353]
    X = (X - X.mean(0)) / X.std(0)
    kernels = {
        "RBF-ARD": RBF(length_scale=np.ones(X.shape[1])),
        "NTK(depth=2)": NTK(depth=2),
        "NTK(depth=4)": NTK(depth=4),
        "NTK(depth=2) scale, b_std": NTK(depth=2, W_std_bounds="fixed", scale_bounds=(1e-3, 1e3)),
        "NTK(depth=2) per layer": NTK(depth=2, W_std=[1.0, 1.0], b_std=[0.1, 0.1]),
        "NTK(depth=2, erf)": NTK(depth=2, activation="erf"),
        "NNGP(depth=2)": NNGP(depth=2),
        "NTK(depth=2) autograd": Autograd(depth=2),
    }
    times: dict[str, list[float]] = {name: [] for name in kernels}
    cpu: dict[str, list[float]] = {name: [] for name in kernels}
    for kernel in kernels.values():   # warm up
        kernel(X, eval_gradient=True)
    for _ in range(args.repeats):     # interleaved rounds: the machine's load hits every kernel alike
        for name, kernel in kernels.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            kernel(X, eval_gradient=True)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    base, base_cpu = statistics.median(times["RBF-ARD"]), statistics.median(cpu["RBF-ARD"])
    rows = {}
    print(f"kernel(X, eval_gradient=True), N = {X.shape[0]}, d = {X.shape[1]}, median of {args.repeats}, "
          f"{torch.get_num_threads()} torch threads (CPU time: of all threads)")
    print(f"{'kernel':<28} {'hyperparameters':>15} {'ms':>8} {'/ RBF-ARD':>10} {'CPU ms':>8} {'/ RBF-ARD':>10}")
    for name, kernel in kernels.items():
        median, median_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        rows[name] = {"ms": 1e3 * median, "ratio": median / base, "cpu_ms": 1e3 * median_cpu,
                      "cpu_ratio": median_cpu / base_cpu, "n_theta": len(kernel.theta),
                      "all_ms": [1e3 * t for t in times[name]]}
        print(f"{name:<28} {len(kernel.theta):>15} {1e3 * median:>8.2f} {median / base:>10.2f} "
              f"{1e3 * median_cpu:>8.2f} {median_cpu / base_cpu:>10.2f}")
    record = {"benchmark": "sklearn_kernel_gradient", "n": X.shape[0], "d": X.shape[1], "repeats": args.repeats,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "versions": {"ntkit": nk.__version__, "torch": torch.__version__}, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
