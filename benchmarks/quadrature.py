"""NTK of activations without a simple closed form: ntkit's sector quadrature against neural-tangents'
`stax.ElementwiseNumerical` (Gauss-Hermite), accuracy and time side by side.

Fully-connected net, L = 3, W_std = 1.5 (the pre-activation variance grows to about 2 to 3), b_std = 0.1,
d = 10, standard normal inputs, the symmetric NTK Gram on N points, float64. References: for erf the
closed forms of both libraries (which agree to roundoff); for tanh, elu and selu ntkit's quadrature at
degree 96, whose maps the test suite checks against adaptive integration. Errors are max |K - K_ref| /
max |K_ref|. neural-tangents runs in its own environment (--nt-python or NT_PYTHON), jit-compiled, compile
time excluded; it is skipped with a message when not given.

    python benchmarks/quadrature.py --n 300 --nt-python PATH/TO/venv/bin/python
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

HERE = Path(__file__).resolve().parent
DEPTH, W_STD, B_STD, D = 3, 1.5, 0.1, 10
ACTIVATIONS = {"erf": torch.erf, "tanh": torch.tanh, "elu": torch.nn.functional.elu,
               "selu": torch.nn.functional.selu}

NT_SCRIPT = r"""
import json, os, statistics, sys, time
os.environ["JAX_ENABLE_X64"] = "1"
import warnings; warnings.filterwarnings("ignore")
import numpy as np, jax, jax.numpy as jnp
from neural_tangents import stax
args = json.loads(sys.argv[1])
x = np.load(args["x"])
fns = {"erf": jax.scipy.special.erf, "tanh": jnp.tanh, "elu": jax.nn.elu, "selu": jax.nn.selu}
out = {}
for name in args["names"]:
    for deg in args["degrees"] + ([0] if name == "erf" else []):      # 0: the closed form stax.Erf
        act = stax.Erf() if deg == 0 else stax.ElementwiseNumerical(fns[name], deg=deg)
        layers = []
        for _ in range(args["depth"] - 1):
            layers += [stax.Dense(512, W_std=args["w"], b_std=args["b"], parameterization="ntk"), act]
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


def ntkit_kernel(name: str, degree: int | None, X: torch.Tensor, repeat: int) -> tuple[float, np.ndarray]:
    """Median seconds and the NTK Gram; degree None is the closed form (erf only)."""
    activation = name if degree is None else nk.activations.Quadrature(ACTIVATIONS[name], name=name, degree=degree)
    arch = nk.MLP(DEPTH, activation, W_std=W_STD, b_std=B_STD)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        K = arch.kernel(X, get="ntk", progress=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times), K.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--degrees", default="16,20,32", help="ntkit quadrature degrees")
    parser.add_argument("--nt-degrees", default="25,50", help="neural-tangents Gauss-Hermite degrees")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nt-python", default=os.environ.get("NT_PYTHON"))
    parser.add_argument("--out", default=str(HERE / "results" / "quadrature.json"))
    args = parser.parse_args()
    X = torch.from_numpy(np.random.default_rng(args.seed).standard_normal((args.n, D)))
    degrees = [int(v) for v in args.degrees.split(",")]
    nt_degrees = [int(v) for v in args.nt_degrees.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        nt = {}
        if args.nt_python:
            np.save(Path(tmp, "x.npy"), X.numpy())
            spec = {"x": str(Path(tmp, "x.npy")), "names": list(ACTIVATIONS), "degrees": nt_degrees, "depth": DEPTH,
                    "w": W_STD, "b": B_STD, "repeat": args.repeat, "dir": tmp}
            done = subprocess.run([args.nt_python, "-c", NT_SCRIPT, json.dumps(spec)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"neural-tangents failed:\n{done.stderr[-3000:]}")
            results = json.loads(done.stdout.splitlines()[-1])
            nt = {key: (v["seconds"], np.load(v["path"])) for key, v in results.items()}
        else:
            print("neural-tangents comparison skipped: pass --nt-python or set NT_PYTHON", file=sys.stderr)
        print(f"{'activation':>10} {'method':>24} {'seconds':>9} {'rel. error':>11}")
        for name in ACTIVATIONS:
            reference = ntkit_kernel(name, None if name == "erf" else 96, X, 1)[1]
            scale = np.abs(reference).max()
            candidates = [(f"ntkit sectors, degree {deg}", *ntkit_kernel(name, deg, X, args.repeat)) for deg in degrees]
            candidates += [(f"NT Gauss-Hermite, deg {deg}", *nt[f"{name}_{deg}"]) for deg in nt_degrees if nt]
            if name == "erf" and nt:
                candidates.append(("NT closed form", *nt["erf_0"]))
            for method, seconds, K in candidates:
                error = float(np.abs(K - reference).max() / scale)
                rows.append({"activation": name, "method": method, "seconds": seconds, "relative_error": error,
                             "n": args.n, "depth": DEPTH, "W_std": W_STD, "b_std": B_STD})
                print(f"{name:>10} {method:>24} {seconds:>9.3f} {error:>11.2e}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"benchmark": "quadrature", "machine_cpus": os.cpu_count(), "rows": rows},
                                         indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
