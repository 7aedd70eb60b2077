"""The `ntkit` command.

    ntkit kernel [--input X.npy|X.csv | --example circle] [--y Y.npy] [--in-shape C,H,W]
                 [--depth 4 --activation relu | --arch "conv3,relu,gap,linear" | --arch file.py:NAME]
                 --beta 0.1 --get ntk --out K.npy|K.zarr [--plot K.png]
                 [--scheduler tcp://HOST:PORT | --workers N]
    ntkit verify K.zarr
    ntkit reproduce [fig1|fig2|fig3|all] --out DIR [--full] ...
    ntkit --version
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, cli_arch, cli_paths, cli_reproduce
from .data import circle_angles, circle_points
from .experiments.common import resolve_device
from .mlp import MLP
from .progress import set_progress


def read_points(path: str, name: str, in_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A float64 array of examples from a .npy file, (N, d), (N, C, L) or (N, C, H, W) as stored, or from a
    comma-separated .csv/.txt file (N, d); rows are reshaped to (N, *in_shape) when `in_shape` is given."""
    file = Path(path)
    if not file.exists():
        raise ValueError(f"{name} file {path!r} does not exist")
    try:
        data = np.load(file) if file.suffix == ".npy" else np.loadtxt(file, delimiter=",", ndmin=2)
    except Exception as exc:
        raise ValueError(f"could not read {name} file {path!r}: {exc}") from exc
    data = np.asarray(data, dtype=np.float64)
    if data.ndim == 1:
        data = data[None, :]
    if data.ndim not in (2, 3, 4):
        raise ValueError(f"{name} file {path!r} holds an array of shape {data.shape}; expected (N, d), (N, C, L) "
                         "or (N, C, H, W)")
    if in_shape is not None:
        if int(np.prod(data.shape[1:])) != int(np.prod(in_shape)):
            raise ValueError(f"--in-shape {','.join(map(str, in_shape))} does not fit the {name} examples of shape "
                             f"{data.shape[1:]} ({int(np.prod(data.shape[1:]))} values each)")
        data = data.reshape(data.shape[0], *in_shape)
    return data


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """--in-shape "1,28,28" -> (1, 28, 28)."""
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or len(shape) > 3 or min(shape) < 1:
        raise ValueError(f"--in-shape must be one to three positive integers separated by commas (C,H,W for images, "
                         f"C,L for sequences), got {text!r}")
    return shape


def _kernel_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="FILE", help="inputs X, one point per row (.npy or .csv)")
    source.add_argument("--example", choices=["circle"], default=None,
                        help="built-in inputs: points x = (cos g, sin g) on the unit circle (Figure 1)")
    parser.add_argument("--y", metavar="FILE", help="second inputs Y (.npy or .csv); default: Y = X")
    parser.add_argument("--n-points", type=int, default=201, help="points on the circle (default 201)")
    parser.add_argument("--in-shape", metavar="C,H,W", help="reshape each input row to this shape per example: "
                        "C,H,W for images, C,L for sequences (a .npy of that shape needs no --in-shape)")
    parser.add_argument("--arch", metavar="SPEC", help="the architecture: a spec such as "
                        "'conv3,relu,pool2,conv3,relu,gap,linear' (grammar below) or path/to/file.py:NAME; "
                        "default: the MLP of --depth and --activation")
    parser.add_argument("--depth", type=int, default=4, help="weight layers L of the MLP (default 4)")
    parser.add_argument("--activation", default="relu", help="nonlinearity of the MLP (default relu)")
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


def _outputs(args: argparse.Namespace, names: tuple[str, ...]) -> list[Path] | None:
    """The .npy files to write (None: a zarr store), checked before any work."""
    if args.out.rstrip("/").endswith(".zarr"):
        cli_paths.check_store(args.out, "--out")
        paths = None
    else:
        out = cli_paths.check_file(args.out, "--out", (".npy",))
        paths = [out] if len(names) == 1 else [out.with_name(f"{out.stem}_{name}.npy") for name in names]
        for path in paths:
            cli_paths.check_file(path, "--out", (".npy",))
    if args.plot:
        cli_paths.check_file(args.plot, "--plot", (".png", ".pdf", ".svg"))
    return paths


