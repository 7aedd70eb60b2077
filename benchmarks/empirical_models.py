"""Empirical NTK of real models: ntkit against torch.func's Jacobian contraction and neural-tangents, side by side.

Cases (float32, one run, each method in a fresh subprocess: wall time and CPU time of one call after a warm-up
call on two samples, peak resident memory of the subprocess from os.wait4). On a shared machine the CPU time of
a single-threaded run (--threads 1) is the fairer comparison; the ratios use it when it is there:

  cnn          3 conv 3x3 (128 channels, ReLU, 2x2 average pool), global average, Linear; N = 64, 32x32x3,
               10 outputs, mode="full"
  resnet18     ResNet-18-like (4 stages of 2 BasicBlocks, widths 16-32-64-128, BatchNorm in eval mode),
               32x32x3, 10 outputs, N = 128, mode="trace"
  transformer  2 nn.TransformerEncoderLayer (d = 128, 4 heads, feed-forward 512, eval mode), sequences of 32,
               mean over positions, Linear to 10 outputs, N = 64, mode="full"
  transformer-trace  the same in mode="trace"
  resnet18-wide      the standard ResNet-18 widths 64-128-256-512 (11.2M parameters), N = 16, mode="trace";
  resnet18-wide-64   the same at N = 64 (torch.func's Jacobian alone would need 29 GB: skipped where it does
                     not fit the machine's memory)

Methods: ntkit-auto (`empirical_ntk`, the structured rules), ntkit-jacobian, torchfunc-jacobian (the torch.func
tutorial: vmap(jacrev) of all parameters, einsum per parameter, the tutorial's contraction for the mode: in
trace mode "Naf,Maf->NM"), torchfunc-full (the same Jacobian contracted over every pair of outputs, then the
matching ones taken: what a trace costs when computed from the full kernel) and, for the CNN, neural-tangents'
implementations 1 (Jacobian contraction) and 3 (structured derivatives), jit-compiled, through its own Python
(--nt-python or $NT_PYTHON; skipped when not given). The table gives each time over ntkit-auto's.

    python benchmarks/empirical_models.py --threads 1 --nt-python PATH/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from empirical_ntk import spawn, torchfunc_jacobian  # noqa: E402

DEFAULT_OUT = HERE.parent / "results" / "empirical_models.json"
CASES = {"cnn": (64, "full"), "resnet18": (128, "trace"), "transformer": (64, "full"),
         "transformer-trace": (64, "trace"), "resnet18-wide": (16, "trace"), "resnet18-wide-64": (64, "trace")}
WIDE = (64, 128, 256, 512)  # the standard ResNet-18's widths

NT_SCRIPT = r"""
import json, sys, time, numpy as np, jax, neural_tangents as nt
from neural_tangents import stax
n, impl, channels = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
layers = []
for i in range(3):
    layers += [stax.Conv(channels, (3, 3), padding="SAME"), stax.Relu()]
    layers += [stax.AvgPool((2, 2), (2, 2))] if i < 2 else [stax.GlobalAvgPool()]
