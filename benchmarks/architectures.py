"""Convolutional NTKs (CNTK): ntkit's layers against neural-tangents' `stax`, side by side, plus MNIST accuracy.

Architectures (ReLU, 3x3 "same" convolutions, W_std = 1, b_std = 0.1, channel counts infinite), inputs standard
normal (N, 1, 16, 16) (NHWC for neural-tangents), the symmetric Gram Theta(X, X):

    flatten CNTK: conv-relu-conv-relu-flatten-dense                            positions' diagonal, O(N^2 HW)
    pool CNTK:    conv-relu-conv-relu-avgpool(2)-conv-relu-globalavgpool-dense all pairs of positions, O(N^2 (HW)^2)

neural-tangents runs in its own environment (--nt-python or $NT_PYTHON; its kernel_fn jit-compiled, the compile
call excluded). Both run with --threads threads (default 1: on a shared machine two-thread timings of either
library vary several-fold from run to run). ntkit's peak memory is the maximum resident set of a fresh process
that computes the kernel.
Also: agreement of the two in float64, and CNTKs against the fully-connected NTK (`MLP`) as kernel regression on
MNIST (train/test splits of the 10k test digits from --data-dir or $NTKIT_DATA; nothing is downloaded): the flatten
CNTK on 28x28 digits, the pooling CNTK on digits averaged to 14x14 (a smaller split: it costs O(N^2 (HW)^2)).

    python benchmarks/architectures.py --nt-python PATH/TO/venv/bin/python --data-dir PATH/TO/MNIST
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ntkit as nk
from child_process import run_json
from ntkit.data import load_mnist

OUT = Path(__file__).resolve().parent / "results" / "architectures.json"

NT_SCRIPT = r"""
import json, os, resource, statistics, sys, time
arch, n, x64, repeat, save = sys.argv[1:6]
if x64 == "1":
    os.environ["JAX_ENABLE_X64"] = "1"
import numpy as np, jax
from neural_tangents import stax
conv = lambda: stax.Conv(1, (3, 3), padding="SAME", W_std=1.0, b_std=0.1, parameterization="ntk")
dense = stax.Dense(1, W_std=1.0, b_std=0.1, parameterization="ntk")
if arch == "flatten":
    layers = [conv(), stax.Relu(), conv(), stax.Relu(), stax.Flatten(), dense]
else:
    layers = [conv(), stax.Relu(), conv(), stax.Relu(), stax.AvgPool((2, 2), (2, 2)), conv(), stax.Relu(),
              stax.GlobalAvgPool(), dense]
kernel_fn = stax.serial(*layers)[2]
x = np.random.default_rng(0).standard_normal((int(n), 1, 16, 16))
x = np.moveaxis(x, 1, -1).astype(np.float64 if x64 == "1" else np.float32)
f = jax.jit(lambda x: kernel_fn(x, None, "ntk"))
k = f(x).block_until_ready()
times = []
for _ in range(int(repeat)):
    t = time.perf_counter(); f(x).block_until_ready(); times.append(time.perf_counter() - t)
if save != "-":
    np.save(save, np.asarray(k))
