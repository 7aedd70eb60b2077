"""NTK estimators against scikit-learn's RBF kernel machines on real MNIST digits.

Train on the first `--n-train` (5000) MNIST test digits, test on the next `--n-test` (5000), pixels
scaled to [0, 1]. In one run, side by side, accuracy and fit + predict time (median of `--repeats`) of:

- NTKClassifier and NTKRegressor (one-hot targets, argmax), ReLU, depth 2 and 4, beta 0.1, t = inf:
  the infinitely wide network trained to convergence (Section 5 of the paper);
- GaussianProcessRegressor with NTK(depth 2) as it is (alpha = 1e-10, no optimizer): the same t = inf
  predictor as NTKRegressor, by scikit-learn's Cholesky solve;
- GaussianProcessRegressor with the kernel ConstantKernel * NTK(depth 2) + WhiteKernel, its
  hyperparameters (bias scale b_std, amplitude, noise) fitted by scikit-learn's optimizer on the
  first `--gp-subset` training digits, then refitted with those on all of them;
- SVC(kernel="rbf") with scikit-learn's defaults (C = 1, gamma = "scale") and with C = 10;
- KernelRidge(kernel="rbf") on one-hot targets, gamma by the "scale" rule 1 / (n_features Var(X)),
  alpha = 0.01.

The digits are read with `ntkit.data.load_mnist` from --data-dir, else $NTKIT_DATA, else the cache;
nothing is downloaded. Prints a table and writes JSON (default benchmarks/results/sklearn_mnist.json).

    python benchmarks/sklearn_mnist.py --data-dir PATH/TO/MNIST
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel
from sklearn.kernel_ridge import KernelRidge
from sklearn.svm import SVC

import ntkit as nk
from ntkit.data import load_mnist
from ntkit.sklearn import NTK, NTKClassifier, NTKRegressor

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sklearn_mnist.json"


def load(data_dir: str | None, n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    images, labels, folder = load_mnist("test", data_dir=data_dir, download=False)
    if n_train + n_test > len(images):
        raise SystemExit(f"--n-train + --n-test must be at most {len(images)}, got {n_train + n_test}")
    X = images.reshape(len(images), -1).astype(np.float64) / 255.0
    print(f"MNIST test digits from {folder}: train on [0, {n_train}), "
          f"test on [{n_train}, {n_train + n_test})")
    return X[:n_train], labels[:n_train], X[n_train:n_train + n_test], labels[n_train:n_train + n_test]


class OneHotRegression:
    """A regressor used as a classifier: fit on one-hot targets, predict the argmax."""

    def __init__(self, regressor: Any):
        self.regressor = regressor

    def fit(self, X: np.ndarray, y: np.ndarray) -> OneHotRegression:
        self.regressor.fit(X, np.eye(10)[y])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.argmax(self.regressor.predict(X), axis=1)


def tuned_gp(X: np.ndarray, y: np.ndarray, subset: int) -> OneHotRegression:
    """GaussianProcessRegressor with NTK: hyperparameters by marginal likelihood on a subset."""
    kernel = ConstantKernel(1.0) * NTK(depth=2, b_std=0.1, W_std_bounds="fixed") + \
        WhiteKernel(1e-3, noise_level_bounds=(1e-8, 1.0))
    search = GaussianProcessRegressor(kernel, random_state=0).fit(X[:subset], np.eye(10)[y[:subset]])
    print(f"  GP hyperparameters from {subset} digits: {search.kernel_}")
    return OneHotRegression(GaussianProcessRegressor(search.kernel_, optimizer=None))


def measure(name: str, make: Callable[[], Any], data: tuple[np.ndarray, ...], repeats: int) -> dict[str, Any]:
    X_train, y_train, X_test, y_test = data
    fits, predicts = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        model = make().fit(X_train, y_train)
        fitted = time.perf_counter()
        predicted = model.predict(X_test)
        fits.append(fitted - start)
        predicts.append(time.perf_counter() - fitted)
    accuracy = float(np.mean(predicted == y_test))
    total = statistics.median(f + p for f, p in zip(fits, predicts, strict=True))
    row = {"model": name, "accuracy": accuracy, "fit_s": statistics.median(fits),
           "predict_s": statistics.median(predicts), "fit_predict_s": total, "repeats": repeats}
    print(f"  {name:<38} accuracy {accuracy:.4f}   fit+predict {total:7.2f} s")
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None,
                        help="folder of the MNIST IDX files (default: $NTKIT_DATA, then the cache)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median); the GP runs once")
    parser.add_argument("--gp-subset", type=int, default=500,
                        help="training digits the GP hyperparameters are fitted on")
    parser.add_argument("--skip-gp", action="store_true", help="leave out the GaussianProcessRegressor")
    args = parser.parse_args(argv)
    nk.set_progress(False)
    data = load(args.data_dir, args.n_train, args.n_test)
    X_train = data[0]
    gamma = 1.0 / (X_train.shape[1] * X_train.var())   # scikit-learn's gamma="scale"

    models: list[tuple[str, Callable[[], Any], int]] = []
    for depth in (2, 4):
        models.append((f"NTKClassifier(depth={depth})", lambda d=depth: NTKClassifier(depth=d, beta=0.1),
                       args.repeats))
    for depth in (2, 4):
        models.append((f"NTKRegressor(depth={depth}), one-hot",
                       lambda d=depth: OneHotRegression(NTKRegressor(depth=d, beta=0.1)), args.repeats))
    models += [
        ("SVC(rbf, C=1) [sklearn default]", lambda: SVC(kernel="rbf"), args.repeats),
        ("SVC(rbf, C=10)", lambda: SVC(kernel="rbf", C=10.0), args.repeats),
        ("KernelRidge(rbf, alpha=0.01), one-hot",
         lambda: OneHotRegression(KernelRidge(kernel="rbf", gamma=gamma, alpha=0.01)), args.repeats),
    ]
    if not args.skip_gp:
        models.append(("GPR(NTK(depth=2)), fixed, alpha=1e-10",    # t = inf NTK regression by Cholesky
                       lambda: OneHotRegression(GaussianProcessRegressor(NTK(depth=2, b_std=0.1), optimizer=None)),
                       args.repeats))
        models.append((f"GPR(C*NTK(depth=2)+White), tuned on {args.gp_subset}",
                       lambda: tuned_gp(data[0], data[1], args.gp_subset), 1))

    print(f"{len(models)} models, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
    for name, make, _ in models:   # warm-up (first calls, imports); the GP search is left out
        if name.startswith("GPR(C*"):
            continue
        make().fit(data[0][:100], data[1][:100]).predict(data[2][:10])
    rows = []
    for name, make, repeats in models:   # make() is timed too: the GP's hyperparameter search is in its fit
        rows.append(measure(name, make, data, repeats))

    svc = max((r for r in rows if r["model"].startswith("SVC")), key=lambda r: r["accuracy"])
    default_svc = rows[[r["model"] for r in rows].index("SVC(rbf, C=1) [sklearn default]")]
    for row in rows:
        row["time_vs_best_svc"] = row["fit_predict_s"] / svc["fit_predict_s"]
        row["time_vs_default_svc"] = row["fit_predict_s"] / default_svc["fit_predict_s"]
        row["accuracy_minus_best_svc"] = row["accuracy"] - svc["accuracy"]

    print(f"\n{'model':<40}{'accuracy':>9}{'fit s':>9}{'predict s':>11}{'total s':>9}{'x best SVC':>12}")
    for r in rows:
        print(f"{r['model']:<40}{r['accuracy']:>9.4f}{r['fit_s']:>9.2f}{r['predict_s']:>11.2f}"
              f"{r['fit_predict_s']:>9.2f}{r['time_vs_best_svc']:>12.2f}")
    best_ntk = max((r for r in rows if r["model"].startswith("NTKClassifier")), key=lambda r: r["accuracy"])
    goals = {"ntk_accuracy_at_least_svc": best_ntk["accuracy"] >= svc["accuracy"],
             "ntk_classifier_not_slower_than_svc": best_ntk["fit_predict_s"] <= svc["fit_predict_s"],
             "reference_svc": svc["model"]}
    print(f"\nbest NTKClassifier {best_ntk['model']}: accuracy {best_ntk['accuracy']:.4f} vs {svc['model']} "
          f"{svc['accuracy']:.4f}; time ratio {best_ntk['time_vs_best_svc']:.2f}")
    result = {
        "benchmark": "sklearn_mnist",
        "data": {"source": "MNIST test split (t10k)", "n_train": args.n_train, "n_test": args.n_test,
                 "pixels": "[0, 1]"},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__},
        "rows": rows,
        "goals": goals,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
