"""A trained CNN's empirical NTK as a kernel machine on real MNIST digits, against the network itself.

A small CNN (conv 5x5 stride 2 -> ReLU -> conv 5x5 stride 2 -> ReLU -> Linear, 10 outputs, float32) is trained
with Adam on --n-train digits; its empirical NTK Gram (mode="trace", `ntkit.empirical_kernel_tiles`) over those
digits is written to a resumable zarr store (`ntkit.gram.evaluate`), then kernel regression of centred one-hot
labels (ridge relative to the mean diagonal, Cholesky in float64) predicts --n-test other digits. Reported: the
Gram's and the prediction's time, the peak resident memory, and the accuracy of the kernel machine against the
trained network's own accuracy on the same test digits. Where the folder holds both MNIST splits, the digits are
the first 10,000 of the training split and the 10,000 of the test split; where it holds only the test split
(t10k), its first 6,000 and the other 4,000. --n-test 0 times the Gram alone.

    python benchmarks/empirical_mnist.py --data-dir DIR_WITH_MNIST_IDX_FILES --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import ntkit as nk
from ntkit import gram
from ntkit.data import load_mnist
from ntkit.empirical import choose_method, empirical_kernel_tiles
from ntkit.solvers import cholesky

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "empirical_mnist.json"


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2, padding=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    """Adam on cross-entropy, batches of 128; returns the seconds it took."""
    start = time.perf_counter()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(X.shape[0], generator=generator).split(128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(X[batch]), y[batch]).backward()
            optimizer.step()
    return time.perf_counter() - start


def digits(data_dir: str, n_train: int | None, n_test: int | None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X_train (n, 1, 28, 28), y_train, X_test, y_test), standardized by the training digits' mean and std."""
    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, _ = load_mnist(split, data_dir, download=False)
        return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1), torch.from_numpy(labels)

    X_test, y_test = tensors("test")
    try:
        X_train, y_train = tensors("train")
        n, m = n_train or 10_000, 10_000 if n_test is None else n_test
        X_train, y_train, X_test, y_test = X_train[:n], y_train[:n], X_test[:m], y_test[:m]
    except FileNotFoundError:  # the test split only: two disjoint parts of it
        n, m = n_train or 6_000, 4_000 if n_test is None else n_test
        if n + m > X_test.shape[0]:
            raise SystemExit(f"--n-train {n} and --n-test {m} need {n + m} digits; the test split has "
                             f"{X_test.shape[0]}") from None
        X_train, y_train, X_test, y_test = X_test[:n], y_test[:n], X_test[n:n + m], y_test[n:n + m]
    mean, std = X_train.mean(), X_train.std()
    return (X_train - mean) / std, y_train, (X_test - mean) / std, y_test


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files (t10k split)")
    parser.add_argument("--n-train", type=int, default=None, help="10,000 with both splits, else 6,000")
    parser.add_argument("--n-test", type=int, default=None, help="10,000 with both splits, else 4,000")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--ridge", type=float, default=1e-4, help="relative to the mean diagonal of the Gram")
    parser.add_argument("--store", default=os.path.join(tempfile.gettempdir(), "ntkit-empirical-mnist-K.zarr"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tile", type=int, default=1000, help="Gram tile edge (the store's chunks)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    nk.set_progress(True)
    X_train, y_train, X_test, y_test = digits(args.data_dir, args.n_train, args.n_test)
    n, m = X_train.shape[0], X_test.shape[0]

    model = small_cnn()
    train_s = train(model, X_train, y_train, args.epochs)
    model.eval()
    with torch.no_grad():
        net_acc = float((model(X_test).argmax(1) == y_test).float().mean()) if m else float("nan")

    tiles = empirical_kernel_tiles(model, X_train, mode="trace", tile=args.tile)
    start = time.perf_counter()
    (K_store,) = gram.evaluate(tiles, args.store)
    gram_s = time.perf_counter() - start
    if not m:  # the Gram alone
        record = {"n_train": n, "n_test": 0, "gram_s": gram_s, "peak_rss_mb": peak_mb(),
                  "threads": torch.get_num_threads(), "load_average_at_end": os.getloadavg(),
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        print(f"Gram N = {n} into the store: {gram_s:.1f} s, peak resident memory {peak_mb():.0f} MB")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))
        return
    K = torch.from_numpy(np.asarray(K_store[:], dtype=np.float64))
    targets = torch.nn.functional.one_hot(y_train, 10).double() - 0.1
    start = time.perf_counter()
    ridge = args.ridge * float(K.diagonal().mean())
    if not cholesky.cholesky_in_place(K, ridge):
        raise SystemExit("the Gram plus ridge is not positive definite: raise --ridge")
    alpha = cholesky.solve(K, targets)
    (K_cross,) = gram.evaluate(empirical_kernel_tiles(model, X_test, X_train, mode="trace", tile=args.tile))
    kernel_acc = float(((K_cross.double() @ alpha).argmax(1) == y_test).float().mean())
    predict_s = time.perf_counter() - start

    record = {"n_train": n, "n_test": m, "epochs": args.epochs, "ridge": args.ridge,
              "n_params": sum(p.numel() for p in model.parameters()), "method": choose_method(model, X_train[:2]),
              "train_s": train_s, "gram_s": gram_s, "solve_and_predict_s": predict_s, "peak_rss_mb": peak_mb(),
              "network_accuracy": net_acc, "kernel_accuracy": kernel_acc, "threads": torch.get_num_threads(),
              "load_average_at_end": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"{'trained network accuracy':<36}{net_acc:10.4f}")
    print(f"{'empirical-NTK kernel machine accuracy':<36}{kernel_acc:10.4f}")
    print(f"{f'Gram N = {n} (store) seconds':<36}{gram_s:10.1f}")
    print(f"{'solve + cross Gram + predict seconds':<36}{predict_s:10.1f}")
    print(f"{'peak resident memory (MB)':<36}{peak_mb():10.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
