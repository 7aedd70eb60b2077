"""NTK of activations without a closed form: ntkit's Hermite fast path against its 2-D quadrature (the path before,
and the reference) and against neural-tangents' `stax.ElementwiseNumerical` (Gauss-Hermite of degree 25 and 100),
time and accuracy side by side; the same inside a convolution and pooling stack; and the time of a physics-informed
block K_rr = Laplacian_x Laplacian_y Theta.

The reference case: MLP(depth=4, W_std=1.5, beta=0.1), N inputs of dimension 784 on the sphere of radius sqrt(784),
the symmetric NTK Gram, float64 (and float32). Reference: ntkit's quadrature of degree 64 (fast=False), whose maps
the test suite checks against adaptive integration, on the first --n-ref inputs (the degree-64 rule costs minutes on
the full Gram); errors are max |K - K_ref| / max |K_ref| on that block. Times are medians of --repeat runs, in one
process; neural-tangents runs in its own environment (--nt-python or $NT_PYTHON), jit-compiled, compile time
excluded, on the same inputs; it is skipped with a message when not given.

The convolution case: Sequential(Conv2d(3), act, Conv2d(3), act, GlobalAvgPool(), Linear()), --conv-n standard
normal images 3x8x8, float64, where pooling gives every position its own variance. Reference: degree-64 quadrature
on the first --conv-n-ref images. neural-tangents' ElementwiseNumerical integrates every entry of the spatial
covariance on a deg^2 grid at once (27 s and 2.6 GB for 8 images at degree 25 on the 2-core machine, growing with
the square of the images; degree 100 asks for 15.7 GB at 4 images), so the side-by-side with it runs on the first
--conv-nt-n images at --conv-nt-degrees, ntkit timed there too.

    python benchmarks/quadrature.py --nt-python PATH/TO/venv/bin/python
"""

from __future__ import annotations

import argparse
import functools
import json
import math
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
from ntkit import pinn
from ntkit.activations import Quadrature

HERE = Path(__file__).resolve().parent
DEPTH, W_STD, B_STD, D = 4, 1.5, 0.1, 784
F = torch.nn.functional
ACTIVATIONS = {"erf": torch.erf, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "softplus": F.softplus,
               "silu": F.silu}

NT_SCRIPT = r"""
import json, os, statistics, sys, time
os.environ["JAX_ENABLE_X64"] = "1"
import warnings; warnings.filterwarnings("ignore")
import numpy as np, jax, jax.numpy as jnp
from neural_tangents import stax
args = json.loads(sys.argv[1])
x = np.load(args["x"])
conv = args.get("conv", False)
if conv:
    x = np.moveaxis(x, 1, -1)                                       # NCHW -> NHWC
fns = {"erf": jax.scipy.special.erf, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "softplus": jax.nn.softplus,
       "silu": jax.nn.silu}
out = {}
for name in args["names"]:
    for deg in ([0] if name == "erf" else args["degrees"]):           # 0: the closed form stax.Erf
        act = stax.Erf() if deg == 0 else stax.ElementwiseNumerical(fns[name], deg=deg)
        layers = []
        for _ in range(args["depth"] - 1):
            layers += [stax.Conv(1, (3, 3), padding="SAME", W_std=args["w"], b_std=args["b"], parameterization="ntk")
                       if conv else stax.Dense(512, W_std=args["w"], b_std=args["b"], parameterization="ntk"), act]
        layers += [stax.GlobalAvgPool()] if conv else []
        layers += [stax.Dense(1, W_std=args["w"], b_std=args["b"], parameterization="ntk")]
        f = jax.jit(lambda x, k=stax.serial(*layers)[2]: k(x, x, "ntk"))
        k = np.asarray(f(x).block_until_ready())
        times = []
        for _ in range(args["repeat"]):
            t = time.perf_counter(); f(x).block_until_ready(); times.append(time.perf_counter() - t)
        path = os.path.join(args["dir"], f"{name}_{deg}.npy")
        np.save(path, k)
        out[f"{name}_{deg}"] = {"seconds": statistics.median(times), "path": path}
print(json.dumps(out))
"""


def sphere(n: int, seed: int) -> torch.Tensor:
    X = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, D)))
    return X / X.norm(dim=1, keepdim=True) * math.sqrt(D)


def timed(arch, X: torch.Tensor, repeat: int) -> tuple[float, np.ndarray]:
    """Median seconds of arch.kernel(X, get="ntk") and the Gram; arch may be a function that builds it, called
    anew for each run (then no run reuses the Hermite coefficients of another: each pays their computation)."""
    times = []
    for _ in range(repeat):
        model = arch if hasattr(arch, "kernel") else arch()
        start = time.perf_counter()
        K = model.kernel(X, get="ntk", progress=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times), K.double().numpy()


