"""A trained CNN's empirical NTK as a kernel machine on real MNIST digits, against the network itself.

A small CNN (conv 5x5 stride 2 -> ReLU -> conv 5x5 stride 2 -> ReLU -> Linear, 10 outputs, float32) is trained
with Adam on the first --n-train digits; its empirical NTK Gram (mode="trace", `ntkit.empirical_kernel_tiles`)
over those digits is written to a resumable zarr store (`ntkit.gram.evaluate`), then kernel regression of
centred one-hot labels (ridge relative to the mean diagonal, Cholesky in float64) predicts the next --n-test
digits. Reported: the Gram's and the prediction's time, the peak resident memory, and the accuracy of the
kernel machine against the trained network's own accuracy on the same test digits.

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


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files (t10k split)")
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--n-test", type=int, default=4000)
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
    images, labels, _ = load_mnist("test", args.data_dir, download=False)
    X = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    X = (X - X.mean()) / X.std()
    y = torch.from_numpy(labels.astype(np.int64))
    n, m = args.n_train, args.n_test
    X_train, y_train, X_test, y_test = X[:n], y[:n], X[n:n + m], y[n:n + m]

    model = small_cnn()
    train_s = train(model, X_train, y_train, args.epochs)
    model.eval()
    with torch.no_grad():
        net_acc = float((model(X_test).argmax(1) == y_test).float().mean())

    tiles = empirical_kernel_tiles(model, X_train, mode="trace", tile=args.tile)
    start = time.perf_counter()
    (K_store,) = gram.evaluate(tiles, args.store)
    gram_s = time.perf_counter() - start
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
