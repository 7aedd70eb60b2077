"""Kernel regression with the exact NTK past one machine's memory: the solvers side by side.

Parts (each method runs in its own process, so its peak memory is its own):

  exact   N = 20,000, d = 784, float64, depth 3: Cholesky (in place), CG on the stored Gram, CG matrix-free, and
          Nystrom with M = 1,000 and 4,000. Time, peak memory, agreement with the Cholesky predictions.
  scale   a synthetic teacher task (d = 100, targets from a fixed random deep ReLU network plus noise of variance
          0.01, so the best possible test error is 0.01) at N = 1e4 ... 1e6 with Nystrom: test error, time, memory.
  mnist   deformed copies (small random affine and elastic deformations) of 5,000 MNIST test digits for training,
          the other 5,000 untouched for testing, N_train = 5k ... 200k: NTK Nystrom against scikit-learn's
          Nystroem(kernel="rbf") + RidgeClassifier with the same M.

    python benchmarks/large_n.py --part exact scale mnist --out benchmarks/results/large_n.json
    python benchmarks/large_n.py --part scale --sizes 10000,100000 --quick       # smaller sizes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ELASTIC_ALPHA = 20.0


# ----------------------------------------------------------------------------------------- data
def teacher_task(n: int, n_test: int = 2000, d: int = 100, noise: float = 0.1, seed: int = 0):
    """Inputs uniform on the sphere of radius sqrt(d); targets from a fixed random ReLU network of depth 4 and width
    256 in the NTK parametrization (normalized to unit variance) plus N(0, noise^2) noise on training targets."""
    import torch

    g = torch.Generator().manual_seed(1234)                     # the teacher is fixed across sizes
    widths = [d, 256, 256, 256, 1]
    weights = [torch.randn(a, b, generator=g, dtype=torch.float64) for a, b in zip(widths[:-1], widths[1:],
                                                                                   strict=True)]

    def teacher(X):
        h = torch.as_tensor(X, dtype=torch.float64)
        for i, W in enumerate(weights):
            h = h @ W / np.sqrt(W.shape[0])
            if i < len(weights) - 1:
                h = torch.relu(h)
        return h[:, 0].numpy()

    rng = np.random.default_rng(seed)

    def sphere(m):
        Z = rng.standard_normal((m, d))
        return Z / np.linalg.norm(Z, axis=1, keepdims=True) * np.sqrt(d)

    X, Xt = sphere(n), sphere(n_test)
    scale = teacher(sphere(5000)).std()
    y = teacher(X) / scale + noise * rng.standard_normal(n)
    return X, y, Xt, teacher(Xt) / scale


def deformed_mnist(n_train: int, folder: Path, seed: int = 0):
    """Training: the first 5,000 MNIST test digits, then deformed copies of them (random rotation +-10 degrees, scale
    0.9-1.1, shear +-0.1, shift +-1.5 px, and an elastic field (Simard et al. 2003) of alpha 20 smoothed at sigma 4,
    about 0.8 px rms); test: the last 5,000, untouched. Pixels in [0, 1]."""
    from scipy import ndimage

    from ntkit.data import load_mnist

    images, labels, _ = load_mnist("test", folder, download=False)
    images = np.asarray(images, dtype=np.float64).reshape(-1, 28, 28) / 255.0
    base, base_labels = images[:5000], labels[:5000]
    test, test_labels = images[5000:].reshape(5000, -1), labels[5000:]
    rng = np.random.default_rng(seed)
    out = np.empty((n_train, 784))
    ys = np.empty(n_train, dtype=np.int64)
    grid = np.mgrid[0:28, 0:28].astype(np.float64)
    for i in range(n_train):
        k = i % 5000
        if i < 5000:
            out[i] = base[k].reshape(-1)
        else:
            angle = np.deg2rad(rng.uniform(-10, 10))
            s = rng.uniform(0.9, 1.1)
            shear = rng.uniform(-0.1, 0.1)
            A = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ \
                np.array([[1, shear], [0, 1]]) / s
            centre = np.array([13.5, 13.5])
            offset = centre - A @ centre + rng.uniform(-1.5, 1.5, size=2)
            dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (28, 28)), 4) * ELASTIC_ALPHA
            dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (28, 28)), 4) * ELASTIC_ALPHA
            coords = np.einsum("ij,jxy->ixy", A, grid) + offset[:, None, None] + np.stack([dy, dx])
            out[i] = ndimage.map_coordinates(base[k], coords, order=1, mode="constant").reshape(-1)
        ys[i] = base_labels[k]
    return out, ys, test, test_labels


# ------------------------------------------------------------------------------------- one method
def run_one(spec: dict) -> dict:
    """Run one method of one part in this process; return its measurements."""
    import torch

    import ntkit as nk

    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    nk.set_progress(False)
    part, method = spec["part"], spec["method"]
    dtype = torch.float64 if spec.get("dtype", "float64") == "float64" else torch.float32
    if part == "exact":
        rng = np.random.default_rng(0)
        n, d = spec["n"], 784
        X = torch.as_tensor(rng.random((n, d)), dtype=dtype)
        y = torch.as_tensor(rng.standard_normal(n), dtype=dtype)
        Xt = torch.as_tensor(rng.random((1000, d)), dtype=dtype)
        yt = None
    elif part == "scale":
        X, y, Xt, yt = (torch.as_tensor(a, dtype=dtype) for a in teacher_task(spec["n"]))
    else:
        X, labels, Xt, test_labels = deformed_mnist(spec["n"], Path(spec["data"]))
        if method == "sklearn-rbf":
            return run_sklearn(X, labels, Xt, test_labels, spec)
        X, Xt = torch.as_tensor(X, dtype=dtype), torch.as_tensor(Xt, dtype=dtype)
        y = torch.as_tensor(np.eye(10)[labels] - 0.1, dtype=dtype)
    arch = nk.MLP(depth=spec.get("depth", 3))
    start = time.perf_counter()
    options = {"solver": method.split("-")[0], "ridge": spec["ridge"], "dtype": dtype}
    if method.startswith("nystrom"):
        options["n_centers"] = spec["m"]
    if "tol" in spec:
        options["tol"] = spec["tol"]
    if method == "cg-matrix-free":
        options["memory_budget"] = 1.0                   # nothing may be stored: every product recomputes tiles
    gp = nk.InfiniteWidthGP(arch, X, y, **options)
    mean = gp.predict(Xt)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "iterations": gp.iterations, "solver": gp.solver}
    mean = mean.double().numpy()
    if part == "exact":
        np.save(spec["save"], mean)
    elif part == "scale":
        result["test_mse"] = float(np.mean((mean - yt.double().numpy()) ** 2))
    else:
        result["accuracy"] = float(np.mean(mean.argmax(1) == test_labels))
    return result


def run_sklearn(X, labels, Xt, test_labels, spec) -> dict:
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline

    start = time.perf_counter()
    gamma = 1.0 / (X.shape[1] * X.var())                                     # scikit-learn's gamma="scale"
    model = make_pipeline(Nystroem(kernel="rbf", gamma=gamma, n_components=spec["m"], random_state=0),
                          RidgeClassifier(alpha=1e-3))
    accuracy = float(model.fit(X, labels).score(Xt, test_labels))
    return {"seconds": time.perf_counter() - start, "accuracy": accuracy,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def in_subprocess(spec: dict, timeout: float) -> dict:
    """`run_one` in a fresh interpreter (its own peak memory); an error or a time-out is recorded, not raised."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), NTKIT_PROGRESS="0")
    try:
        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- parts