print(json.dumps({"median_s": statistics.median(times),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

OURS_SCRIPT = r"""
import json, resource, statistics, sys, time
import numpy as np, torch, ntkit as nk
sys.path.insert(0, sys.argv[5])
from architectures import architecture
arch, n, dtype, repeat = sys.argv[1], int(sys.argv[2]), getattr(torch, sys.argv[3]), int(sys.argv[4])
nk.set_progress(False)
x = torch.as_tensor(np.random.default_rng(0).standard_normal((n, 1, 16, 16)), dtype=dtype)
model = architecture(arch)
times = []
for _ in range(repeat):
    t = time.perf_counter(); model.kernel(x); times.append(time.perf_counter() - t)
print(json.dumps({"median_s": statistics.median(times),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def architecture(name: str) -> nk.Sequential:
    """The benchmark's architectures, as ntkit layers."""
    if name == "flatten":
        return nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.Conv2d(3), nk.ReLU(), nk.Flatten(), nk.Linear())
    return nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.Conv2d(3), nk.ReLU(), nk.AvgPool2d(2), nk.Conv2d(3), nk.ReLU(),
                         nk.GlobalAvgPool(), nk.Linear())


THREADS = 1


def ours(arch: str, n: int, dtype: str, repeat: int) -> dict | None:
    """ntkit in a fresh process, so that its peak resident memory is this kernel's."""
    return run_json([sys.executable, "-c", OURS_SCRIPT, arch, str(n), dtype, str(repeat),
                     str(Path(__file__).resolve().parent)], f"ntkit {arch} N={n}", THREADS)


def neural_tangents(nt_python: str, arch: str, n: int, dtype: str, repeat: int, save: str | None = None):
    return run_json([nt_python, "-c", NT_SCRIPT, arch, str(n), "1" if dtype == "float64" else "0", str(repeat),
                     save or "-"], f"neural-tangents {arch} N={n}", THREADS)


def agreement(nt_python: str, n: int, tmp: Path) -> dict:
    """Max relative difference of the float64 Grams (off the diagonal; on it neural-tangents' arccos of a
    correlation of 1 rounds to about 1e-8)."""
    out = {}
    x = torch.as_tensor(np.random.default_rng(0).standard_normal((n, 1, 16, 16)))
    for arch in ("flatten", "pool"):
        save = str(tmp / f"nt_{arch}.npy")
        if neural_tangents(nt_python, arch, n, "float64", 1, save) is None:
            continue
        reference = np.load(save)
        mine = architecture(arch).kernel(x).numpy()
        off = ~np.eye(n, dtype=bool)
        out[arch] = {"n": n, "max_rel_offdiagonal": float(np.abs(mine - reference)[off].max() /
                                                         np.abs(reference).max()),
                     "max_rel_diagonal": float(np.abs(np.diag(mine) - np.diag(reference)).max() /
                                               np.abs(reference).max())}
    return out


def regression(kernels: dict, y: torch.Tensor, n_train: int, ridge: float, label: str) -> dict:
    """Kernel regression (one-hot targets, ridge relative to the mean diagonal) of each (arch, inputs): the test
    accuracy on the examples after the first n_train, and the time of the kernels."""
    train, test = slice(0, n_train), slice(n_train, None)
    results = {}
    for name, (arch, inputs) in kernels.items():
        start = time.perf_counter()
        k_train = arch.kernel(inputs[train])
        k_test = arch.kernel(inputs[test], inputs[train])
        seconds = time.perf_counter() - start
        scale = float(k_train.diagonal().mean())
        alpha = torch.linalg.solve(k_train + ridge * scale * torch.eye(n_train, dtype=k_train.dtype), y[train])
        accuracy = float(((k_test @ alpha).argmax(1) == y[test].argmax(1)).double().mean())
        results[name] = {"accuracy": accuracy, "kernel_s": seconds}
        print(f"MNIST {label}: {name:26s} accuracy {accuracy:.4f}  (kernels {seconds:.1f} s)", flush=True)
    return results


def mnist(data_dir: str | None, n_train: int, n_test: int, pool_train: int, pool_test: int, ridge: float
          ) -> dict | None:
    """CNTKs against the MLP NTK on splits of the 10k MNIST test digits (pixels in [0, 1]): the flatten CNTK on
    28x28 digits, and (the pooling CNTK costs O(N^2 (HW)^2)) the pooling CNTK on digits averaged to 14x14 with a
    smaller split."""
    try:
        images, labels, _ = load_mnist("test", data_dir=data_dir, download=False)
    except FileNotFoundError as exc:
        print(f"MNIST skipped: {exc}", file=sys.stderr)
        return None
    order = np.random.default_rng(0).permutation(len(images))
    x = torch.as_tensor(images[order], dtype=torch.float64)[:, None] / 255.0
    y = torch.nn.functional.one_hot(torch.as_tensor(labels[order]), 10).to(torch.float64)
    mlp = nk.MLP(depth=3, activation="relu", beta=0.1)
    n = n_train + n_test
    full = regression({"flatten CNTK": (architecture("flatten"), x[:n]), "MLP NTK (depth 3)": (mlp, x[:n].flatten(1))},
                      y[:n], n_train, ridge, f"28x28, train {n_train}, test {n_test}")
    n = pool_train + pool_test
    x14 = torch.nn.functional.avg_pool2d(x[:n], 2)
    small = regression({"pool CNTK": (architecture("pool"), x14), "flatten CNTK": (architecture("flatten"), x14),
                        "MLP NTK (depth 3)": (mlp, x14.flatten(1))},
                       y[:n], pool_train, ridge, f"14x14, train {pool_train}, test {pool_test}")
    return {"ridge": ridge,
            "digits_28x28": {"n_train": n_train, "n_test": n_test, "results": full},
            "digits_14x14": {"n_train": pool_train, "n_test": pool_test, "results": small}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nt-python", default=os.environ.get("NT_PYTHON"),
                        help="python of an environment with neural-tangents (default: $NT_PYTHON; skipped if unset)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--large-n", type=int, default=256, help="N of the memory case (ntkit only)")
    parser.add_argument("--nt-large", action="store_true",
                        help="also try neural-tangents at --large-n (it asked for 60 GB at N = 128)")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--agreement-n", type=int, default=8)
    parser.add_argument("--data-dir", default=os.environ.get("NTKIT_DATA"))
    parser.add_argument("--mnist-train", type=int, default=1000)
    parser.add_argument("--mnist-test", type=int, default=1000)
    parser.add_argument("--mnist-pool-train", type=int, default=200)
    parser.add_argument("--mnist-pool-test", type=int, default=200)
    parser.add_argument("--ridge", type=float, default=1e-4, help="ridge, relative to the mean diagonal")
    parser.add_argument("--parts", nargs="+", default=["speed", "agreement", "mnist"],
                        choices=["speed", "agreement", "mnist"])
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of each library (default 1: steady timings on a shared machine)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    nk.set_progress(False)
    global THREADS
    THREADS = args.threads
    torch.set_num_threads(args.threads)

    cases = [("flatten", 128, "float32", "at most 0.5x neural-tangents"),
             ("flatten", 128, "float64", "at most 0.5x neural-tangents"),
             ("pool", 64, "float64", "at most 0.3x neural-tangents")]
    if not args.skip_large:
        cases.append(("pool", args.large_n, "float64", "completes within 4 GB peak"))
    rows = []
    for arch, n, dtype, goal in cases if "speed" in args.parts else []:
        large = n == args.large_n and arch == "pool"
        mine = ours(arch, n, dtype, 1 if large else args.repeat)
        nt = None
        if args.nt_python and (not large or args.nt_large):
            nt = neural_tangents(args.nt_python, arch, n, dtype, 1 if large else args.repeat)
        row = {"architecture": arch, "n": n, "dtype": dtype, "goal": goal,
               "ntkit_s": mine and mine["median_s"], "ntkit_peak_gb": mine and mine["peak_rss_gb"],
               "neural_tangents_s": nt and nt["median_s"], "neural_tangents_peak_gb": nt and nt["peak_rss_gb"],
               "ntkit_over_nt": (mine and nt) and mine["median_s"] / nt["median_s"]}
        rows.append(row)
        print(f"{arch:8s} N={n:4d} {dtype}: ntkit {row['ntkit_s'] or float('nan'):8.2f} s "
              f"({row['ntkit_peak_gb'] or float('nan'):.2f} GB)  neural-tangents "
              f"{row['neural_tangents_s'] or float('nan'):8.2f} s  ratio {row['ntkit_over_nt'] or float('nan'):.2f}",
              flush=True)

    import tempfile
    agree = {}
    if args.nt_python and "agreement" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            agree = agreement(args.nt_python, args.agreement_n, Path(tmp))
        for arch, a in agree.items():
            print(f"float64 agreement {arch} N={a['n']}: off-diagonal {a['max_rel_offdiagonal']:.1e}, diagonal "
                  f"{a['max_rel_diagonal']:.1e}")
    digits = mnist(args.data_dir, args.mnist_train, args.mnist_test, args.mnist_pool_train, args.mnist_pool_test,
                   args.ridge) if "mnist" in args.parts else None

    print()
    print(f"{'case':10} {'N':>5} {'dtype':>8} {'ntkit s':>9} {'peak GB':>8} {'NT s':>9} {'ntkit/NT':>9}  goal")
    for r in rows:
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        print(f"{r['architecture']:10} {r['n']:5d} {r['dtype']:>8} {fmt(r['ntkit_s'], '9.2f'):>9} "
              f"{fmt(r['ntkit_peak_gb'], '8.2f'):>8} {fmt(r['neural_tangents_s'], '9.2f'):>9} "
              f"{fmt(r['ntkit_over_nt'], '9.2f'):>9}  {r['goal']}")
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "threads": args.threads}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"benchmark": "architectures", "machine": machine, "rows": rows,
                                          "agreement_float64": agree, "mnist": digits}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