init_fn, apply_fn, _ = stax.serial(*layers, stax.Dense(10))
x = np.random.default_rng(0).standard_normal((n, 32, 32, 3)).astype(np.float32)
_, params = init_fn(jax.random.PRNGKey(0), x.shape)
f = jax.jit(nt.empirical_ntk_fn(apply_fn, vmap_axes=0, implementation=impl, trace_axes=()))
f(x[:2], None, params).block_until_ready()
start, cpu = time.perf_counter(), time.process_time(); f(x, None, params).block_until_ready()
print(json.dumps({"seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}))
"""


# ------------------------------------------------------------------------------- the models
def cnn(channels: int = 128):
    from torch import nn
    layers, c_in = [], 3
    for i in range(3):
        layers += [nn.Conv2d(c_in, channels, 3, padding=1), nn.ReLU()]
        layers += [nn.AvgPool2d(2)] if i < 2 else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        c_in = channels
    return nn.Sequential(*layers, nn.Linear(channels, 10))


def resnet18(widths: tuple[int, ...] = (16, 32, 64, 128)):
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.skip = nn.Sequential() if stride == 1 and c_in == c_out else nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            h = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
            return (h + self.skip(x)).relu()

    blocks, c_in = [], widths[0]
    for i, width in enumerate(widths):
        blocks += [Block(c_in, width, 1 if i == 0 else 2), Block(width, width, 1)]
        c_in = width
    return nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(),
                         *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], 10))


def transformer(d: int = 128):
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(d, 4, 512, dropout=0.1, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(d, 10)

        def forward(self, x):
            return self.head(self.encoder(x).mean(1))

    return Encoder()


def make(case: str):
    import torch
    torch.manual_seed(0)
    name = case.split("-")[0]
    build = {"cnn": cnn, "resnet18": resnet18, "transformer": transformer}[name]
    model = (build(WIDE) if "wide" in case else build()).eval()
    n = CASES[case][0]
    shape = (32, 128) if name == "transformer" else (3, 32, 32)
    return model, torch.randn((n, *shape), generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------ one case
def theta_outputs(model, x) -> int:
    """K, the outputs per sample (the tutorial's trace sums them, ntkit's trace averages them)."""
    import torch
    with torch.no_grad():
        return model(x[:1]).reshape(1, -1).shape[1]


def worker(spec: dict) -> dict:
    import torch

    from ntkit.empirical import choose_method, empirical_ntk
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model, X = make(spec["case"])
    mode, method = CASES[spec["case"]][1], spec["method"]
    if method.startswith("ntkit-"):
        name = method.removeprefix("ntkit-")

        def call(x):
            return empirical_ntk(model, x, mode=mode, method=name, progress=False)
    elif method == "torchfunc-jacobian":  # the tutorial's contraction for the mode (its trace: a sum)
        def call(x):
            theta = torchfunc_jacobian(model, x, mode)
            return theta / theta_outputs(model, x) if mode == "trace" else theta
    else:  # "torchfunc-full": every pair of outputs, then the matching ones
        def call(x):
            theta = torchfunc_jacobian(model, x, "full")
            return torch.diagonal(theta, dim1=2, dim2=3).mean(-1) if mode == "trace" else theta

    call(X[:2])  # warm-up: lazy imports, allocator
    start, cpu = time.perf_counter(), time.process_time()
    theta = call(X)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    chosen = choose_method(model, X[:2], mode=mode) if method == "ntkit-auto" else None
    return {"seconds": seconds, "cpu_s": cpu_s, "theta_fro": float(torch.linalg.vector_norm(theta.double())),
            "chosen": chosen, "n_params": sum(p.numel() for p in model.parameters())}


def jacobian_bytes(case: str) -> float:
    """The float32 Jacobian torch.func forms of the case: N samples x 10 outputs x P parameters."""
    model, X = make(case)
    return 4.0 * X.shape[0] * 10 * sum(p.numel() for p in model.parameters())


def run(case: str, method: str, args: argparse.Namespace) -> dict:
    record = {"case": case, "method": method, "n": CASES[case][0], "mode": CASES[case][1]}
    env = dict(os.environ, NTKIT_PROGRESS="0")
    if method.startswith("nt-"):
        if not args.nt_python:
            return {**record, "skip": "neural-tangents not given (--nt-python or NT_PYTHON)"}
        if args.threads == 1:
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        command = [args.nt_python, "-c", NT_SCRIPT, str(CASES[case][0]), method[-1], "128"]
    else:
        if method.startswith("torchfunc"):
            need = jacobian_bytes(case)
            if need > 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"):
                return {**record, "skip": f"its Jacobian alone needs {need / 2**30:.0f} GiB, more than this "
                                          "machine's memory"}
        spec = {"case": case, "method": method, "threads": args.threads}
        command = [sys.executable, str(HERE), "--worker", json.dumps(spec)]
    text, rss, status = spawn(command, args.timeout, env)
    if status != 0:
        return {**record, "skip": f"over the {args.timeout:.0f} s timeout" if status == -9 else f"failed ({status})"}
    return {**record, **json.loads(text.strip().splitlines()[-1]), "peak_rss_mb": rss}


def table(results: list[dict]) -> str:
    head = f"{'case':<18}{'method':<20}{'wall (s)':>10}{'CPU (s)':>10}{'peak RSS (MB)':>15}{'x ntkit-auto':>14}  note"
    lines = [head]
    for case in dict.fromkeys(r["case"] for r in results):
        rows = [r for r in results if r["case"] == case]
        ours = next((r for r in rows if r["method"] == "ntkit-auto" and r.get("seconds")), None)
        for r in rows:
            t, c = r.get("seconds"), r.get("cpu_s")
            ratio = f"{c / ours['cpu_s']:14.2f}" if c and ours else f"{'':>14}"
            rss = f"{r['peak_rss_mb']:15.0f}" if r.get("peak_rss_mb") else f"{'-':>15}"
            note = r.get("skip") or (f"auto chose {r['chosen']}" if r.get("chosen") else "")
            wall = f"{t:10.2f}" if t else f"{'-':>10}"
            cpu = f"{c:10.2f}" if c else f"{'-':>10}"
            lines.append(f"{case:<18}{r['method']:<20}{wall}{cpu}{rss}{ratio}  {note}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="+", default=[c for c in CASES if "wide" not in c], choices=list(CASES),
                        help="default: all but the resnet18-wide ones (minutes more)")
    parser.add_argument("--methods", nargs="+",
                        default=["ntkit-auto", "ntkit-jacobian", "torchfunc-jacobian", "torchfunc-full", "nt-impl1",
                                 "nt-impl3"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of both frameworks (1: single)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case and method")
    parser.add_argument("--nt-python", default=os.environ.get("NT_PYTHON"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    results = []
    for case in args.cases:
        for method in args.methods:
            redundant = method == "torchfunc-full" and CASES[case][1] == "full"  # the same as torchfunc-jacobian
            if (method.startswith("nt-") and case != "cnn") or redundant:
                continue
            results.append(run(case, method, args))
            print(f"  {case} {method}: {results[-1].get('seconds', results[-1].get('skip'))}", file=sys.stderr,
                  flush=True)
    print(table(results))
    import torch
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": args.threads or torch.get_num_threads(), "load_average_at_end": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
