"""Infinite-attention kernels: a 2-block transformer encoder, ntkit against neural-tangents' `stax`, side by side.

Architecture (float64, channel counts infinite): a token-wise Linear embedding of 8 input features, then two blocks of
Residual(SelfAttention: softmax, linear_scaling, b_std = 0.1), LayerNorm, Residual(token-wise Linear, ReLU, token-wise
Linear), LayerNorm; global average over the positions; Linear. Inputs standard normal (N, 8, L) (NLC for
neural-tangents); the symmetric Gram Theta(X, X).

    speed:     N = 64, L = 32, both libraries (goal: ntkit at most 0.3x neural-tangents' time)
    large:     N = 256, L = 128, ntkit (goal: within 4 GB peak; neural-tangents with --nt-large)
    agreement: the float64 Grams of both at N = 8, L = 16

Each library runs in a fresh process with --threads threads (default 1: on a shared machine two-thread timings vary
several-fold from run to run); the first call (neural-tangents' jit compilation, ntkit's first-call set-up) is not
timed. The two alternate for --rounds rounds, so that both see the same load of a shared machine; each library's time
is the median over rounds of its median call, the ratio the median of the rounds' ratios, in wall-clock time and in
the process's CPU time (what the computation used, less sensitive to other processes than the wall clock). Peak memory
is the process's maximum resident set.

    python benchmarks/attention.py --nt-python PATH/TO/venv/bin/python
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

OUT = Path(__file__).resolve().parent / "results" / "attention.json"

NT_SCRIPT = r"""
import json, os, resource, statistics, sys, time
os.environ["JAX_ENABLE_X64"] = "1"
n, L, repeat, save = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
import warnings; warnings.filterwarnings("ignore")
import numpy as np, jax
from neural_tangents import stax
token = lambda: stax.Dense(1, W_std=1.0, b_std=0.1, parameterization="ntk")   # on NLC inputs: at every position
block = lambda: [stax.serial(stax.FanOut(2), stax.parallel(stax.GlobalSelfAttention(1, 1, 1, 1, linear_scaling=True,
                                                                                     b_std=0.1), stax.Identity()),
                             stax.FanInSum()), stax.LayerNorm(axis=-1, eps=1e-5),
                 stax.serial(stax.FanOut(2), stax.parallel(stax.serial(token(), stax.Relu(), token()),
                                                           stax.Identity()), stax.FanInSum()),
                 stax.LayerNorm(axis=-1, eps=1e-5)]
kernel_fn = stax.serial(token(), *block(), *block(), stax.GlobalAvgPool(), token())[2]
x = np.moveaxis(np.random.default_rng(0).standard_normal((n, 8, L)), 1, -1)
f = jax.jit(lambda x: kernel_fn(x, None, "ntk"))
k = f(x).block_until_ready()
times, cpu = [], []
for _ in range(repeat):
    t, c = time.perf_counter(), time.process_time(); f(x).block_until_ready()
    times.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
if save != "-":
    np.save(save, np.asarray(k))
