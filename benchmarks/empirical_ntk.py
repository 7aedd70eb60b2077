"""Empirical NTK: time and peak memory of ntkit against neural-tangents and the torch.func tutorial.

The paper's MLP (L = 4, d = 784, ReLU, beta = 0.1, one output, NTK parametrization), N = 256
inputs, float32, Theta(X, X) of shape (N, N), at several widths; and a small CNN on 28x28 inputs
(10 outputs, mode="full") for the generic paths. Side by side in one run:

  ntkit-structured / -jacobian / -ntk_vp / -auto   `ntkit.empirical.empirical_ntk`
  torchfunc-jacobian    the torch.func tutorial's Jacobian contraction (vmap(jacrev), einsum)
  torchfunc-ntk_vp      the torch.func tutorial's NTK-vector products (CNN only: per-pair vmap)
  nt-impl2, nt-impl3    neural-tangents' NTK-vector products and structured derivatives (jit),
                        run with its own Python (--nt-python or $NT_PYTHON) and its bench script
                        (--nt-script or $NT_BENCH_SCRIPT); skipped with a message when not given

Each case runs in a fresh subprocess: time = median of --repeat calls after one warm-up call
(a single call when the warm-up takes over --slow seconds); peak memory = the subprocess's
maximum resident set (os.wait4), which includes the interpreter and the framework; on CUDA also
torch.cuda.max_memory_allocated. A case whose estimated memory exceeds what the machine has is
skipped and listed as such.

On a CPU shared with other work, torch's OpenMP threads stall on each other (a 2-thread run
can be many times slower than a 1-thread one); --threads 1 runs both frameworks single-threaded,
which is how benchmarks/results/empirical_ntk.json was measured (2 cores, load average ~7).

    python benchmarks/empirical_ntk.py --threads 1 --nt-python PATH/python --nt-script PATH/nt_bench.py
    python benchmarks/empirical_ntk.py --device cuda --widths 8192
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
DEFAULT_OUT = HERE.parent / "results" / "empirical_ntk.json"


# ------------------------------------------------------------------------------ the cases
def mlp(width: int, depth: int, d: int, device: str):
    import ntkit as nk
    return nk.MLP(depth=depth, activation="relu", beta=0.1).network(d, width=width, seed=0).to(device)


def cnn(device: str):
    import torch
    from torch import nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 5 * 5, 10)
                         ).to(device)


#: The torch.func tutorial's contraction per mode (its `compute` argument): every pair of outputs, the sum of
#: the matching ones, each matching one.
TORCHFUNC_CONTRACTION = {"full": "Naf,Mbf->NMab", "trace": "Naf,Maf->NM", "diagonal": "Naf,Maf->NMa"}


def torchfunc_jacobian(model, X, mode: str = "full"):
    """The torch.func tutorial ("Neural Tangent Kernels"), method 1: Jacobian contraction, with the tutorial's
    einsum for `mode` (its trace is a sum over the outputs; ntkit's is their mean)."""
    from torch.func import functional_call, jacrev, vmap
    params = {k: v.detach() for k, v in model.named_parameters()}

    def fnet_single(params, x):
        return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)

    jac1 = vmap(jacrev(fnet_single), (None, 0))(params, X)
    jac1 = [j.flatten(2) for j in jac1.values()]
    jac2 = jac1
    import torch
    equation = TORCHFUNC_CONTRACTION[mode]
    return torch.stack([torch.einsum(equation, j1, j2) for j1, j2 in zip(jac1, jac2, strict=True)]).sum(0)


def torchfunc_ntk_vp(model, X):
    """The torch.func tutorial, method 2: NTK-vector products, vmapped over every pair (x1, x2)."""
    import torch
    from torch.func import functional_call, jvp, vjp, vmap
    params = {k: v.detach() for k, v in model.named_parameters()}

    def func(params, x):
        return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)

    def get_ntk(x1, x2):
        def func_x1(params):
            return func(params, x1)

        def func_x2(params):
            return func(params, x2)

        output, vjp_fn = vjp(func_x1, params)

        def get_ntk_slice(vec):
            vjps = vjp_fn(vec)
            _, jvps = jvp(func_x2, (params,), vjps)
            return jvps

        basis = torch.eye(output.numel(), dtype=output.dtype, device=output.device).view(output.numel(), -1)
        return vmap(get_ntk_slice)(basis)

    return vmap(vmap(get_ntk, (None, 0)), (0, None))(X, X)


