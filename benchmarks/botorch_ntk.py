"""Bayesian optimisation with the NTK in BoTorch against BoTorch's own kernels, in one run.

On BoTorch's Branin (2-D) and Hartmann-6 test functions (maximised, as negated minimisation problems), each run
starts from `--init` uniform random points (the same for every kernel of a seed) and adds one point per step,
chosen by LogExpectedImprovement (optimize_acqf, `--restarts` restarts over `--raw-samples` raw samples), until
`--evals` evaluations. Side by side, with inputs normalised to the unit cube and outcomes standardised:

- "ntk": ScaleKernel(ntkit.gpytorch.NTKKernel(nk.MLP(depth=3))), W_std, b_std and the scale fitted;
- "default": SingleTaskGP's default covariance (whatever this BoTorch version ships; its class is recorded);
- "bnn": ScaleKernel(botorch InfiniteWidthBNNKernel(depth=3)), the NNGP of a ReLU MLP (BoTorch's own).

Reports, per problem and kernel, the simple regret (optimum - best value found) after `--evals` evaluations,
mean and standard error over `--seeds` seeds, and the median wall time of one run. Writes JSON (default
benchmarks/results/botorch_ntk.json).

    python benchmarks/botorch_ntk.py --seeds 10 --evals 30
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "botorch_ntk.json"
F64 = torch.float64


def make_model(kind: str, X: torch.Tensor, Y: torch.Tensor, bounds: torch.Tensor) -> Any:
    from botorch.models import SingleTaskGP
    from botorch.models.kernels import InfiniteWidthBNNKernel
    from botorch.models.transforms import Normalize, Standardize
    from gpytorch.kernels import ScaleKernel

    import ntkit as nk
    from ntkit.gpytorch import NTKKernel

    covar = {"ntk": lambda: ScaleKernel(NTKKernel(nk.MLP(3))), "default": lambda: None,
             "bnn": lambda: ScaleKernel(InfiniteWidthBNNKernel(depth=3))}[kind]()
    return SingleTaskGP(X, Y, covar_module=covar, input_transform=Normalize(X.shape[-1], bounds=bounds),
                        outcome_transform=Standardize(1))


def run(problem: Any, kind: str, seed: int, args: argparse.Namespace) -> tuple[float, float, str]:
    """One optimisation: the best value after args.evals evaluations, the seconds taken, the kernel's class."""
    from botorch.acquisition import LogExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.optim import optimize_acqf
    from gpytorch.mlls import ExactMarginalLogLikelihood

    bounds = problem.bounds.to(F64)
    generator = torch.Generator().manual_seed(seed)
    X = bounds[0] + (bounds[1] - bounds[0]) * torch.rand(args.init, problem.dim, dtype=F64, generator=generator)
    Y = problem(X).unsqueeze(-1)
    torch.manual_seed(seed)
    start = time.perf_counter()
    name = ""
    while X.shape[0] < args.evals:
        model = make_model(kind, X, Y, bounds)
        name = type(model.covar_module).__name__ + (
            f"({type(model.covar_module.base_kernel).__name__})" if hasattr(model.covar_module, "base_kernel") else "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
            candidate, _ = optimize_acqf(LogExpectedImprovement(model, best_f=Y.max()), bounds=bounds, q=1,
                                         num_restarts=args.restarts, raw_samples=args.raw_samples)
        X, Y = torch.cat([X, candidate]), torch.cat([Y, problem(candidate).unsqueeze(-1)])
    return float(Y.max()), time.perf_counter() - start, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--evals", type=int, default=30)
    parser.add_argument("--init", type=int, default=5)
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--raw-samples", type=int, default=64)
    parser.add_argument("--problems", default="branin,hartmann6")
    parser.add_argument("--kernels", default="ntk,default,bnn")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from botorch.test_functions import Branin, Hartmann

    import ntkit as nk

    nk.set_progress(False)
    problems = {"branin": Branin(negate=True), "hartmann6": Hartmann(dim=6, negate=True)}
    kinds = args.kernels.split(",")
    results: dict[str, Any] = {}
    for pname in args.problems.split(","):
        results[pname] = run_problem(pname, problems[pname], kinds, args)
        write(args, results)     # after each problem: a long run keeps what it has done


def run_problem(pname: str, problem: Any, kinds: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Every kernel on every seed of one problem; prints its table."""
    optimum = float(problem.optimal_value)    # of the problem as posed (negated: a maximum)
    rows = {}
    for kind in kinds:
        regrets, bests, seconds, name = [], [], [], ""
        for seed in range(args.seeds):
            best, took, name = run(problem, kind, seed, args)
            regrets.append(optimum - best)
            bests.append(best)
            seconds.append(took)
            print(f"{pname} {kind} seed {seed}: regret {optimum - best:.4g} ({took:.1f} s)", flush=True)
        mean = statistics.fmean(regrets)
        stderr = statistics.stdev(regrets) / len(regrets) ** 0.5 if len(regrets) > 1 else float("nan")
        rows[kind] = {"kernel": name, "best_values": bests, "regrets": regrets, "mean_regret": mean, "stderr": stderr,
                      "median_seconds": statistics.median(seconds)}
    print(f"\n{pname} (optimum {optimum:.4g}), simple regret after {args.evals} evaluations, {args.seeds} seeds")
    print(f"{'kernel':<10} {'covariance':<40} {'regret mean':>12} {'stderr':>9} {'/ default':>10} {'s/run':>7}")
    base = rows.get("default", {}).get("mean_regret")
    for kind, row in rows.items():
        ratio = f"{row['mean_regret'] / base:.2f}" if base else "-"
        print(f"{kind:<10} {row['kernel']:<40} {row['mean_regret']:>12.4g} {row['stderr']:>9.3g} {ratio:>10} "
              f"{row['median_seconds']:>7.1f}")
    return {"optimum": optimum, "kernels": rows}


def write(args: argparse.Namespace, results: dict[str, Any]) -> None:
    import botorch
    import gpytorch

    import ntkit as nk

    record = {"benchmark": "botorch_ntk", "settings": {k: str(v) if isinstance(v, Path) else v
                                                       for k, v in vars(args).items() if k != "out"},
              "versions": {"ntkit": nk.__version__, "torch": torch.__version__, "botorch": botorch.__version__,
                           "gpytorch": gpytorch.__version__},
              "machine": {"processor": platform.processor() or platform.machine(), "threads": args.threads},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