def run_nt(python: str, X: torch.Tensor, names: list[str], degrees: list[int], repeat: int, tmp: str,
           conv: bool = False) -> dict:
    """neural-tangents' kernels of the MLP (or, conv=True, of the convolution stack: depth 3, W_std 1, b_std 0.1)
    on X: {"name_degree": (median seconds, Gram)}."""
    np.save(Path(tmp, "x.npy"), X.numpy())
    spec = {"x": str(Path(tmp, "x.npy")), "names": names, "degrees": degrees, "depth": 3 if conv else DEPTH,
            "w": 1.0 if conv else W_STD, "b": 0.1 if conv else B_STD, "repeat": repeat, "dir": tmp, "conv": conv}
    done = subprocess.run([python, "-c", NT_SCRIPT, json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"neural-tangents failed:\n{done.stderr[-3000:]}")
    results = json.loads(done.stdout.splitlines()[-1])
    return {key: (v["seconds"], np.load(v["path"])) for key, v in results.items()}


def conv_stack(act) -> nk.Sequential:
    """The convolution case: Conv2d(3), act, Conv2d(3), act, GlobalAvgPool(), Linear() (W_std 1, b_std 0.1)."""
    return nk.Sequential(nk.Conv2d(3), nk.Activation(act), nk.Conv2d(3), nk.Activation(act), nk.GlobalAvgPool(),
                         nk.Linear())


def fresh_stack(name: str, made: list) -> nk.Sequential:
    """The convolution case with a new activation object (appended to `made`), whose caches are empty."""
    made.append(nk.activations.get_activation(name))
    return conv_stack(made[-1])


def conv_case(args, nt_python: str | None, tmp: str) -> list[dict]:
    """The convolution case's rows: every activation at --conv-n images (float64 and float32), the quadrature
    before and neural-tangents side by side at --conv-nt-n images, errors against degree 64 on --conv-n-ref."""
    X = torch.from_numpy(np.random.default_rng(args.seed).standard_normal((args.conv_n, 3, 8, 8)))
    small = X[:args.conv_nt_n]
    nt_degrees = [int(v) for v in args.conv_nt_degrees.split(",") if v]
    nt = run_nt(nt_python, small, ["erf", "tanh"], nt_degrees, 1, tmp, conv=True) if nt_python else {}
    rows: list[dict] = []
    erf_seconds: dict = {}
    print(f"\nconvolution stack, {args.conv_n} images 3x8x8 (neural-tangents side by side at {args.conv_nt_n})")
    print(f"{'activation':>9} {'method':>30} {'n':>5} {'path':>11} {'seconds':>9} {'rel. error':>11}")
    timed(conv_stack("erf"), small, 1)                              # warm-up: lazy initialization of torch

    def record(name, reference, method, n, seconds, K, path=""):
        error = float(np.abs(K[:len(reference), :len(reference)] - reference).max() / np.abs(reference).max())
        row = {"case": "conv", "activation": name, "method": method, "path": path, "seconds": seconds,
               "relative_error": error, "n": n, "n_ref": args.conv_n_ref}
        key = (n, method)
        if name == "erf":
            erf_seconds[key] = seconds
        elif key in erf_seconds:
            row["ratio_to_erf"] = seconds / erf_seconds[key]
        rows.append(row)
        ratio = f"{row['ratio_to_erf']:>7.1f}x erf" if "ratio_to_erf" in row else ""
        print(f"{name:>9} {method:>30} {n:>5} {path:>11} {seconds:>9.3f} {error:>11.2e} {ratio}", flush=True)

    for name, fn in ACTIVATIONS.items():
        reference = conv_stack(Quadrature(fn, name=name, degree=64, fast=False)).kernel(
            X[:args.conv_n_ref], get="ntk", progress=False).numpy()
        sizes = [(args.conv_n, torch.float64), (args.conv_n, torch.float32)]
        sizes += [(args.conv_nt_n, torch.float64)] if args.conv_nt_n else []     # 0: no side-by-side size
        for n, dtype in sizes:
            made: list = []
            seconds, K = timed(functools.partial(fresh_stack, name, made), X[:n].to(dtype), args.repeat)
            record(name, reference, f"ntkit {str(dtype)[6:]}", n, seconds, K,
                   getattr(made[-1], "last_path", None) or "closed form")
        if name in args.before.split(","):
            quad = conv_stack(Quadrature(fn, name=name, fast=False))
            record(name, reference, "ntkit quadrature deg 20 (before)", args.conv_nt_n, *timed(quad, small, 1),
                   "quadrature")
        for deg in [0, *nt_degrees]:
            if f"{name}_{deg}" in nt:
                label = "neural-tangents closed form" if deg == 0 else f"neural-tangents deg {deg}"
                record(name, reference, label, args.conv_nt_n, *nt[f"{name}_{deg}"])
    return rows


def krr_time(n: int, repeat: int) -> float:
    """Seconds for K_rr = Laplacian_x Laplacian_y Theta of a tanh MLP on n points of [0, 1]^2."""
    X = torch.from_numpy(np.random.default_rng(1).random((n, 2)))
    arch = nk.MLP(depth=3, activation="tanh", W_std=1.0, b_std=0.1)
    lap = pinn.laplacian(2)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        pinn.operator_kernel(arch, X, left=lap, right=lap)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--n-ref", type=int, default=200, help="inputs of the degree-64 reference block")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--before", default="tanh", help="activations also timed on the quadrature path (slow)")
    parser.add_argument("--nt-python", default=os.environ.get("NT_PYTHON"))
    parser.add_argument("--nt-degrees", default="25,100")
    parser.add_argument("--nt-names", default="erf,tanh", help="activations run through neural-tangents")
    parser.add_argument("--krr-n", type=int, default=1000, help="points of the K_rr timing (0: skip)")
    parser.add_argument("--conv-n", type=int, default=32, help="images of the convolution case (0: skip)")
    parser.add_argument("--conv-n-ref", type=int, default=4, help="images of its degree-64 reference")
    parser.add_argument("--conv-nt-n", type=int, default=4, help="images of its side-by-side with neural-tangents")
    parser.add_argument("--conv-nt-degrees", default="25", help="neural-tangents' degrees in the convolution case "
                        "(degree 100 asks for 15.7 GB at 4 images)")
    parser.add_argument("--mlp", type=int, default=1, help="0: skip the MLP case")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=str(HERE / "results" / "quadrature.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.nt_python:
            print("neural-tangents comparison skipped: pass --nt-python or set NT_PYTHON", file=sys.stderr)
        rows += mlp_case(args, tmp) if args.mlp else []
        rows += conv_case(args, args.nt_python, tmp) if args.conv_n else []
    krr = krr_time(args.krr_n, 1) if args.krr_n else None
    if krr is not None:
        print(f"K_rr = Laplacian_x Laplacian_y Theta, tanh MLP depth 3, {args.krr_n} points in 2-D: {krr:.2f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"benchmark": "quadrature", "machine_cpus": os.cpu_count(),
                                          "torch_threads": torch.get_num_threads(), "rows": rows,
                                          "krr": {"n": args.krr_n, "seconds": krr}}, indent=2))
    print(f"wrote {args.out}")