print(json.dumps({"median_s": statistics.median(times), "cpu_s": statistics.median(cpu),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

OURS_SCRIPT = r"""
import json, resource, statistics, sys, time
import numpy as np, torch, ntkit as nk
sys.path.insert(0, sys.argv[5])
from attention import transformer
n, L, repeat, save = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
nk.set_progress(False)
x = torch.as_tensor(np.random.default_rng(0).standard_normal((n, 8, L)))
model = transformer()
model.kernel(x[:2])      # first-call set-up, not timed
times, cpu = [], []
for _ in range(repeat):
    t, c = time.perf_counter(), time.process_time(); k = model.kernel(x)
    times.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
if save != "-":
    np.save(save, k.numpy())
print(json.dumps({"median_s": statistics.median(times), "cpu_s": statistics.median(cpu),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def transformer():
    """The benchmark's encoder, as ntkit layers."""
    import ntkit as nk
    from ntkit.layers import SelfAttention, TokenLinear

    def block() -> list:
        return [nk.Residual(SelfAttention(linear_scaling=True, b_std=0.1)), nk.LayerNorm(eps=1e-5),
                nk.Residual(TokenLinear(b_std=0.1), nk.ReLU(), TokenLinear(b_std=0.1)), nk.LayerNorm(eps=1e-5)]

    return nk.Sequential(TokenLinear(b_std=0.1), *block(), *block(), nk.GlobalAvgPool(), nk.Linear(b_std=0.1))




def ours(n: int, L: int, repeat: int, threads: int, save: str = "-") -> dict | None:
    return run_json([sys.executable, "-c", OURS_SCRIPT, str(n), str(L), str(repeat), save,
                     str(Path(__file__).resolve().parent)], f"ntkit N={n} L={L}", threads)


def neural_tangents(nt_python: str, n: int, L: int, repeat: int, threads: int, save: str = "-") -> dict | None:
    return run_json([nt_python, "-c", NT_SCRIPT, str(n), str(L), str(repeat), save], f"neural-tangents N={n} L={L}",
                    threads)


def agreement(nt_python: str, n: int, L: int, threads: int) -> float | None:
    """The largest difference of the float64 Grams, relative to the largest entry."""
    with tempfile.TemporaryDirectory() as tmp:
        mine, theirs = str(Path(tmp) / "ours.npy"), str(Path(tmp) / "nt.npy")
        if ours(n, L, 1, threads, mine) is None or neural_tangents(nt_python, n, L, 1, threads, theirs) is None:
            return None
        a, b = np.load(mine), np.load(theirs)
    return float(np.abs(a - b).max() / np.abs(b).max())


def measure(args, n: int, L: int, large: bool) -> dict:
    """Both libraries in alternating rounds (one round for the large case): medians over the rounds."""
    with_nt = bool(args.nt_python) and (not large or args.nt_large)
    repeat, rounds = (1, 1) if large else (args.repeat, args.rounds)
    mine, theirs = [], []
    for _ in range(rounds):
        mine.append(ours(n, L, repeat, args.threads))
        theirs.append(neural_tangents(args.nt_python, n, L, repeat, args.threads) if with_nt else None)

    def median(runs: list, key: str) -> float | None:
        values = [r[key] for r in runs if r is not None]
        return float(np.median(values)) if values else None

    def ratio(key: str) -> float | None:
        values = [a[key] / b[key] for a, b in zip(mine, theirs, strict=True) if a is not None and b is not None]
        return float(np.median(values)) if values else None

    return {"n": n, "length": L, "rounds": rounds, "ntkit_s": median(mine, "median_s"),
            "ntkit_cpu_s": median(mine, "cpu_s"), "ntkit_peak_gb": median(mine, "peak_rss_gb"),
            "neural_tangents_s": median(theirs, "median_s"), "neural_tangents_cpu_s": median(theirs, "cpu_s"),
            "neural_tangents_peak_gb": median(theirs, "peak_rss_gb"), "ntkit_over_nt": ratio("median_s"),
            "ntkit_over_nt_cpu": ratio("cpu_s"),
            "round_ratios": [a["median_s"] / b["median_s"] for a, b in zip(mine, theirs, strict=True)
                             if a is not None and b is not None]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nt-python", default=os.environ.get("NT_PYTHON"),
                        help="python of an environment with neural-tangents (default: $NT_PYTHON; skipped if unset)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both libraries (N = 64)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--large-n", type=int, default=256)
    parser.add_argument("--large-length", type=int, default=128)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--nt-large", action="store_true", help="also try neural-tangents on the large case")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    cases = [(64, 32, "at most 0.3x neural-tangents")]
    if not args.skip_large:
        cases.append((args.large_n, args.large_length, "completes within 4 GB peak"))
    rows = []
    for n, L, goal in cases:
        large = (n, L) == (args.large_n, args.large_length)
        row = measure(args, n, L, large)
        row["goal"] = goal
        rows.append(row)
        print(f"N={n:4d} L={L:4d}: ntkit {row['ntkit_s'] or float('nan'):8.2f} s "
              f"({row['ntkit_peak_gb'] or float('nan'):.2f} GB)  neural-tangents "
              f"{row['neural_tangents_s'] or float('nan'):8.2f} s  ratio {row['ntkit_over_nt'] or float('nan'):.2f} "
              f"(CPU time: {row['ntkit_over_nt_cpu'] or float('nan'):.2f})", flush=True)
    agree = agreement(args.nt_python, 8, 16, args.threads) if args.nt_python else None

    print()
    print(f"{'N':>5} {'L':>5} {'ntkit s':>9} {'CPU s':>7} {'peak GB':>8} {'NT s':>9} {'CPU s':>7} {'NT GB':>7} "
          f"{'ntkit/NT':>9} {'(CPU)':>6}  goal")
    for r in rows:
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        print(f"{r['n']:5d} {r['length']:5d} {fmt(r['ntkit_s'], '9.2f'):>9} {fmt(r['ntkit_cpu_s'], '7.2f'):>7} "
              f"{fmt(r['ntkit_peak_gb'], '8.2f'):>8} {fmt(r['neural_tangents_s'], '9.2f'):>9} "
              f"{fmt(r['neural_tangents_cpu_s'], '7.2f'):>7} {fmt(r['neural_tangents_peak_gb'], '7.2f'):>7} "
              f"{fmt(r['ntkit_over_nt'], '9.2f'):>9} {fmt(r['ntkit_over_nt_cpu'], '6.2f'):>6}  {r['goal']}")
    if agree is not None:
        print(f"float64 agreement (N = 8, L = 16): max |ntkit - NT| / max |NT| = {agree:.1e}")
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "threads": args.threads, "load_average": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"benchmark": "attention", "machine": machine, "rows": rows,
                                          "agreement_float64": agree}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