def _setup(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, Any]:
    """The architecture, the inputs X, Y (tensors), the circle's angles (or None) and X as NumPy."""
    device = resolve_device(args.device)
    in_shape = parse_shape(args.in_shape)
    if args.input:
        X, angles = read_points(args.input, "--input", in_shape), None
    else:
        if in_shape is not None:
            raise ValueError("--in-shape needs --input (the circle's points are 2-D)")
        angles = circle_angles(args.n_points)
        X = circle_points(angles)
    Y = read_points(args.y, "--y", in_shape) if args.y else None
    if args.arch is None:
        if X.ndim > 2:
            raise ValueError(f"the inputs are examples of shape {X.shape[1:]}: give an --arch for them (the MLP "
                             "takes flat rows)")
        arch = MLP(depth=args.depth, activation=args.activation, beta=args.beta, W_std=args.W_std)
    else:
        arch = cli_arch.build(args.arch, X.ndim - 2, args.W_std, args.beta)
    dtype = getattr(torch, args.dtype)
    Xt = torch.as_tensor(X, dtype=dtype, device=device)
    Yt = None if Y is None else torch.as_tensor(Y, dtype=dtype, device=device)
    return arch, Xt, Yt, angles, X


def run_kernel(args: argparse.Namespace) -> int:
    """Compute the analytic kernels for the given inputs and write them as .npy (and a PNG)."""
    if args.quiet:
        set_progress(False)
    names = ("nngp", "ntk") if args.get == "both" else (args.get,)
    try:
        paths = _outputs(args, names)
        arch, Xt, Yt, angles, X = _setup(args)
        store = paths is None
        with _dask_client(args) as client:
            results = arch.kernel(Xt, Yt, get=names, out=args.out if store else None, client=client)
    except (ValueError, TypeError, RuntimeError, ConnectionError, ImportError, OSError) as exc:
        print(f"ntkit kernel: error: {exc}", file=sys.stderr)
        return 2
    if store:
        shape = tuple(results[0].shape)
        print(f"{arch}: wrote {args.out} (arrays {', '.join(names)}; {shape[0]} x {shape[1]}, {args.dtype})")
        if args.plot:
            _plot(args.plot, arch, names, [K[...] for K in results], angles, X)
            print(f"wrote {args.plot}")
        return 0
    written = []
    for path, K in zip(paths, results, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
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


def _plot(path: str, arch: Any, names: tuple[str, ...], kernels: list[np.ndarray], angles: Any,
          X: np.ndarray) -> None:
    """The kernel between the first point and every point: against the angle on the circle, or the index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if angles is None:  # inputs from a file: the angle to the first point (0 for identical directions)
        X = X.reshape(X.shape[0], -1)
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
    if isinstance(arch, MLP):
        ax.set_title(f"{arch.activation.name}, L = {arch.depth}, beta = {float(arch.b_std):g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_verify(args: argparse.Namespace) -> int:
    """Check every tile of a Gram store: exit 0 when intact, 1 listing the bad tiles, 2 when not a store."""
    from .gram.store import verify

    try:
        bad = verify(args.store)
    except (ValueError, ImportError, OSError) as exc:
        print(f"ntkit verify: error: {exc}", file=sys.stderr)
        return 2
    for tile in bad:
        print(f"tile ({tile.row}, {tile.col}) of {tile.name}: {tile.reason}")
    if bad:
        print(f"{args.store}: {len(bad)} bad tile{'s' if len(bad) > 1 else ''}; run the command that wrote it "
              "again to recompute them", file=sys.stderr)
        return 1
    print(f"{args.store}: intact")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ntkit", description="The Neural Tangent Kernel toolkit.")
    parser.add_argument("--version", action="version", version=f"ntkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    kernel = sub.add_parser("kernel", help="analytic Sigma / Theta of inputs from a file or the unit circle",
                            description="The exact infinite-width kernels of an architecture on inputs from a "
                                        "file or the unit circle.",
                            epilog="--arch spec grammar" + cli_arch.GRAMMAR,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _kernel_arguments(kernel)
    kernel.set_defaults(func=run_kernel)
    check = sub.add_parser("verify", help="check every tile of a Gram store (K.zarr) against its checksums",
                           description="Check every tile of a Gram store written by `ntkit kernel --out K.zarr`: "
                                       "exit status 0 when intact, 1 listing the bad tiles, 2 when the path is "
                                       "not an ntkit store.")
    check.add_argument("store", metavar="K.zarr", help="the store")
    check.set_defaults(func=run_verify)
    cli_reproduce.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