def mlp_case(args, tmp: str) -> list[dict]:
    """The MLP case's rows (the module docstring)."""
    X = sphere(args.n, args.seed)
    nt_degrees = [int(v) for v in args.nt_degrees.split(",") if v]
    nt_names = [v for v in args.nt_names.split(",") if v]
    before = [v for v in args.before.split(",") if v]
    rows = []

    def record(name, method, seconds, K, reference, scale, path=""):
        error = float(np.abs(K[:len(reference), :len(reference)] - reference).max() / scale)
        rows.append({"case": "mlp", "activation": name, "method": method, "path": path, "seconds": seconds,
                     "relative_error": error, "n": args.n, "n_ref": args.n_ref, "depth": DEPTH, "W_std": W_STD,
                     "b_std": B_STD})
        print(f"{name:>9} {method:>30} {path:>10} {seconds:>9.3f} {error:>11.2e}", flush=True)

    nt = run_nt(args.nt_python, X, nt_names, nt_degrees, args.repeat, tmp) if args.nt_python and nt_names else {}
    print(f"{'activation':>9} {'method':>30} {'path':>10} {'seconds':>9} {'rel. error':>11}")
    erf_seconds = None
    for name, fn in ACTIVATIONS.items():
        reference = nk.MLP(DEPTH, Quadrature(fn, name=name, degree=64, fast=False), W_std=W_STD,
                           b_std=B_STD).kernel(X[:args.n_ref], get="ntk", progress=False).numpy()
        scale = np.abs(reference).max()
        act = nk.activations.get_activation(name)
        arch = nk.MLP(DEPTH, act, W_std=W_STD, b_std=B_STD)
        seconds, K = timed(arch, X, args.repeat)
        path = getattr(act, "last_path", None) or "closed form"
        record(name, "ntkit float64", seconds, K, reference, scale, path)
        erf_seconds = seconds if name == "erf" else erf_seconds
        if name != "erf":
            rows[-1]["ratio_to_erf"] = seconds / erf_seconds
        seconds32, K32 = timed(arch, X.float(), args.repeat)
        record(name, "ntkit float32", seconds32, K32, reference, scale, getattr(act, "last_path", "") or "")
        if name in before:
            quad = nk.MLP(DEPTH, Quadrature(fn, name=name, fast=False), W_std=W_STD, b_std=B_STD)
            record(name, "ntkit quadrature deg 20 (before)", *timed(quad, X, 1), reference, scale, "quadrature")
        for deg in nt_degrees:
            if f"{name}_{deg}" in nt:
                record(name, f"neural-tangents deg {deg}", *nt[f"{name}_{deg}"], reference, scale)
        if name == "erf" and "erf_0" in nt:
            record(name, "neural-tangents closed form", *nt["erf_0"], reference, scale)
    return rows


if __name__ == "__main__":
    main()
