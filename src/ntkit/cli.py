"""The `ntkit` command.

    ntkit kernel [--input X.npy|X.csv | --example circle] [--y Y.npy] --depth 4 --activation relu
                 --beta 0.1 --get ntk --out K.npy|K.zarr [--plot K.png]
                 [--scheduler tcp://HOST:PORT | --workers N]
    ntkit reproduce [fig1|fig2|fig3|all] --out DIR [--full] ...
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cli_reproduce
from .data import circle_angles, circle_points
from .mlp import MLP
from .progress import set_progress


def read_points(path: str, name: str) -> np.ndarray:
    """An (N, d) float64 array from a .npy file or a comma-separated .csv/.txt file."""
    file = Path(path)
    if not file.exists():
        raise ValueError(f"{name} file {path!r} does not exist")
    try:
        data = np.load(file) if file.suffix == ".npy" else np.loadtxt(file, delimiter=",", ndmin=2)
    except Exception as exc:
        raise ValueError(f"could not read {name} file {path!r}: {exc}") from exc
    return np.asarray(data, dtype=np.float64)


def _kernel_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="FILE", help="inputs X, one point per row (.npy or .csv)")
    source.add_argument("--example", choices=["circle"], default=None,
                        help="built-in inputs: points x = (cos g, sin g) on the unit circle (Figure 1)")
    parser.add_argument("--y", metavar="FILE", help="second inputs Y (.npy or .csv); default: Y = X")
    parser.add_argument("--n-points", type=int, default=201, help="points on the circle (default 201)")
    parser.add_argument("--depth", type=int, default=4, help="weight layers L (default 4)")
    parser.add_argument("--activation", default="relu", help="nonlinearity name (default relu)")
    parser.add_argument("--beta", type=float, default=0.1, help="bias scale beta (default 0.1)")
    parser.add_argument("--W-std", type=float, default=1.0, dest="W_std", help="weight scale (default 1)")
    parser.add_argument("--get", choices=["ntk", "nngp", "both"], default="ntk",
                        help="Theta^(L) (ntk), Sigma^(L) (nngp) or both (default ntk)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--out", default="kernel.npy", metavar="FILE",
                        help="output .npy (with --get both, FILE gets _nngp and _ntk suffixes), or a zarr store "
                             "K.zarr (one array per kernel; resumable: run the same command again to finish it)")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="compute the tiles on the Dask cluster of this scheduler, tcp://HOST:PORT "
                              "(needs ntkit[dask])")
    cluster.add_argument("--workers", type=int, metavar="N",
                         help="compute the tiles on N local Dask worker processes, one thread each (needs ntkit[dask])")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to wait for the --scheduler to answer (default 10)")
    parser.add_argument("--plot", metavar="PNG", help="also plot the kernel against the first point (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_kernel(args: argparse.Namespace) -> int:
    """Compute the analytic kernels for the given inputs and write them as .npy (and a PNG)."""
    if args.quiet:
        set_progress(False)
    try:
        arch = MLP(depth=args.depth, activation=args.activation, beta=args.beta, W_std=args.W_std)
        if args.input:
            X, angles = read_points(args.input, "--input"), None
        else:
            angles = circle_angles(args.n_points)
            X = circle_points(angles)
        Y = read_points(args.y, "--y") if args.y else None
        dtype = getattr(torch, args.dtype)
        Xt = torch.as_tensor(X, dtype=dtype, device=args.device)
        Yt = None if Y is None else torch.as_tensor(Y, dtype=dtype, device=args.device)
        names = ("nngp", "ntk") if args.get == "both" else (args.get,)
        store = args.out.rstrip("/").endswith(".zarr")
        with _dask_client(args) as client:
            results = arch.kernel(Xt, Yt, get=names, out=args.out if store else None, client=client)
    except (ValueError, TypeError, RuntimeError, ConnectionError, ImportError) as exc:
        print(f"ntkit kernel: error: {exc}", file=sys.stderr)
        return 2
    if store:
        shape = tuple(results[0].shape)
        print(f"{arch}: wrote {args.out} (arrays {', '.join(names)}; {shape[0]} x {shape[1]}, {args.dtype})")
        if args.plot:
            _plot(args.plot, arch, names, [K[...] for K in results], angles, X)
            print(f"wrote {args.plot}")
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for name, K in zip(names, results, strict=True):
        path = out if len(names) == 1 else out.with_name(f"{out.stem}_{name}{out.suffix or '.npy'}")
        np.save(path, K.cpu().numpy())
        written.append(str(path))
    shape = tuple(results[0].shape)
    print(f"{arch}: wrote {', '.join(written)} ({shape[0]} x {shape[1]}, {args.dtype})")
    if args.plot:
        _plot(args.plot, arch, names, [K.cpu().numpy() for K in results], angles, X)
        print(f"wrote {args.plot}")
    return 0


@contextlib.contextmanager
def _dask_client(args: argparse.Namespace) -> Any:
    """None (one process), a client of the --scheduler, or of a local cluster of --workers processes."""
    if args.scheduler is None and args.workers is None:
        yield None
        return
    from .gram import distributed

    if args.scheduler is not None:
        client = distributed.connect(args.scheduler, timeout=args.timeout)
        with client:
            yield client
        return
    dask = distributed.require_distributed()
    with distributed.local_cluster(args.workers) as cluster, dask.Client(cluster) as client:
        yield client


def _plot(path: str, arch: MLP, names: tuple[str, ...], kernels: list[np.ndarray], angles: Any,
          X: np.ndarray) -> None:
    """The kernel between the first point and every point: against the angle on the circle, or the index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if angles is None:  # inputs from a file: the angle to the first point (0 for identical directions)
        unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-300)
        horizontal, label = np.arccos(np.clip(unit @ unit[0], -1, 1)), "angle to the first point (radians)"
    else:
        x0 = int(np.argmin(np.abs(angles)))
        kernels = [K[[x0]] for K in kernels] if kernels[0].shape[0] > 1 else kernels
        horizontal, label = angles, r"$\gamma$ (x = (cos $\gamma$, sin $\gamma$), x$_0$ = (1, 0))"
    symbols = {"ntk": r"$\Theta^{(L)}$", "nngp": r"$\Sigma^{(L)}$"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, K in zip(names, kernels, strict=True):
        row = K[0]
        order = np.argsort(horizontal)
        ax.plot(np.asarray(horizontal)[order], row[order], label=symbols[name])
    ax.set_xlabel(label)
    ax.set_title(f"{arch.activation.name}, L = {arch.depth}, beta = {float(arch.b_std):g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ntkit", description="The Neural Tangent Kernel toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)
    kernel = sub.add_parser("kernel", help="analytic Sigma^(L) / Theta^(L) of inputs from a file or the unit circle")
    _kernel_arguments(kernel)
    kernel.set_defaults(func=run_kernel)
    cli_reproduce.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