def worker(spec: dict) -> dict:
    """Run one case in this process and return its measurements."""
    import resource

    import torch

    from ntkit.empirical import choose_method, empirical_ntk
    device = spec["device"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    generator = torch.Generator().manual_seed(0)
    if spec["net"] == "mlp":
        model = mlp(spec["width"], spec["depth"], spec["d"], device)
        X = torch.randn(spec["n"], spec["d"], generator=generator).to(device)
    else:
        model = cnn(device).eval()
        X = torch.randn(spec["n"], 1, 28, 28, generator=generator).to(device)
    method = spec["method"]
    chosen = None
    if method.startswith("ntkit-"):
        name = method.removeprefix("ntkit-")
        mode = spec["mode"]
        if name == "auto":
            chosen = choose_method(model, X, mode=mode)

        def call():
            return empirical_ntk(model, X, mode=mode, method=name, progress=False)
    else:
        fn = torchfunc_jacobian if method == "torchfunc-jacobian" else torchfunc_ntk_vp

        def call():
            theta = fn(model, X)
            return theta[:, :, 0, 0] if spec["mode"] == "trace" and theta.shape[-1] == 1 else theta

    def timed() -> tuple[float, object]:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = call()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    setup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first, theta = timed()
    times = [first] if first > spec["slow"] else [timed()[0] for _ in range(spec["repeat"])]
    theta = theta.reshape(theta.shape[0], theta.shape[1], -1)
    result = {"median_s": statistics.median(times), "calls_timed": len(times), "first_call_s": first,
              "setup_rss_mb": setup_rss, "theta_fro": float(torch.linalg.vector_norm(theta.double())),
              "chosen": chosen}
    if device == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    return result


# ---------------------------------------------------------------------- the subprocesses
def spawn(command: list[str], timeout: float, env: dict | None = None) -> tuple[str, float, int]:
    """Start a child, wait for it with os.wait4, and return (stdout, peak RSS of the child in MB, status)."""
    import tempfile
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                return "", 0.0, -9
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read(), err.read()
    if proc.returncode != 0:
        sys.stderr.write(errors[-1500:])
    return text, usage.ru_maxrss / 1024, proc.returncode


def available_bytes(device: str) -> float:
    if device == "cuda":
        import torch
        return float(torch.cuda.mem_get_info()[1])
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def mlp_params(width: int, depth: int, d: int) -> int:
    widths = [d] + [width] * (depth - 1) + [1]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


def plan(args: argparse.Namespace) -> list[dict]:
    """Every case to run, or to list as skipped with the reason."""
    cases = []
    base = {"device": args.device, "repeat": args.repeat, "slow": args.slow, "threads": args.threads}
    for width in args.widths:
        common = {**base, "net": "mlp", "width": width, "depth": args.depth, "d": args.d, "n": args.n,
                  "mode": "trace"}
        params = mlp_params(width, args.depth, args.d)
        jac_bytes = 4.0 * args.n * params  # the tutorial's Jacobian of all N inputs, float32
        methods = ["ntkit-structured", "ntkit-jacobian", "ntkit-ntk_vp", "torchfunc-jacobian"]
        for method in methods:
            case = {**common, "method": method}
            if method == "torchfunc-jacobian" and jac_bytes > 0.8 * available_bytes(args.device):
                case["skip"] = (f"its Jacobian alone needs {jac_bytes / 2**30:.0f} GiB, more than this machine's "
                                f"{available_bytes(args.device) / 2**30:.0f} GiB")
            elif method in ("ntkit-jacobian", "ntkit-ntk_vp") and width > args.generic_max_width:
                case["skip"] = (f"generic path on the MLP only up to width {args.generic_max_width} "
                                "(--generic-max-width); the structured path is the one for MLPs")
            cases.append(case)
        for impl in (3, 2):
            case = {**common, "method": f"nt-impl{impl}", "impl": impl}
            if not (args.nt_python and args.nt_script):
                case["skip"] = ("neural-tangents not given (--nt-python and --nt-script, "
                                "or NT_PYTHON and NT_BENCH_SCRIPT)")
            elif impl == 2 and width > args.nt_impl2_max_width:
                case["skip"] = f"NTK-vector products only up to width {args.nt_impl2_max_width} (--nt-impl2-max-width)"
            cases.append(case)
    if args.cnn_n:
        for method in ("ntkit-auto", "ntkit-jacobian", "ntkit-ntk_vp", "torchfunc-jacobian", "torchfunc-ntk_vp"):
            cases.append({**base, "net": "cnn", "n": args.cnn_n, "mode": "full", "method": method,
                          "width": None})
    return cases


def run_case(case: dict, args: argparse.Namespace) -> dict:
    if "skip" in case:
        return {**case, "median_s": None}
    if case["method"].startswith("nt-"):
        command = [args.nt_python, args.nt_script, "empirical", "--n", str(case["n"]), "--d", str(case["d"]),
                   "--depth", str(case["depth"]), "--width", str(case["width"]), "--impl", str(case["impl"]),
                   "--repeat", str(args.repeat)]
        env = dict(os.environ)
        if args.threads == 1:  # XLA's CPU backend on one thread, like torch.set_num_threads(1)
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        text, rss, status = spawn(command, args.timeout, env)
        if status != 0:
            return {**case, "median_s": None, "skip": "failed or timed out"}
        record = json.loads(text.strip().splitlines()[-1])
        return {**case, "median_s": record["median_s"], "peak_rss_mb": rss, "nt_device": record["device"]}
    text, rss, status = spawn([sys.executable, str(HERE), "--worker", json.dumps(case)], args.timeout)
    if status != 0:
        reason = "ran out of memory (killed)" if status in (-9, 137) else f"failed (exit {status})"
        return {**case, "median_s": None, "skip": reason if status != -9 else f"over {args.timeout:.0f} s timeout"}
    return {**case, **json.loads(text.strip().splitlines()[-1]), "peak_rss_mb": rss}


def table(results: list[dict]) -> str:
    lines = [f"{'case':<24}{'method':<22}{'time (s)':>10}{'peak RSS (MB)':>15}{'x ntkit':>10}  note"]
    by_case: dict[str, list[dict]] = {}
    for r in results:
        key = f"mlp width {r['width']}" if r["net"] == "mlp" else f"cnn 28x28 N={r['n']}"
        by_case.setdefault(key, []).append(r)
    for key, rows in by_case.items():
        ours = [r["median_s"] for r in rows if r["method"].startswith("ntkit") and r["median_s"]]
        best = min(ours) if ours else None
        for r in rows:
            t = r["median_s"]
            ratio = f"{t / best:10.2f}" if t and best else f"{'':>10}"
            time_s = f"{t:10.3f}" if t else f"{'-':>10}"
            rss = f"{r['peak_rss_mb']:15.0f}" if r.get("peak_rss_mb") else f"{'-':>15}"
            note = r.get("skip") or (f"auto chose {r['chosen']}" if r.get("chosen") else "")
            if r.get("cuda_peak_mb"):
                note = f"cuda peak {r['cuda_peak_mb']:.0f} MB " + note
            lines.append(f"{key:<24}{r['method']:<22}{time_s}{rss}{ratio}  {note}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--cnn-n", type=int, default=32, help="CNN inputs (0 skips the CNN)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slow", type=float, default=10.0, help="time a single call when the warm-up takes longer")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for every case (torch.set_num_threads; 1 also makes XLA single-threaded); "
                             "default: each framework's own default")
    parser.add_argument("--generic-max-width", type=int, default=512)
    parser.add_argument("--nt-impl2-max-width", type=int, default=2048)
    parser.add_argument("--nt-python", default=os.environ.get("NT_PYTHON"))
    parser.add_argument("--nt-script", default=os.environ.get("NT_BENCH_SCRIPT"))
    parser.add_argument("--only", nargs="*", help="run only these methods (e.g. ntkit-structured nt-impl3)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if not (args.nt_python and args.nt_script):
        print("neural-tangents comparison skipped: pass --nt-python and --nt-script (or set NT_PYTHON and "
              "NT_BENCH_SCRIPT)", file=sys.stderr)
    results = []
    for case in plan(args):
        if args.only and case["method"] not in args.only:
            continue
        results.append(run_case(case, args))
        r = results[-1]
        print(f"  {r['net']} {r.get('width')} {r['method']}: "
              f"{r['median_s'] if r['median_s'] is not None else r.get('skip')}", file=sys.stderr, flush=True)
    print(table(results))
    import torch
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": args.threads or torch.get_num_threads(), "device": args.device,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_at_end": os.getloadavg(), "n": args.n, "d": args.d, "depth": args.depth}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
