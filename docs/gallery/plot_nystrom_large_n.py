"""
Nyström fit at large N
======================

The exact solver of :class:`ntkit.InfiniteWidthGP` holds the Gram :math:`\\Theta(X, X)` in memory:
:math:`8 N^2` bytes in float64, 33 GB at :math:`N = 64{,}000`. ``solver="nystrom"`` fits the trained
infinitely wide network (:math:`t = \\infty`, kernel ridge regression with :math:`\\Theta^{(L)}_\\infty`) the
way Falkon does: the predictor lives on ``n_centers`` centres, and conjugate gradients with Falkon's
preconditioner converge in a few tens of passes over :math:`K(X, \\text{centres})`, with memory
:math:`O(N M)`. Here: a noisy function of two variables, learnt from :math:`N = 1000` to
:math:`64{,}000` points with 1000 centres, against the exact solver where its Gram is small.
"""

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

import ntkit as nk


def target(X: np.ndarray) -> np.ndarray:
    return np.sin(2 * X[:, 0]) * np.cos(1.5 * X[:, 1])


rng = np.random.default_rng(0)
X = rng.uniform(-1.5, 1.5, size=(64_000, 2))
y = target(X) + 0.3 * rng.standard_normal(len(X))             # noise of standard deviation 0.3
X_test = rng.uniform(-1.5, 1.5, size=(2000, 2))

arch = nk.MLP(depth=3, activation="relu", beta=1.0)
ridge_per_point = 1e-4                                          # ridge = 1e-4 N: regularization fixed per point

rows = []
for n in (1000, 4000, 16_000, 64_000):
    for solver in ("cholesky", "nystrom") if n <= 4000 else ("nystrom",):
        start = time.perf_counter()
        gp = nk.InfiniteWidthGP(arch, X[:n], y[:n], ridge=ridge_per_point * n, solver=solver,
                                n_centers=1000 if solver == "nystrom" else None)
        error = np.sqrt(np.mean((gp.predict(X_test) - target(X_test)) ** 2))
        rows.append((n, solver, error, time.perf_counter() - start, gp.iterations))
        print(f"N = {n:6d} {solver:9s} test RMSE {error:.4f}  ({rows[-1][3]:.1f} s, "
              f"{gp.iterations} iterations; the exact Gram would take {8 * n * n / 1e9:.2f} GB)")

# %%
# With ``solver="auto"`` the choice follows the memory: exact while the Gram (and the working memory of its
# in-place factorization) fits ``memory_budget``, Nyström beyond it.
auto = nk.InfiniteWidthGP(arch, X, y, ridge=ridge_per_point * len(X), solver="auto", memory_budget=4e9)
print(f"N = {len(X)}, 4 GB budget: solver='auto' chose {auto.solver!r}")

# %%
# The error against the noise-free function falls as N grows, past the sizes where the exact Gram fits.
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for solver, style in (("cholesky", "s--"), ("nystrom", "o-")):
    points = [(n, e) for n, s, e, _, _ in rows if s == solver]
    axes[0].loglog(*zip(*points, strict=True), style, label=f"solver={solver!r}")
axes[0].set(xlabel="training points N", ylabel="test RMSE (against the noise-free function)")
axes[0].legend()
grid = np.linspace(-1.5, 1.5, 80)
G = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2)
image = axes[1].imshow(auto.predict(G).reshape(80, 80), origin="lower", extent=(-1.5, 1.5, -1.5, 1.5),
                       cmap="RdBu_r", vmin=-1, vmax=1)
axes[1].set(title="the fit at N = 64,000 (Nyström)", xlabel="$x_1$", ylabel="$x_2$")
fig.colorbar(image, ax=axes[1])
fig.tight_layout()
