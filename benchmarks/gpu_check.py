"""The GPU checks in one prepared run, for a machine with a CUDA GPU.

First correctness, against float64 on the CPU: the analytic NTK (ReLU eager and torch.compile, and a
quadrature activation), the empirical NTK, the trained Gaussian's mean, std and covariance, and the large-N
solvers (CG and Nystrom). Then the timings: the analytic NTK at N = 30000 in float32 against the matmul X @ X.T
alone (the goal: within 2x), the empirical NTK at width 8192, N = 256 (the goal: under 0.05 s), the dynamics at
3000 x 3000, 50 times, float64, and Nystrom at N = 1e6, d = 784, M = 20,000 in float32 (the goal: under 2 minutes).
Prints a table and writes JSON.

    PYTHONPATH=src python benchmarks/gpu_check.py --out "$OUT/gpu_check.json"     # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --small                            # a dry run anywhere
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import ntkit as nk
from ntkit.dynamics import InfiniteWidthGP
from ntkit.empirical import empirical_ntk


def timed(fn, device: torch.device, repeat: int = 3) -> float:
    """Median seconds of fn() after one warm-up call."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, on the CPU in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def correctness(device: torch.device, small: bool) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    n = 300 if small else 2000
    X = torch.randn(n, 784, generator=gen, dtype=torch.float64)
    relu = nk.MLP(4, "relu", beta=0.1)
    reference = relu.kernel(X)
    for dtype, compile_ in ((torch.float64, False), (torch.float32, False), (torch.float32, True)):
        K = relu.kernel(X.to(device, dtype), compile=compile_)
        rows.append({"check": f"analytic NTK relu {dtype} compile={compile_}", "n": n,
                     "relative_error": relative(K, reference)})
    Xq = X[:200, :20].contiguous()
    tanh = nk.MLP(3, "tanh", W_std=1.5)
    rows.append({"check": "analytic NTK tanh (quadrature) float64", "n": 200,
                 "relative_error": relative(tanh.kernel(Xq.to(device)), tanh.kernel(Xq))})
    net = relu.network(784, 1024, seed=0).double()
    cpu_ntk = empirical_ntk(net, X[:64], method="structured")
    gpu_ntk = empirical_ntk(net.to(device), X[:64].to(device), method="structured")
    rows.append({"check": "empirical NTK structured float64, width 1024", "n": 64,
                 "relative_error": relative(gpu_ntk, cpu_ntk)})
    Xt, Xs = torch.randn(500, 50, generator=gen, dtype=torch.float64), torch.randn(200, 50, generator=gen,
                                                                                  dtype=torch.float64)
    y = torch.randn(500, generator=gen, dtype=torch.float64)
    times = np.logspace(0, 4, 20)
    cpu_gp, gpu_gp = InfiniteWidthGP(relu, Xt, y), InfiniteWidthGP(relu, Xt.to(device), y.to(device))
    for what in ("std", "cov"):
        want = cpu_gp.predict(Xs, times, return_std=what == "std", return_cov=what == "cov")
        got = gpu_gp.predict(Xs.to(device), times, return_std=what == "std", return_cov=what == "cov")
        rows.append({"check": f"InfiniteWidthGP mean + {what} float64, 20 times", "n": 500,
                     "relative_error": max(relative(g, w) for g, w in zip(got, want, strict=True))})
    exact = cpu_gp.predict(Xs, np.inf)
    for solver, extra in (("cg", {}), ("nystrom", {"n_centers": 500})):
        gp = InfiniteWidthGP(relu, Xt.to(device), y.to(device), solver=solver, ridge=0.0, **extra)
        rows.append({"check": f"InfiniteWidthGP solver={solver} float64, t = inf", "n": 500,
                     "relative_error": relative(gp.predict(Xs.to(device)), exact)})
    return rows


def nystrom_timing(device: torch.device, small: bool) -> dict:
    """Nystrom at N = 1e6, d = 784, M = 20,000, float32 (fit + predict on 10,000 points)."""
    n, m = (20_000, 1_000) if small else (1_000_000, 20_000)
    gen = torch.Generator(device=device).manual_seed(0)
    X = torch.rand(n, 784, generator=gen, device=device)
    y = torch.randn(n, 10, generator=gen, device=device)
    Xs = torch.rand(10_000, 784, generator=gen, device=device)
    relu = nk.MLP(4, "relu", beta=0.1)

    def run():
        gp = InfiniteWidthGP(relu, X, y, solver="nystrom", n_centers=m, ridge=1e-3 * n, dtype=torch.float32,
                             progress=False)
        gp.predict(Xs, progress=False)
    return {"timing": f"Nystrom N={n} M={m} d=784 float32, 10 outputs", "seconds": timed(run, device, 1),
            "goal": "< 120 s"}


def analytic_timings(device: torch.device, n: int) -> list[dict]:
    X = torch.randn(n, 784, device=device, dtype=torch.float32)
    relu = nk.MLP(4, "relu", beta=0.1)
    matmul = timed(lambda: X @ X.T, device)
    rows = []
    for compile_ in (False, True):
        seconds = timed(lambda c=compile_: relu.kernel(X, compile=c, progress=False), device)
        rows.append({"timing": f"analytic NTK N={n} float32 compile={compile_}", "seconds": seconds,
                     "x_matmul": seconds / matmul, "goal": "within 2x of the matmul"})
    return rows


def timings(device: torch.device, small: bool) -> list[dict]:
    rows = analytic_timings(device, 2000 if small else 30000)
    relu = nk.MLP(4, "relu", beta=0.1)
    width = 1024 if small else 8192
    net = relu.network(784, width, seed=0).to(device)
    Xe = torch.randn(256, 784, device=device)
    seconds = timed(lambda: empirical_ntk(net, Xe, method="structured"), device)
    rows.append({"timing": f"empirical NTK width {width}, N=256, float32", "seconds": seconds, "goal": "< 0.05 s"})
    m = 500 if small else 3000
    rng = np.random.default_rng(0)
    Xt, Xs = (torch.from_numpy(rng.standard_normal((m, 784))).to(device) for _ in range(2))
    yt, times = torch.from_numpy(rng.standard_normal(m)).to(device), np.logspace(0, 5, 50)
    for what in ("mean", "std", "cov"):
        def run(what=what):
            gp = InfiniteWidthGP(relu, Xt, yt, progress=False)
            gp.predict(Xs, times, return_std=what == "std", return_cov=what == "cov", progress=False)
        rows.append({"timing": f"dynamics {m} x {m}, 50 times, float64, {what}", "seconds": timed(run, device, 1)})
    rows.append(nystrom_timing(device, small))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="small sizes (a dry run of the script)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_check.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    nk.set_progress(False)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "small": args.small}
    checks = correctness(device, args.small)
    for row in checks:
        print(f"{row['check']:<58} relative error {row['relative_error']:.2e}", flush=True)
    speed = timings(device, args.small)
    for row in speed:
        extra = f"  ({row['x_matmul']:.2f}x matmul)" if "x_matmul" in row else ""
        print(f"{row['timing']:<58} {row['seconds']:9.4f} s{extra}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"info": info, "correctness": checks, "timings": speed}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