def part_exact(args, rows: list) -> None:
    n = args.exact_n
    methods = [("cholesky", {}), ("cg", {}), ("cg-matrix-free", {}), ("nystrom-1000", {"m": 1000}),
               ("nystrom-4000", {"m": 4000})]
    saved = {}
    for method, extra in methods:
        path = Path(args.scratch) / f"exact_{method}.npy"
        spec = {"part": "exact", "method": method, "n": n, "ridge": 1e-3, "save": str(path), **extra}
        result = in_subprocess(spec, args.timeout)
        if "error" not in result:
            saved[method] = np.load(path)
            if "cholesky" in saved:
                ref = saved["cholesky"]
                result["relative_difference_to_cholesky"] = float(np.linalg.norm(saved[method] - ref) /
                                                                  np.linalg.norm(ref))
        rows.append({"part": "exact", "method": method, "n": n, **extra, **result})
        print_row(rows[-1])


def part_scale(args, rows: list) -> None:
    for n in args.sizes:
        large = n >= args.float32_at           # float32 and fewer centres, so K(X, centres) is cached within 8 GB
        m = args.centers_large if large else (args.centers or min(n, max(1000, int(4 * np.sqrt(n)))))
        dtype = "float32" if large else args.dtype
        spec = {"part": "scale", "method": f"nystrom-{m}", "m": m, "n": n, "ridge": args.ridge * n,
                "dtype": dtype, "tol": max(args.tol, 1e-5) if dtype == "float32" else args.tol}
        rows.append({"part": "scale", "method": "nystrom", "n": n, "m": m, "dtype": dtype, "noise_floor_mse": 0.01,
                     **in_subprocess(spec, args.timeout)})
        print_row(rows[-1])


