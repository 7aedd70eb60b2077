"""Physics-informed operator kernels: K_uu = Theta, K_ur = Laplacian_y Theta and K_rr = Laplacian_x Laplacian_y Theta
of the infinitely wide network on N points of [0, 1]^2, by the dense-chain path (`ntkit.pinn_dense`: Taylor
polynomials in x.y, |x|^2, |y|^2 through the recursion), side by side at a smaller N with the nested-autograd path
(`method="autograd"`, what ran before for every architecture) and with the empirical K_rr of one finite network of
the same architecture by torch.func (the parameter Jacobian of the Laplacian of u, what the PINN literature
computes), in one run.

The case: MLP(depth=3, W_std=1.0, b_std=0.1), tanh and erf, float64, points uniform on [0, 1]^2 (seed 1). Times
are single runs (the nested-autograd K_rr takes minutes), wall and CPU time of the process (ratios of CPU times,
which other jobs on the machine disturb less); the agreement of the two exact paths is max |dense -
autograd| / max |autograd| over the pairs of distinct points (at coincident points nested autograd through erf's
closed form is wrong: see the tests).

    python benchmarks/pinn.py [--n 1000] [--n-small 100] [--width 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import ntkit as nk
from ntkit import pinn

HERE = Path(__file__).resolve().parent
DEPTH, W_STD, B_STD = 3, 1.0, 0.1


def timed(fn):
    """(wall seconds, CPU seconds of this process, result): the CPU time shows the work where other jobs share the
    machine."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def blocks(arch, X: torch.Tensor, method: str) -> dict[str, tuple[float, float, torch.Tensor]]:
    """{"K_uu", "K_ur", "K_rr": (seconds, CPU seconds, block)} on the points X (symmetric: the residual and
    boundary points both X, as the timing of the blocks' shapes needs)."""
    lap = pinn.laplacian(2)
    return {"K_uu": timed(lambda: pinn.operator_kernel(arch, X, method=method)),
            "K_ur": timed(lambda: pinn.operator_kernel(arch, X, right=lap, method=method)),
            "K_rr": timed(lambda: pinn.operator_kernel(arch, X, left=lap, right=lap, method=method))}


def empirical_krr(arch, X: torch.Tensor, width: int) -> tuple[float, float, torch.Tensor]:
    """The empirical K_rr = J_r J_r^T of one network of `width`, J_r the parameter Jacobian of Laplacian u at the
    points, by torch.func (vmap of jacrev of the trace of the input Hessian)."""
    from torch.func import functional_call, hessian, jacrev, vmap

    net = arch.network(in_features=2, width=width, seed=0, dtype=torch.float64)
    params = {k: v.detach() for k, v in net.named_parameters()}

    def lap_u(p, x):
        return torch.diagonal(hessian(lambda z: functional_call(net, p, (z[None, :],))[0, 0])(x)).sum()

    def run():
        jac = vmap(jacrev(lap_u), in_dims=(None, 0))(params, X)
        J = torch.cat([v.reshape(X.shape[0], -1) for v in jac.values()], 1)
        return J @ J.T

    return timed(run)


def off_diagonal_error(a: torch.Tensor, b: torch.Tensor) -> float:
    mask = ~torch.eye(a.shape[0], dtype=torch.bool)
    return float((a - b)[mask].abs().max() / b[mask].abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="points of the dense-path timing")
    parser.add_argument("--n-small", type=int, default=100, help="points of the side-by-side comparison")
    parser.add_argument("--width", type=int, default=256, help="width of the finite network (empirical K_rr)")
    parser.add_argument("--activations", default="tanh,erf")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(HERE / "results" / "pinn.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(1)
    X = torch.from_numpy(rng.random((args.n, 2)))
    Xs = X[:args.n_small]
    rows = []
    print(f"{'activation':>10} {'block':>5} {'N':>5} {'method':>24} {'seconds':>9} {'CPU s':>9} {'vs dense':>9} "
          f"{'rel. diff':>9}")

    def record(name, block, n, method, seconds, cpu, ratio=None, diff=None):
        rows.append({"activation": name, "block": block, "n": n, "method": method, "seconds": seconds,
                     "cpu_seconds": cpu, "ratio_to_dense": ratio, "relative_difference": diff, "depth": DEPTH,
                     "W_std": W_STD, "b_std": B_STD})
        ratio_text = "" if ratio is None else f"{ratio:.3g}x"
        diff_text = "" if diff is None else f"{diff:.1e}"
        print(f"{name:>10} {block:>5} {n:>5} {method:>24} {seconds:>9.3f} {cpu:>9.3f} {ratio_text:>9} {diff_text:>9}",
              flush=True)

    for name in [v for v in args.activations.split(",") if v]:
        arch = nk.MLP(depth=DEPTH, activation=name, W_std=W_STD, b_std=B_STD)
        pinn.operator_kernel(arch, X[:4], left=pinn.laplacian(2), right=pinn.laplacian(2))   # coefficients, once
        for block, (seconds, cpu, _) in blocks(arch, X, "dense").items():
            record(name, block[2:], args.n, "dense chain", seconds, cpu)
        dense = blocks(arch, Xs, "dense")
        slow = blocks(arch, Xs, "autograd")
        for block in dense:
            record(name, block[2:], args.n_small, "dense chain", *dense[block][:2])
            record(name, block[2:], args.n_small, "nested autograd", *slow[block][:2], slow[block][1] / dense[block][1],
                   off_diagonal_error(dense[block][2], slow[block][2]))
        seconds, cpu, _ = empirical_krr(arch, Xs, args.width)
        record(name, "rr", args.n_small, f"empirical, width {args.width}", seconds, cpu, cpu / dense["K_rr"][1])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"benchmark": "pinn", "machine_cpus": os.cpu_count(),
                                          "load_average": os.getloadavg()[0], "torch_threads": torch.get_num_threads(),
                                          "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