def part_mnist(args, rows: list) -> None:
    for n in args.mnist_sizes:
        m = min(n, args.mnist_centers)
        for method in ("cholesky" if n <= 5000 else f"nystrom-{m}", "sklearn-rbf"):
            spec = {"part": "mnist", "method": method, "m": m, "n": n, "ridge": args.mnist_ridge, "depth": 4,
                    "data": args.data, "dtype": args.dtype, "tol": args.tol}
            rows.append({"part": "mnist", "method": method, "n": n, "m": m, **in_subprocess(spec, args.timeout)})
            print_row(rows[-1])


def print_row(row: dict) -> None:
    fields = [f"{row['part']:6s}", f"{row['method']:16s}", f"N={row['n']:>9,}"]
    for key, fmt in (("seconds", "{:8.1f} s"), ("peak_rss_bytes", "{:>8}"), ("iterations", "it {:>4}"),
                     ("test_mse", "mse {:.4f}"), ("accuracy", "acc {:.4f}"),
                     ("relative_difference_to_cholesky", "vs chol {:.1e}"), ("error", "ERROR {}")):
        if key in row:
            value = row[key]
            fields.append(f"{value / 1e9:.2f} GB" if key == "peak_rss_bytes" else fmt.format(value))
    print("  ".join(fields), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--part", nargs="+", default=["exact", "scale", "mnist"], choices=["exact", "scale", "mnist"])
    parser.add_argument("--exact-n", type=int, default=20_000)
    parser.add_argument("--sizes", type=lambda s: [int(float(v)) for v in s.split(",")],
                        default=[10_000, 30_000, 100_000, 300_000, 1_000_000])
    parser.add_argument("--centers", type=int, default=None, help="Nystrom centres in the scale part")
    parser.add_argument("--float32-at", type=int, default=1_000_000,
                        help="scale sizes from this N on run in float32 with --centers-large centres")
    parser.add_argument("--centers-large", type=int, default=1500)
    parser.add_argument("--ridge", type=float, default=1e-4, help="ridge per training point in the scale part")
    parser.add_argument("--mnist-sizes", type=lambda s: [int(float(v)) for v in s.split(",")],
                        default=[5_000, 20_000, 50_000, 200_000])
    parser.add_argument("--mnist-centers", type=int, default=4000)
    parser.add_argument("--mnist-ridge", type=float, default=1e-2)
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--tol", type=float, default=1e-6, help="relative residual of the iterative solvers")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--scratch", default=tempfile.gettempdir())
    parser.add_argument("--out", default="benchmarks/results/large_n.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    import torch

    rows: list = []
    for part in args.part:
        {"exact": part_exact, "scale": part_scale, "mnist": part_mnist}[part](args, rows)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
               "load_average": os.getloadavg()}
    payload = {"machine": machine, "gpu": "not yet measured on a GPU", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
